"""Detector batches of mixed input shapes: one preallocated tensor and one session call per input shape.

With the rect letterbox (:meth:`~frametok.models.detector.Detector.input_hw_for`) a frame's input shape
follows its aspect, and streams of different sizes share a batch. A batch is then run as one session call
per input shape present (:func:`infer_groups`); the encoder and every other step still see one batch, so
the batch stays as full as the streams make it. :class:`ShapeTensors` holds the ``(max_batch, 3, h, w)``
tensors frames are pre-processed into, one per shape, made when the shape first comes;
:class:`ShapeGroups` records which frame went in at which shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ShapeGroups", "ShapeTensors", "infer_groups"]


def _check_hw(shape_hw: tuple[int, int]) -> tuple[int, int]:
    if len(shape_hw) != 2 or min(shape_hw) <= 0:
        raise ValueError(f"input shape: expected a positive (height, width), got {shape_hw}")
    return int(shape_hw[0]), int(shape_hw[1])


class ShapeTensors:
    """Preallocated float32 model inputs, one ``(max_batch, 3, h, w)`` tensor per input (height, width).

    ``shapes``: made at once (a detector without rect has one input shape); any other is made when it is
    first asked for (rect: the shapes follow the streams' frame sizes, at most a few dozen of them).
    """

    def __init__(self, max_batch: int, shapes: Iterable[tuple[int, int]] = ()) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._tensors: dict[tuple[int, int], NDArray[np.float32]] = {}
        for shape in shapes:
            self._tensor(shape)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The input shapes a tensor was made for, in the order they came."""
        return list(self._tensors)

    def _tensor(self, shape_hw: tuple[int, int]) -> NDArray[np.float32]:
        tensor = self._tensors.get(shape_hw)
        if tensor is None:
            tensor = self._tensors[shape_hw] = np.empty((self.max_batch, 3, *_check_hw(shape_hw)), np.float32)
        return tensor

    def slot(self, shape_hw: tuple[int, int], row: int) -> NDArray[np.float32]:
        """Row ``row`` (``(3, h, w)``, to pre-process a frame into) of the tensor of ``shape_hw``."""
        if not 0 <= row < self.max_batch:
            raise IndexError(f"row: expected 0..{self.max_batch - 1} (max_batch {self.max_batch}), got {row}")
        out: NDArray[np.float32] = self._tensor(shape_hw)[row]
        return out

    def rows(self, shape_hw: tuple[int, int], n: int) -> NDArray[np.float32]:
        """The first ``n`` rows of the tensor of ``shape_hw``: ``(n, 3, h, w)``, a view for the session."""
        if not 0 < n <= self.max_batch:
            raise ValueError(f"n: expected 1..{self.max_batch} (max_batch), got {n}")
        return self._tensor(shape_hw)[:n]


@dataclass
class ShapeGroups:
    """Which frames of one batch went in at which input shape.

    ``rows``: per input (height, width), in the order the shapes came, the indices (among the batch's frames
    through the detector, 0.. in the order they were added) of its frames, row ``k`` of that shape's tensor
    holding the ``k``-th; ``count``: the frames added.
    """

    rows: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    count: int = 0

    def next_row(self, shape_hw: tuple[int, int]) -> int:
        """The row of the ``shape_hw`` tensor the next frame of that shape goes into."""
        return len(self.rows.get(shape_hw, ()))

    def add(self, shape_hw: tuple[int, int]) -> int:
        """A frame pre-processed into row :meth:`next_row` of ``shape_hw``: its index among the batch's frames."""
        index = self.count
        self.rows.setdefault(_check_hw(shape_hw), []).append(index)
        self.count += 1
        return index

    @property
    def mixed(self) -> bool:
        """Whether the batch holds frames of more than one input shape (more than one session call)."""
        return len(self.rows) > 1


def infer_groups(infer: Callable[[NDArray[np.float32]], Any], tensors: ShapeTensors,
                 groups: ShapeGroups) -> list[Any]:
    """Run ``infer`` once per input shape of ``groups`` on its rows of ``tensors``; each frame's output
    (``raw[k]``: an array's row, a segmentation head's or a neck pass's output are indexed by image too), listed
    by the frame's index (the order the frames were added)."""
    out: list[Any] = [None] * groups.count
    for shape, indices in groups.rows.items():
        raw = infer(tensors.rows(shape, len(indices)))
        for k, index in enumerate(indices):
            out[index] = raw[k]
    return out
