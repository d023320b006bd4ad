"""A live network camera on loopback, for tests: MPEG-TS over TCP, served by PyAV, paced in real time.

    python -m tests.streamer.netserve --port 5600 [--clip video.mp4] [--fps 30] [--size 320x240]

It listens on ``tcp://127.0.0.1:PORT`` (FFmpeg's ``listen=1``), serves one client at a time with a fresh
encoder (so a client that connects later starts on a keyframe), loops the clip (or a synthetic moving
square) at ``--fps`` and, when the client goes away, listens again. It prints ``listening PORT`` before
each wait for a client and ``client N`` when one connected (stdout, flushed); ``--per-client N`` closes
each connection cleanly after N frames (a stream that ends). Kill it to simulate a
camera that went away; SIGSTOP it to simulate one that stalls with the connection still open.

``NetServer`` runs it in a subprocess from a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def synthetic_frames(size_wh: tuple[int, int]) -> Iterator[np.ndarray]:
    """A bright square moving over a gradient, forever."""
    w, h = size_wh
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    base[..., 2] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    side = max(8, min(w, h) // 4)
    i = 0
    while True:
        img = base.copy()
        x = (i * 4) % (w - side)
        img[h // 3 : h // 3 + side, x : x + side] = 255
        yield img
        i += 1


def clip_frames(path: str) -> Iterator[np.ndarray]:
    """The frames of ``path`` (decoded once, kept in memory), looped forever."""
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise SystemExit(f"{path}: no frames")
    while True:
        yield from frames


def serve(port: int, fps: float, frames: Iterator[np.ndarray], codec: str = "mpeg4", per_client: int = 0) -> None:
    import av

    clients = 0
    first = next(frames)
    h, w = first.shape[:2]
    period = 1.0 / fps
    while True:
        print(f"listening {port}", flush=True)
        try:
            out = av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format="mpegts")
        except (av.FFmpegError, OSError) as exc:
            print(f"listen failed: {exc}", flush=True)
            time.sleep(0.2)
            continue
        clients += 1
        print(f"client {clients}", flush=True)
        try:
            stream = out.add_stream(codec, rate=round(fps))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.bit_rate = 2_000_000
            stream.codec_context.gop_size = round(fps)
            t0 = time.monotonic()
            i = 0
            while not per_client or i < per_client:
                img = next(frames)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                for packet in stream.encode(frame):
                    out.mux(packet)
                i += 1
                delay = t0 + i * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            for packet in stream.encode(None):
                out.mux(packet)
            print(f"client {clients} served {i} frames", flush=True)
        except (av.FFmpegError, OSError) as exc:  # the client went away
            print(f"client {clients} gone: {type(exc).__name__}", flush=True)
        finally:
            with contextlib.suppress(Exception):
                out.close()


class NetServer:
    """The server above in a subprocess on a free loopback port: ``start()``, ``kill()``, ``pause()``..."""

    def __init__(self, fps: float = 30.0, clip: str | None = None, size_wh: tuple[int, int] = (320, 240),
                 port: int | None = None, per_client: int = 0) -> None:
        self.fps, self.clip, self.size_wh, self.per_client = fps, clip, size_wh, per_client
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []  # what the server printed

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> NetServer:
        args = [sys.executable, "-m", "tests.streamer.netserve", "--port", str(self.port), "--fps", str(self.fps),
                "--size", f"{self.size_wh[0]}x{self.size_wh[1]}"]
        if self.clip:
            args += ["--clip", self.clip]
        if self.per_client:
            args += ["--per-client", str(self.per_client)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "listening PORT": bound (or about to be)
        if not line.startswith("listening"):
            raise RuntimeError(f"netserve did not start: {line!r}")
        self.lines.append(line.strip())
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _drain(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.append(line.strip())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> NetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--clip", help="video to loop (default: a synthetic moving square)")
    parser.add_argument("--size", default="320x240", help="WxH of the synthetic frames")
    parser.add_argument("--codec", default="mpeg4")
    parser.add_argument("--per-client", type=int, default=0, help="close each connection after N frames (0: never)")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    frames = clip_frames(args.clip) if args.clip else synthetic_frames((w, h))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.port, args.fps, frames, args.codec, args.per_client)


if __name__ == "__main__":
    main()
