"""Decode chosen frames of a source video again (track crops, re-ranking, thumbnails)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import SourceError
from ..streamer.source.decode import decode_frames

__all__ = ["crop", "read_frames"]


def read_frames(path: str | Path, indices: Iterable[int]) -> dict[int, NDArray[np.uint8]]:
    """RGB frames of ``path`` at the given (absolute) frame indices; missing ones are left out."""
    wanted = set(int(i) for i in indices)
    out: dict[int, NDArray[np.uint8]] = {}
    if not wanted:
        return out
    last = max(wanted)
    try:
        for frame in decode_frames(str(path), start_frame=min(wanted)):
            if frame.index in wanted:
                out[frame.index] = frame.frame_rgb
            if frame.index >= last:
                break
    except SourceError:
        if not out:
            raise
    return out


def crop(frame_rgb: NDArray[np.uint8], xyxy: Iterable[float], margin: float = 0.0) -> NDArray[np.uint8]:
    """The box ``xyxy`` (grown by ``margin`` of its size on each side) cut from a frame, clipped to it."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    h, w = frame_rgb.shape[:2]
    c0, r0 = int(max(0, np.floor(x1 - mx))), int(max(0, np.floor(y1 - my)))
    c1, r1 = int(min(w, np.ceil(x2 + mx))), int(min(h, np.ceil(y2 + my)))
    c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
    return np.ascontiguousarray(frame_rgb[r0:r1, c0:c1])
