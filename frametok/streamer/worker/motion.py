"""Motion gating: per stream, whether a frame moved enough since the last one the models ran on."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ...models.soft_tokens import MOTION_CELL, MOTION_THUMB_WH, pixel_change, thumbnail

__all__ = ["MotionGate"]


class MotionGate:
    """A frame is *still* when no region of its grey thumbnail (``MOTION_THUMB_WH``, regions of
    ``MOTION_CELL`` x ``MOTION_CELL`` thumbnail pixels) changed by ``threshold`` or more (mean absolute
    change, 0..1) since the last frame the models ran on (the reference): the worker then runs neither
    model on it and re-sends the reference's tokens, marked reused. Comparing with the reference, not
    with the previous frame, keeps slow changes from creeping past the test: the reused tokens are always
    those of a frame within the threshold of this one. The bound this gives on the tokens is measured
    (bench/motion.py), not constructed: a pixel test is only a proxy for the encoder.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._reference: NDArray[np.float32] | None = None
        self._undo: NDArray[np.float32] | None = None
        self.reused = 0

    def still(self, frame_rgb: NDArray[np.uint8]) -> bool:
        """True: re-send the reference's tokens; False: run the models (the frame becomes the reference)."""
        thumb = thumbnail(frame_rgb, MOTION_THUMB_WH)
        if self._reference is not None and pixel_change(thumb, self._reference, MOTION_CELL) < self.threshold:
            self.reused += 1
            return True
        self._undo, self._reference = self._reference, thumb
        return False

    def discard(self, still: bool) -> None:
        """The frame just tested was overwritten before it was read (live): forget it."""
        if still:
            self.reused -= 1
        else:
            self._reference = self._undo

    def reset(self) -> None:
        """A new scene (the stream reconnected): the next frame runs the models."""
        self._reference = self._undo = None
