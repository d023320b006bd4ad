"""The detector's neck as the soft-token grid: hard and soft tokens from one model pass.

A detector exported with its neck (manifest ``neck``, ``frametok export yolo ... --neck P5``) has one more
output, the feature map ``(N, C, H / stride, W / stride)`` that feeds its head. :class:`NeckReader` runs the
detector's session once for both (its detection output, and a segmentation head's prototypes, as
:meth:`~frametok.models.detector.Detector.infer` gives them, and the map); :func:`neck_grid` turns one image's
map into a context token and a ``(gh, gw, C)`` patch grid, cropped to the cells over the image (a letterbox's
padding cells hold no image and would only change with the padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelError
from .detector import Detector, DetectorOutput, LetterboxInfo
from .masks import SegmentOutput
from .session import SessionRunner
from .shape_groups import ShapeGroups, ShapeTensors, infer_groups

__all__ = ["NeckBatch", "NeckReader", "detect_groups", "image_cells", "neck_grid"]


@dataclass(frozen=True)
class NeckBatch:
    """A batch's detector output (as ``Detector.infer`` gives it) and its neck maps ``(B, C, h, w)``;
    ``out[i]`` is image ``i``'s ``(detector output, map)``."""

    raw: DetectorOutput
    maps: NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.maps.ndim != 4 or len(self.maps) != len(self.raw):
            raise ValueError(f"maps: expected (B, C, h, w) with B = {len(self.raw)}, got {tuple(self.maps.shape)}")

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, i: int) -> tuple[Any, NDArray[np.float32]]:
        return self.raw[i], self.maps[i]


def _cells(lo_px: float, hi_px: float, stride: int, cells: int) -> tuple[int, int]:
    """The cells ``[a, b)`` of ``stride`` pixels whose centre lies in ``[lo_px, hi_px)`` (at least one)."""
    a = min(max(math.floor(lo_px / stride + 0.5), 0), cells - 1)
    b = min(max(math.floor(hi_px / stride + 0.5), a + 1), cells)
    return a, b


def image_cells(info: LetterboxInfo | None, map_hw: tuple[int, int], stride: int) -> tuple[slice, slice]:
    """The rows and columns of a ``map_hw`` feature map (``stride`` input pixels a cell) over the image that
    ``info`` placed into the input (its padding left out); the whole map without ``info``."""
    gh, gw = map_hw
    if info is None:
        return slice(0, gh), slice(0, gw)
    w, h = info.size_wh
    gain_y = info.gain if info.gain_y is None else info.gain_y
    left, top = info.pad_xy
    y0, y1 = _cells(top, top + h * gain_y, stride, gh)
    x0, x1 = _cells(left, left + w * info.gain, stride, gw)
    return slice(y0, y1), slice(x0, x1)


def neck_grid(feature_chw: NDArray[np.floating], info: LetterboxInfo | None, stride: int,
              crop: bool = True) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """One image's neck map ``(C, h, w)`` as soft tokens: the context token ``(C,)`` (the mean of the grid, as
    an encoder's ``nchw`` feature map gives it) and the patch grid ``(gh, gw, C)``, each cell a token of its
    channels; ``crop``: only the cells over the image (:func:`image_cells`)."""
    if feature_chw.ndim != 3:
        raise ValueError(f"feature map: expected (C, h, w), got {tuple(feature_chw.shape)}")
    grid = np.asarray(feature_chw, np.float32).transpose(1, 2, 0)
    if crop:
        rows, cols = image_cells(info, (grid.shape[0], grid.shape[1]), stride)
        grid = grid[rows, cols]
    patches = np.ascontiguousarray(grid)
    return patches.mean(axis=(0, 1)), patches


class NeckReader:
    """Runs a detector whose manifest has a ``neck`` output: detections and the neck map in one session run."""

    def __init__(self, detector: Detector, crop: bool = True) -> None:
        man = detector.manifest
        if man.neck is None:
            raise ModelError(f"detector {man.name}: its manifest has no neck output (export it with "
                             "`frametok export yolo WEIGHTS.pt --neck P5 --out DIR`)")
        outputs = [o.name for o in detector.session.get_outputs()]
        if man.neck.output_name not in outputs:
            raise ModelError(f"detector {man.name}: manifest neck.output_name {man.neck.output_name!r} is not a "
                             f"graph output {outputs}")
        self.detector, self.neck, self.crop = detector, man.neck, crop
        extra = (() if man.masks is None else (man.masks.output_name,)) + (man.neck.output_name,)
        self.runner = SessionRunner(detector.session, man.input_name, man.output_name, extra_outputs=extra)

    @property
    def embed_dim(self) -> int:
        return self.neck.channels

    @property
    def stride(self) -> int:
        return self.neck.stride

    def grid_hw_for(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The whole map's (rows, columns) for a detector input of ``input_hw``."""
        return math.ceil(input_hw[0] / self.stride), math.ceil(input_hw[1] / self.stride)

    def infer(self, batch: NDArray[np.float32]) -> NeckBatch:
        """Detector output and neck maps for a preprocessed ``(B, 3, H, W)`` batch, in one run per graph batch."""
        man = self.detector.manifest
        outs = self.detector.run_outputs(batch, self.runner)
        maps = outs[-1]
        if maps.ndim != 4 or maps.shape[1] != self.neck.channels:
            raise ModelError(f"detector {man.name}: neck output {self.neck.output_name!r} has shape "
                             f"{tuple(maps.shape)}, manifest says (N, {self.neck.channels}, h, w)")
        return NeckBatch(outs[0] if man.masks is None else SegmentOutput(outs[0], outs[1]), maps)

    def grid(self, feature_chw: NDArray[np.floating],
             info: LetterboxInfo | None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """One image's context token and patch grid (:func:`neck_grid`)."""
        return neck_grid(feature_chw, info, self.stride, self.crop)

    def info(self) -> dict[str, Any]:
        """What stream info says of the soft tokens' model (as an encoder's ``info``); ``grid_hw`` is the
        whole map at the manifest's input size (a frame's grid is the part over its image); ``neck.rect``: the
        detector letterboxes each frame into its rect input (what an image must go through to be embedded alike)."""
        man = self.detector.manifest
        return {"id": f"{man.model_id}#{self.neck.level}", "name": f"{man.name}#{self.neck.level}",
                "grid_hw": list(self.grid_hw_for(man.input_size_hw)), "embed_dim": self.neck.channels,
                "context": "mean", "output_layout": "neck",
                "neck": {"level": self.neck.level, "stride": self.neck.stride, "crop": self.crop,
                         "rect": self.detector.rect}}


def detect_groups(detector: Detector, neck: NeckReader | None, tensors: ShapeTensors,
                  groups: ShapeGroups) -> tuple[list[Any], list[Any] | None]:
    """A batch through the detector, one session run per input shape: each frame's raw output and, with a
    ``neck`` (``encoder.model: detector``), its neck map from the same pass; both by the frame's detector row."""
    if neck is None:
        return infer_groups(detector.infer, tensors, groups), None
    both = infer_groups(neck.infer, tensors, groups)
    return [b[0] for b in both], [b[1] for b in both]
