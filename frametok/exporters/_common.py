"""What the exporters share: box IoU, reading sample images, a CPU session for parity checks, and tidying up.

The exporters import this module and never each other's checks (``yolo`` and ``encoder`` call the
fp16 and int8 exporters; those import only this), so there is no import circle among them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import ExportError

__all__ = ["PARITY_THREADS", "box_iou", "cpu_session", "read_rgb", "remove_quietly"]

PARITY_THREADS = 2


def box_iou(a: NDArray[np.floating[Any]], b: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Pairwise IoU of ``xyxy`` boxes: ``(len(a), len(b))``."""
    a64, b64 = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a64[:, None, :2], b64[None, :, :2])
    rb = np.minimum(a64[:, None, 2:], b64[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a64[:, 2:] - a64[:, :2]).clip(0).prod(axis=1)
    area_b = (b64[:, 2:] - b64[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def read_rgb(path: Path) -> NDArray[np.uint8]:
    """An image file as an RGB ``(H, W, 3)`` array; an ExportError naming it when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"sample image {path} is missing or not a readable image")
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), np.uint8)


def cpu_session(path: Path, what: str = "graph") -> Any:
    """An onnxruntime CPU session of ``path`` with :data:`PARITY_THREADS` threads (for parity checks)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = PARITY_THREADS
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own untyped errors
        raise ExportError(f"onnxruntime (CPU) cannot load the {what} {path}: {exc}") from exc


def remove_quietly(*paths: Path) -> None:
    """Delete ``paths`` that exist; a file that cannot be removed is left (the caller is already failing)."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
