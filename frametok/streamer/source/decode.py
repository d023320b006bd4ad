"""Video sources: decode frames (RGB, with pts and capture time) from files, network streams, cameras
and image folders.

* files and network streams (rtsp/rtmp/http(s)/tcp/udp/srt): PyAV, with open and read timeouts
  (FFmpeg's interrupt callback) so that no read blocks for longer than the source's stall timeout;
* cameras (``0``, ``/dev/video0``): OpenCV ``VideoCapture``;
* image folders and globs (``frames/``, ``frames/*.jpg``): each image one frame, in natural sort order
  (``2.jpg`` before ``10.jpg``), with ``pts_s = index / fps`` when a frame rate is given.

``t_capture_ns`` is when the frame arrived for cameras and network streams (its packet was read from the
socket, or the camera handed it over), and when it was decoded for files and images.
"""

from __future__ import annotations

import dataclasses
import glob
import heapq
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ...config import source_kind
from ...errors import SourceError

__all__ = [
    "IMAGE_SUFFIXES",
    "DecodedFrame",
    "SourceProbe",
    "SourceStalled",
    "camera_device",
    "check_camera",
    "decode_frames",
    "image_cut_short",
    "image_files",
    "probe_source",
    "redact_uri",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})


def redact_uri(uri: str) -> str:
    """``uri`` without a password (``rtsp://user:secret@host`` -> ``rtsp://user:***@host``)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


class SourceStalled(SourceError):
    """A network stream delivered nothing for its read timeout (the connection may still be open)."""


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame: ``frame_rgb`` (H, W, 3) uint8, its index, pts and wall-clock times.

    ``damaged``: the decoder concealed errors in it (FFmpeg's error detection flagged it corrupt), or it is
    an image file that ends early: what it shows may be partly wrong."""

    index: int
    pts_s: float | None
    frame_rgb: NDArray[np.uint8]
    t_capture_ns: int
    t_decode_ns: int
    damaged: bool = False


@dataclass(frozen=True)
class SourceProbe:
    size_wh: tuple[int, int]
    fps: float | None
    frames: int | None


# --------------------------------------------------------------------------- PyAV: files and network streams


def _ffmpeg_options(uri: str, timeout_s: float, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Socket timeouts (microseconds) for a network URL, then the user's own options on top."""
    options: dict[str, str] = {}
    scheme = uri.split("://", 1)[0].lower()
    micros = str(int(timeout_s * 1e6))
    options["rw_timeout"] = micros
    if not scheme.startswith("rtmp"):  # rtmp's "timeout" is a listen timeout (and turns on listen mode)
        options["timeout"] = micros
    options.update(extra or {})
    return options


def _open_container(uri: str, timeout_s: float, read_timeout_s: float | None = None,
                    options: Mapping[str, str] | None = None) -> Any:
    import av

    kind = source_kind(uri)
    if kind == "file":
        path = Path(uri)
        if not path.exists():
            raise SourceError(f"video file not found: {uri}")
        if path.is_dir():
            raise SourceError(f"{uri} is a folder, not a video file")
    opts = _ffmpeg_options(uri, read_timeout_s or timeout_s, options) if kind == "network" else dict(options or {})
    try:
        container = av.open(uri, mode="r", options=opts, timeout=(timeout_s, read_timeout_s or timeout_s))
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


def _av_frames(uri: str, timeout_s: float, read_timeout_s: float | None,
               options: Mapping[str, str] | None,
               on_damage: Callable[[str], None] | None = None) -> Iterator[DecodedFrame]:
    import av

    network = source_kind(uri) == "network"
    container = _open_container(uri, timeout_s, read_timeout_s, options)
    try:
        stream = container.streams.video[0]
        # frame threading holds back a frame per thread: fine for files, latency for live streams
        stream.thread_type = "SLICE" if network else "AUTO"
        damage = None if network else _Damage(uri, stream, on_damage)
        if damage is not None:  # a damaged packet raises (and is skipped) instead of being concealed
            stream.codec_context.options = {"err_detect": "crccheck+bitstream+buffer+explode"}
        arrivals: dict[int, int] = {}  # packet pts -> when it was read (network: the frame's capture time)
        index = 0
        try:
            for packet in container.demux(stream):
                t_arrival = time.time_ns()
                if damage is not None:
                    damage.packet(packet)
                if network and packet.pts is not None:
                    arrivals[packet.pts] = t_arrival
                    while len(arrivals) > 64:
                        arrivals.pop(next(iter(arrivals)))
                try:
                    decoded = packet.decode()
                except av.FFmpegError as exc:
                    if damage is None:
                        raise
                    damage.bad(index, exc)
                    continue
                if damage is not None and decoded:
                    damage.good(index)
                for frame in decoded:
                    t_decoded = time.time_ns()
                    t_capture = arrivals.pop(frame.pts, t_arrival) if network else t_decoded
                    rgb = frame.to_ndarray(format="rgb24")
                    corrupt = damage is not None and damage.frame(index, frame)
                    yield DecodedFrame(index, _pts_seconds(frame, stream), rgb, min(t_capture, t_decoded),
                                       time.time_ns(), corrupt)
                    index += 1
            if damage is not None:
                damage.finish(index)
        except av.ExitError as exc:  # the read timeout (FFmpeg's interrupt callback)
            raise SourceStalled(f"no data from {redact_uri(uri)} for {read_timeout_s or timeout_s:g} s") from exc
        except av.FFmpegError as exc:
            raise SourceError(f"reading {redact_uri(uri)} failed after {index} frames: {exc}") from exc
    finally:
        container.close()


class _Damage:
    """Damaged parts of a file: packets the decoder rejects are skipped (the next decodable frame goes on),
    each damaged run is reported once to ``on_damage`` when decoding resumes, and a file that ends short
    of the frames its container announced, or in damage, ends with a :class:`SourceError`.

    A file whose last packet ends where the container says the stream ends (its duration) is complete,
    however many frames the header announced: a variable-frame-rate AVI announces one frame per tick of
    its time base (444 for 68 frames whose pts run from 0 to 443)."""

    def __init__(self, uri: str, stream: Any, on_damage: Callable[[str], None] | None) -> None:
        self.uri, self.on_damage = uri, on_damage
        self.announced = int(stream.frames or 0)
        self.duration = int(stream.duration or 0)  # the stream's end in its time base (0: unknown)
        self.start = int(stream.start_time or 0)
        self.last_end: int | None = None  # where the last packet read ends (pts + duration, time base)
        self.skipped = 0  # packets skipped in all
        self.run = 0  # packets skipped since the last good frame
        self.first = 0  # frame index where the current run started
        self.error = ""
        self.concealed: list[int] = []  # frames of the current run decoded with concealed errors
        self.concealed_total = 0
        self.needs_key = False  # packets were skipped: frames are damaged until the next keyframe

    def packet(self, packet: Any) -> None:
        at = packet.pts if packet.pts is not None else packet.dts
        if at is not None and packet.size:
            end = int(at) + int(packet.duration or 0)
            self.last_end = end if self.last_end is None else max(self.last_end, end)

    @property
    def complete(self) -> bool:
        """The last packet ends where the container says the stream ends (within 1%), and that end covers
        the frames the header announced (a variable-rate AVI announces one frame per tick of its time base:
        444 frames, duration 444 ticks). An AVI cut short has no index, and FFmpeg then estimates its duration
        from the packets that are there (vtest.avi cut in half: 795 frames announced, duration 398 ticks): that
        end is no evidence the file is whole."""
        if not self.duration or self.last_end is None:
            return False
        covers = self.duration >= self.announced - max(1, self.announced // 100)
        return covers and self.last_end - self.start >= self.duration - max(1, self.duration // 100)

    def bad(self, index: int, exc: Exception) -> None:
        if not self.run:
            self.first = index
        self.run += 1
        self.skipped += 1
        self.needs_key = True
        self.error = str(getattr(exc, "strerror", "") or exc)

    def _report(self, text: str) -> None:
        log.warning("%s", text)
        if self.on_damage is not None:
            self.on_damage(text)

    def frame(self, index: int, frame: Any) -> bool:
        """A frame came out of the decoder: is it damaged? It is when the decoder flagged errors it concealed
        (``err_detect``: the frame's corrupt flag or decode-error flags), or when packets were skipped since
        the last keyframe (it was predicted from a frame that never decoded). Damaged frames are published,
        marked; each run of them is reported once, at the next clean frame."""
        if frame.key_frame:
            self.needs_key = False
        if bool(frame.is_corrupt) or self.needs_key:
            self.concealed.append(index)
            self.concealed_total += 1
            return True
        if self.concealed:
            self._report_concealed()
        return False

    def _report_concealed(self) -> None:
        first, last, n = self.concealed[0], self.concealed[-1], len(self.concealed)
        where = f"frame {first}" if n == 1 else f"frames {first}-{last}"
        self._report(f"{redact_uri(self.uri)}: damaged data in {where}: {n} frame(s) decoded with concealed errors "
                     f"or from damaged references (published, marked damaged)")
        self.concealed = []

    def good(self, index: int) -> None:
        if self.run:
            self._report(f"{redact_uri(self.uri)}: damaged data after frame {self.first}: {self.run} "
                         f"undecodable packet(s) skipped ({self.error})")
        self.run = 0

    def finish(self, index: int) -> None:
        if self.concealed:
            self._report_concealed()
        missing = self.announced - index - self.skipped if self.announced and not self.complete else 0
        if missing > max(1, self.announced // 100):  # more than a lost packet or two: the file was cut short
            raise SourceError(f"{redact_uri(self.uri)} is truncated: it ends after {index} frames, its container "
                              f"announces {self.announced}")
        if missing > 0:
            self._report(f"{redact_uri(self.uri)}: {missing} frame(s) missing from the container")
        if self.run:
            raise SourceError(f"{redact_uri(self.uri)}: damaged data after frame {self.first} up to the end: "
                              f"{self.run} undecodable packet(s) ({self.error})")


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


# --------------------------------------------------------------------------- cameras (OpenCV)


def camera_device(uri: str) -> int | str:
    """What OpenCV opens for a camera URI: an index for ``0``, the device path for ``/dev/video0``."""
    return int(uri) if uri.isdigit() else uri


def check_camera(uri: str) -> None:
    """Fail fast when a camera cannot exist here (Linux: no such ``/dev/video*`` device)."""
    if not sys.platform.startswith("linux"):
        return  # opened (and retried) by the producer
    device = camera_device(uri)
    path = Path(f"/dev/video{device}" if isinstance(device, int) else device)
    if not path.exists():
        present = sorted(glob.glob("/dev/video*"))
        raise SourceError(f"camera {uri}: no device {path} (cameras here: {', '.join(present) or 'none'})")


def _camera_frames(uri: str, timeout_s: float, read_timeout_s: float | None,
                   fps: float | None) -> Iterator[DecodedFrame]:
    import cv2

    cap = cv2.VideoCapture(camera_device(uri))
    try:
        if not cap.isOpened():
            raise SourceError(f"cannot open camera {uri}")
        for prop, value in ((getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", None), timeout_s * 1000),
                            (getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None), (read_timeout_s or timeout_s) * 1000),
                            (cv2.CAP_PROP_FPS, fps)):
            if prop is not None and value:
                cap.set(prop, float(value))  # best effort: not every backend knows every property
        t_first: int | None = None
        index = 0
        while True:
            if not cap.grab():
                raise SourceError(f"camera {uri} stopped delivering frames after {index} frames")
            t_capture = time.time_ns()
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                raise SourceError(f"camera {uri}: cannot retrieve frame {index}")
            if bgr.ndim == 2:
                code = cv2.COLOR_GRAY2RGB
            else:
                code = cv2.COLOR_BGRA2RGB if bgr.shape[2] == 4 else cv2.COLOR_BGR2RGB
            rgb: NDArray[np.uint8] = np.ascontiguousarray(cv2.cvtColor(bgr, code), dtype=np.uint8)
            t_first = t_capture if t_first is None else t_first
            yield DecodedFrame(index, (t_capture - t_first) / 1e9, rgb, t_capture, time.time_ns())
            index += 1
    finally:
        cap.release()


# --------------------------------------------------------------------------- image folders and globs


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def image_files(uri: str) -> list[Path]:
    """The images of a folder (its image files, not recursive) or a glob (every file it matches), sorted
    naturally (``frame2`` before ``frame10``)."""
    folder = Path(uri)
    if folder.is_dir():
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [Path(p) for p in glob.glob(uri, recursive=True) if Path(p).is_file()]
    return sorted(files, key=_natural_key)


_TAIL = 64  # bytes at the end of an image file searched for its end marker


def image_cut_short(path: Path) -> str | None:
    """Why the image file at ``path`` ends early (a JPEG without its end-of-image marker, a PNG without its
    IEND chunk), or None. OpenCV decodes such a file with only libjpeg's "Premature end of JPEG file" on
    stderr, filling in what is missing."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            f.seek(max(0, path.stat().st_size - _TAIL))
            tail = f.read().rstrip(b"\x00\r\n\t ")
    except OSError:
        return None
    if head[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


def _image_frames(uri: str, fps: float | None,
                  on_damage: Callable[[str], None] | None = None) -> Iterator[DecodedFrame]:
    """The images of ``uri``; a file that is not a readable image is skipped, one that ends early is
    published marked damaged, and each is reported to ``on_damage`` by name (and logged)."""
    import cv2

    def report(text: str) -> None:
        log.warning("%s", text)
        if on_damage is not None:
            on_damage(text)

    files = image_files(uri)
    if not files:
        raise SourceError(f"no images in {uri}")
    index = 0
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            report(f"{path}: not a readable image (skipped)")
            continue
        t_decoded = time.time_ns()
        short = image_cut_short(path)
        if short is not None:
            report(f"{path}: damaged image: {short} (published as frame {index}, marked damaged)")
        rgb: NDArray[np.uint8] = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
        yield DecodedFrame(index, index / fps if fps else None, rgb, t_decoded, time.time_ns(), short is not None)
        index += 1
    if index == 0:
        raise SourceError(f"none of the {len(files)} files of {uri} is a readable image")


# --------------------------------------------------------------------------- all kinds


def decode_frames(uri: str, timeout_s: float = 10.0, *, read_timeout_s: float | None = None,
                  fps: float | None = None, options: Mapping[str, str] | None = None,
                  on_damage: Callable[[str], None] | None = None, start_frame: int = 0,
                  every: int = 1) -> Iterator[DecodedFrame]:
    """Decode every frame of ``uri`` in order; the source is closed when the generator is.

    ``timeout_s`` bounds opening, ``read_timeout_s`` (default: ``timeout_s``) each read of a network
    stream or camera; ``fps`` gives images their pts (cameras: the frame rate asked for); ``options``
    are FFmpeg options for network streams. Raises :class:`SourceError` when the source fails.
    ``on_damage`` (files, image folders): told of each damaged part, skipped or published marked damaged
    (the reader thread calls it).
    ``start_frame``/``every`` (files): only frames ``start_frame + k * every``, keeping absolute indices.
    """
    kind = source_kind(uri)
    if kind == "camera":
        return _camera_frames(uri, timeout_s, read_timeout_s, fps)
    if kind == "images":
        return _image_frames(uri, fps, on_damage)
    frames = _av_frames(uri, timeout_s, read_timeout_s, options, on_damage)
    if kind == "file":
        frames = _presentation_pts(frames)
    return _sampled(frames, start_frame, every) if start_frame or every > 1 else frames


_PTS_WINDOW = 4  # frames held back to put the pts of a file's frames in presentation order


def _presentation_pts(frames: Iterator[DecodedFrame], window: int = _PTS_WINDOW) -> Iterator[DecodedFrame]:
    """Files: the decoder hands frames over in presentation order, but their pts can be out of order: an
    AVI stores no presentation times, and with packed B-frames (DivX/Xvid "packed bitstream": a P and a B
    frame in one chunk) FFmpeg's guess for them is a local permutation (``1, 2, 4, 3, 5, 7, 6, ...``). The pts
    of the last ``window`` frames are sorted and handed out in order, so a file's ``pts_s`` never goes
    backwards (a displacement of up to ``window`` frames; pts the source lacks stay None)."""
    held: deque[DecodedFrame] = deque()
    times: list[float] = []  # a heap of the pts of the held frames

    def release() -> DecodedFrame:
        frame = held.popleft()
        if frame.pts_s is None or not times:
            return frame
        return dataclasses.replace(frame, pts_s=heapq.heappop(times))

    try:
        for frame in frames:
            held.append(frame)
            if frame.pts_s is not None:
                heapq.heappush(times, frame.pts_s)
            if len(held) > window:
                yield release()
        while held:
            yield release()
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _sampled(frames: Iterator[DecodedFrame], start_frame: int, every: int) -> Iterator[DecodedFrame]:
    """Files: the frames from ``start_frame`` on, every ``every``-th, with their absolute indices."""
    try:
        for frame in frames:
            if frame.index >= start_frame and (frame.index - start_frame) % every == 0:
                yield frame
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
