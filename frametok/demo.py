"""The demo clip: a short video frametok makes from sample photos shipped inside installed packages."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from .errors import SourceError
from .registry import cache_dir

__all__ = ["demo_photos", "ensure_demo_clip", "write_pan_zoom_clip"]

DEMO_PHOTOS = ("bus.jpg", "zidane.jpg")


def demo_photos() -> list[Path]:
    """The sample photos of the demo (from ultralytics' package assets, found without importing it)."""
    spec = importlib.util.find_spec("ultralytics")
    folders = [Path(p) / "assets" for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        photos = [folder / name for name in DEMO_PHOTOS]
        if all(p.exists() for p in photos):
            return photos
    raise SourceError(
        "the demo clip is made from the sample photos bus.jpg and zidane.jpg that the ultralytics package "
        "ships; install it (`pip install -e \".[export]\"`) or run on a video of your own: "
        "`frametok run --source VIDEO ...`"
    )


def _pan_zoom(photo: NDArray[np.uint8], frames: int, size_wh: tuple[int, int]) -> Iterator[NDArray[np.uint8]]:
    """Frames that slowly zoom into ``photo`` while panning across it."""
    h, w = photo.shape[:2]
    out_w, out_h = size_wh
    aspect = out_w / out_h
    for i in range(frames):
        t = i / max(1, frames - 1)
        crop_w = min(w, h * aspect) * (1.0 - 0.3 * t)
        crop_h = crop_w / aspect
        x0 = (w - crop_w) * t
        y0 = (h - crop_h) * 0.5
        M = np.array([[out_w / crop_w, 0, -x0 * out_w / crop_w], [0, out_h / crop_h, -y0 * out_h / crop_h]])
        warped = cv2.warpAffine(photo, M, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        yield np.asarray(warped, np.uint8)


def write_pan_zoom_clip(photos: list[Path], out: Path, *, frames_per_photo: int = 24, fps: int = 12,
                        size_wh: tuple[int, int] = (640, 480)) -> Path:
    """Encode a pan/zoom clip over ``photos`` (RGB) to ``out`` (MPEG-4 in .mp4), atomically."""
    import av

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.mp4")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = size_wh
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = 3_000_000
            for path in photos:
                bgr = cv2.imread(str(path))
                if bgr is None:
                    raise SourceError(f"cannot read photo {path}")
                rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
                for frame_rgb in _pan_zoom(rgb, frames_per_photo, size_wh):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")))
            container.mux(stream.encode(None))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def ensure_demo_clip() -> Path:
    """The demo clip in the cache, made on first use."""
    out = cache_dir() / "demo" / "demo_pan_zoom.mp4"
    if not out.exists():
        write_pan_zoom_clip(demo_photos(), out)
    return out
