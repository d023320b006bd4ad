"""Several workers in one run, read through one lossless endpoint by a subscriber written from the spec
(credit granted in batches, as docs/protocol.md §8 allows; not the SDK, which hides duplicates): every
frame of every stream exactly once with seq strictly increasing by one, each stream served by one worker,
and a worker killed mid-run restarted alone."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from frametok.packet import CREDIT, HELLO, EndOfStream, StatusMessage, StreamInfo, TokenPacket, decode

from ..conftest import free_endpoint, start_cli, write_video
from .test_live_sources import tiny_encoder, tiny_models

__all__ = ["tiny_encoder"]

psutil = pytest.importorskip("psutil", reason="finding the processes to kill needs psutil (the dev extra)")

FRAMES = 240


class SpecReader:
    """A lossless subscriber as docs/protocol.md describes one: HELLO with a window, CREDIT at half of it,
    HELLO again about once a second while idle. It keeps everything it receives, as received."""

    def __init__(self, endpoint: str, window: int = 64) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.window, self.consumed = window, 0
        self.messages: list[Any] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _hello(self) -> None:
        self.sock.send_multipart([HELLO, json.dumps({"v": [1, 2], "streams": None, "credit": self.window}).encode()])

    def _read(self) -> None:
        self._hello()
        last_hello = time.monotonic()
        while not self.closing.is_set():
            if not self.sock.poll(200):
                if self.consumed:
                    self.sock.send_multipart([CREDIT, str(self.consumed).encode()])
                    self.consumed = 0
                if time.monotonic() - last_hello > 1.0:
                    self._hello()
                    last_hello = time.monotonic()
                continue
            self.messages.append(decode(self.sock.recv_multipart()))
            self.consumed += 1
            if self.consumed >= self.window // 2:
                self.sock.send_multipart([CREDIT, str(self.consumed).encode()])
                self.consumed = 0

    def of(self, sid: str, kind: type) -> list[Any]:
        return [m for m in list(self.messages) if isinstance(m, kind) and m.stream_id == sid]

    def close(self) -> None:
        self.closing.set()
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()


def _run(tmp_path: Path, tiny: Path, ids: list[str], workers: int) -> tuple[Any, SpecReader, str]:
    clip = write_video(tmp_path / "clip.mp4", frames=FRAMES, size_wh=(96, 64), fps=30)
    lossless = free_endpoint()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"id": sid, "uri": str(clip), "slots": 4} for sid in ids],
        "supervisor": {"backoff_initial_s": 0.2},
        "publisher": {"lossless_endpoint": lossless, "lossless_timeout_s": 20},
    }))
    reader = SpecReader(lossless)
    proc = start_cli("run", str(config), *tiny_models(tiny), "--publish", free_endpoint(), "--wait-subscribers", "1",
                     "--no-progress", "--workers", str(workers))
    return proc, reader, lossless


def _until(proc: Any, done: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"no {what} within {timeout_s} s (exit {proc.returncode}): {out}{err}")
        time.sleep(0.05)


def _exactly_once(reader: SpecReader, sid: str) -> None:
    frames = [m.frame_index for m in reader.of(sid, TokenPacket)]
    assert frames == list(range(FRAMES)), f"{sid}: every frame exactly once, in order"
    seqs = [m.seq for m in reader.messages if m.stream_id == sid]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{sid}: seq strictly increasing by one"
    eos = reader.of(sid, EndOfStream)
    assert len(eos) == 1 and eos[0].frames == FRAMES and eos[0].reason == "end", eos


def test_four_streams_over_two_workers_every_frame_exactly_once(tiny_encoder: Path, tmp_path: Path) -> None:
    ids = ["a", "b", "c", "d"]
    proc, reader, _ = _run(tmp_path, tiny_encoder, ids, workers=2)
    try:
        out, err = proc.communicate(timeout=240)
        _until(proc, lambda: all(reader.of(s, EndOfStream) for s in ids), 30, "end of every stream")
    finally:
        reader.close()
    assert proc.returncode == 0, err
    served = {}
    for sid in ids:
        _exactly_once(reader, sid)
        workers = {m.worker for m in reader.of(sid, StreamInfo)}
        assert len(workers) == 1, f"{sid} served by one worker, got {workers}"
        served[sid] = workers.pop()
    assert served == {"a": 0, "b": 1, "c": 0, "d": 1}  # sorted ids, dealt out in turn
    assert f"{4 * FRAMES} frames from 4 stream(s) -> {4 * FRAMES} packets" in out, out


def test_a_killed_worker_is_restarted_alone_nothing_lost_or_doubled(tiny_encoder: Path, tmp_path: Path) -> None:
    ids = ["a", "b"]
    proc, reader, _ = _run(tmp_path, tiny_encoder, ids, workers=2)
    try:
        _until(proc, lambda: len(reader.of("b", TokenPacket)) >= 60, 120, "packets of b before the kill")
        victim = next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "frametok-w1")
        victim.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
        _until(proc, lambda: all(reader.of(s, EndOfStream) for s in ids), 30, "end of every stream")
    finally:
        reader.close()
    assert proc.returncode == 0, err
    for sid in ids:
        _exactly_once(reader, sid)  # no frame twice, no seq restart: a §6 decoder sees no gap
    states_a = [m.state for m in reader.of("a", StatusMessage)]
    states_b = [(m.state, m.detail) for m in reader.of("b", StatusMessage)]
    assert "reconnecting" not in states_a, f"the other worker's stream saw nothing: {states_a}"
    assert any(s == "reconnecting" and "worker-1 died (exit code -9)" in d for s, d in states_b), states_b
    assert [s for s, _ in states_b][-1] == "online", states_b
    assert "restarted: worker-1 x1" in out, out


def test_track_ids_go_on_after_a_worker_restart(shared_models: Path, tmp_path: Path) -> None:
    """A restarted worker's tracker hands out ids above those its stream already had: never one twice."""
    from frametok.streamer.source.decode import decode_frames

    clip = tmp_path / "walk.mp4"
    import av

    with av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        for frame in decode_frames(str(shared_models.parent / "media" / "vtest.avi")):
            if frame.index >= 150:
                break
            if frame.index == 0:
                h, w = frame.frame_rgb.shape[:2]
                stream.width, stream.height, stream.pix_fmt, stream.bit_rate = w, h, "yuv420p", 4_000_000
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.frame_rgb, format="rgb24")))
        out.mux(stream.encode(None))
    lossless = free_endpoint()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"id": "walk", "uri": str(clip), "slots": 4}, {"id": "other", "uri": str(clip), "slots": 4}],
        "supervisor": {"backoff_initial_s": 0.2},
        "publisher": {"lossless_endpoint": lossless, "lossless_timeout_s": 20},
    }))
    reader = SpecReader(lossless)
    proc = start_cli("run", str(config), "--models", str(shared_models), "--detector", "yolov8n", "--encoder", "none",
                     "--publish", free_endpoint(), "--wait-subscribers", "1", "--no-progress", "--workers", "2")
    try:
        _until(proc, lambda: len(reader.of("walk", TokenPacket)) >= 40, 180, "packets of walk before the kill")
        victim = next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "frametok-w1")
        victim.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        _until(proc, lambda: reader.of("walk", EndOfStream), 30, "end of walk")
    finally:
        reader.close()
    assert proc.returncode == 0, err
    walk = [m for m in reader.messages if m.stream_id == "walk"]
    assert [m.frame_index for m in walk if isinstance(m, TokenPacket)] == list(range(150))
    restart = next(i for i, m in enumerate(walk) if isinstance(m, StatusMessage) and m.state == "reconnecting")

    def ids(msgs: list[Any]) -> set[int]:
        return {int(t) for m in msgs if isinstance(m, TokenPacket) and m.detections is not None
                and m.detections.track_id is not None for t in m.detections.track_id if t > 0}

    before, after = ids(walk[:restart]), ids(walk[restart:])
    assert before and after, "the tracker found people before and after the restart"
    assert min(after) > max(before), f"ids go on above {max(before)}, got {sorted(after)[:5]}..."
    assert "restarted: worker-1 x1" in out, out


def test_a_worker_killed_three_times_a_spec_reader_gets_every_frame_once(tiny_encoder: Path,
                                                                          tmp_path: Path) -> None:
    """The redelivery defect: a reader crediting in batches got frames twice after worker restarts, with
    new seq numbers (and a wrong eos count). Now: exactly once, seq never restarts, eos counts right."""
    proc, reader, _ = _run(tmp_path, tiny_encoder, ["v"], workers=1)
    try:
        for n, at in enumerate((50, 110, 170), start=1):
            _until(proc, lambda at=at: len(reader.of("v", TokenPacket)) >= at, 120, f"packets before kill {n}")
            victim = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                          if p.name() == "frametok-worker")
            victim.send_signal(signal.SIGKILL)
            _until(proc, lambda n=n: sum(m.state == "online" for m in reader.of("v", StatusMessage)) > n, 120,
                   f"the worker back after kill {n}")
        out, err = proc.communicate(timeout=240)
        _until(proc, lambda: reader.of("v", EndOfStream), 30, "the end of the stream")
    finally:
        reader.close()
    assert proc.returncode == 0, err
    _exactly_once(reader, "v")
    assert "restarted: worker x3" in out, out
