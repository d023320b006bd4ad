"""Preview images for packets: the frame downscaled and JPEG-encoded (OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from ...config import PreviewConfig

__all__ = ["make_preview"]


def make_preview(frame_rgb: NDArray[np.uint8], config: PreviewConfig) -> bytes:
    """JPEG bytes of ``frame_rgb`` scaled so its longest side is at most ``config.max_side``."""
    h, w = frame_rgb.shape[:2]
    scale = min(1.0, config.max_side / max(h, w))
    small: NDArray[np.uint8] = frame_rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(cv2.resize(frame_rgb, size, interpolation=cv2.INTER_AREA), np.uint8)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return bytes(jpeg)
