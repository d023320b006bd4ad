"""Video sources: decode frames (RGB, with pts and capture time) from files and streams with PyAV."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..config import source_kind
from ..errors import SourceError

__all__ = ["DecodedFrame", "SourceProbe", "decode_frames", "probe_source", "redact_uri"]


def redact_uri(uri: str) -> str:
    """``uri`` without a password (``rtsp://user:secret@host`` -> ``rtsp://user:***@host``)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame: ``frame_rgb`` (H, W, 3) uint8, its index, pts and wall-clock times."""

    index: int
    pts_s: float | None
    frame_rgb: NDArray[np.uint8]
    t_capture_ns: int
    t_decode_ns: int


@dataclass(frozen=True)
class SourceProbe:
    size_wh: tuple[int, int]
    fps: float | None
    frames: int | None


def _open_container(uri: str, timeout_s: float) -> Any:
    import av

    kind = source_kind(uri)
    if kind == "file":
        path = Path(uri)
        if not path.exists():
            raise SourceError(f"video file not found: {uri}")
        if path.is_dir():
            raise SourceError(f"{uri} is a folder, not a video file")
    options = {}
    if kind == "network":
        options = {"rw_timeout": str(int(timeout_s * 1e6)), "timeout": str(int(timeout_s * 1e6))}
    try:
        container = av.open(uri, mode="r", options=options, timeout=timeout_s)
    except av.FFmpegError as exc:
        raise SourceError(f"cannot open {redact_uri(uri)} as a video: {exc}") from exc
    except OSError as exc:
        raise SourceError(f"cannot open {redact_uri(uri)}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise SourceError(f"{redact_uri(uri)} has no video stream (not a video?)")
    return container


def _pts_seconds(frame: Any, stream: Any) -> float | None:
    if frame.pts is None:
        return None
    base = frame.time_base or stream.time_base
    return float(frame.pts * base) if base is not None else None


def decode_frames(uri: str, timeout_s: float = 10.0) -> Iterator[DecodedFrame]:
    """Decode every frame of ``uri`` in order; the container is closed when the generator is."""
    import av

    container = _open_container(uri, timeout_s)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                t_capture = time.time_ns()
                rgb = frame.to_ndarray(format="rgb24")
                yield DecodedFrame(index, _pts_seconds(frame, stream), rgb, t_capture, time.time_ns())
                index += 1
        except av.FFmpegError as exc:
            raise SourceError(f"decoding {uri} failed after {index} frames: {exc}") from exc
    finally:
        container.close()


def probe_source(uri: str, timeout_s: float = 10.0) -> SourceProbe:
    """Open ``uri`` and decode its first frame: its size, frame rate and frame count (when known)."""
    container = _open_container(uri, timeout_s)
    try:
        stream = container.streams.video[0]
        try:
            first = next(iter(container.decode(stream)), None)
        except Exception as exc:  # PyAV raises several error types while decoding garbage
            raise SourceError(f"cannot decode {uri}: {exc}") from exc
        if first is None:
            raise SourceError(f"{uri} has no decodable video frame")
        fps = float(stream.average_rate) if stream.average_rate else None
        frames = int(stream.frames) if stream.frames else None
        return SourceProbe((first.width, first.height), fps, frames)
    finally:
        container.close()
