"""Delivery rules a subscriber written from docs/protocol.md alone can count on (protocol 1.2):

* a lossless subscriber that grants no credit for ``lossless_timeout_s`` is dropped whatever else it
  sends (HELLO heartbeats do not keep it), and is not taken back on the same connection; at most
  ``lossless_max_subscribers`` are admitted;
* per stream, every subscriber sees ``seq`` go up by exactly one (KEYs, joins and live churn included);
* a lossless joiner's (and a KEY's) first grid goes to it alone, as the same frame with its grid whole.

The publisher is the real Publisher in its own process; the subscribers are raw pyzmq sockets that follow
the spec (they read the JSON header themselves and credit in batches at half their window, §8.1).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zmq

from frametok.config import PublisherConfig

from ..conftest import free_endpoint, start_cli, write_video
from .test_live_sources import tiny_encoder

__all__ = ["tiny_encoder"]  # the fixture

STREAM = "cam"
_RUNNING: list[Any] = []  # raw subscribers started by a test, stopped after it
pytestmark = pytest.mark.timeout(120)
_DTYPES = {"uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}


def _publish(config: PublisherConfig, count: int, interval_s: float, wait: int, grids: bool, results: Any) -> None:
    """The publisher's process: ``count`` frames of one stream (compressed grids with ``grids``), then eos."""
    import dataclasses

    from frametok.grid import GridUpdate
    from frametok.models.compression import GridCompressor
    from frametok.packet import EndOfStream, StreamInfo, TokenPacket
    from frametok.streamer.delivery.publisher import Publisher

    ctx = zmq.Context()
    pub = Publisher(ctx, config, {STREAM: StreamInfo(STREAM, "file", {})})
    pub.wait_for_subscribers(wait, lambda: False)
    results.put("started")
    comp = GridCompressor(tau=0.05, keyframe_interval=0, scene_cut_share=1.0, wire_dtype="float16")
    rng = np.random.default_rng(7)
    grid = rng.normal(size=(4, 4, 16)).astype(np.float32)
    t0 = time.monotonic()
    for i in range(count):
        update = None
        if grids:
            grid = grid + rng.normal(scale=0.08, size=grid.shape).astype(np.float32)
            update = comp.encode(grid) if i % 5 != 4 else comp.skip()
        packet = TokenPacket(STREAM, i, i / 30, (64, 48), grid_update=update)

        def whole(p: TokenPacket = packet) -> TokenPacket:
            u = p.grid_update
            assert u is not None and comp.reference is not None
            return dataclasses.replace(p, grid_update=GridUpdate("key", u.n, u.grid_hw, values=comp.reference.copy()))

        pub.publish(packet, whole if grids else None)
        pub.poll_subscriptions()
        if interval_s:
            time.sleep(interval_s)
    pub.publish(EndOfStream(STREAM, count))
    elapsed = time.monotonic() - t0
    dropped = pub.lossless.dropped_peers if pub.lossless else 0
    refused = pub.lossless.refused_hellos if pub.lossless else 0
    pub.close(drain_s=10.0)
    ctx.term()
    results.put({"elapsed": elapsed, "dropped": dropped, "refused": refused})


def _start(config: PublisherConfig, count: int, interval_s: float, wait: int, grids: bool = False) -> tuple[Any, Any]:
    spawn = mp.get_context("spawn")
    results = spawn.Queue()
    proc = spawn.Process(target=_publish, args=(config, count, interval_s, wait, grids, results), daemon=True)
    proc.start()
    return proc, results


@dataclass
class Received:
    """What a raw subscriber saw: (kind, seq, grid kind or None, grid after the message or None) per message."""

    messages: list[tuple[str, int, str | None, np.ndarray | None]] = field(default_factory=list)
    grid: np.ndarray | None = None
    grid_n: int = -1
    ended: bool = False

    def take(self, parts: list[bytes]) -> None:
        header = json.loads(parts[1])
        assert parts[0] == f"{header['stream']}/".encode()
        buffers: dict[str, np.ndarray] = {}
        for desc, part in zip(header["buffers"], parts[2:], strict=True):
            assert desc["dtype"] in _DTYPES
            buffers[desc["name"]] = np.frombuffer(part, dtype=np.dtype(desc["dtype"]).newbyteorder("<")).reshape(
                desc["shape"])
        grid = header.get("grid")
        kind = grid["kind"] if grid else None
        if grid is not None:  # §5.1
            if kind == "key":
                self.grid = buffers["patches"].copy()
            elif self.grid is not None and grid["n"] == self.grid_n + 1:
                if kind == "delta":
                    if "patch_bias" in buffers:
                        moved = self.grid.astype(np.float32) + buffers["patch_bias"].astype(np.float32)
                        self.grid = moved.astype(self.grid.dtype)
                    flat = self.grid.reshape(-1, self.grid.shape[-1])
                    flat[buffers["patch_index"]] = buffers["patch_values"]
            else:
                self.grid = None  # out of sync until the next key
            self.grid_n = grid["n"]
        self.messages.append((header["kind"], header["seq"], kind,
                              None if self.grid is None or kind is None else self.grid.copy()))
        if header["kind"] == "eos":
            self.ended = True

    @property
    def seqs(self) -> list[int]:
        return [m[1] for m in self.messages]


def _assert_counts_up(seqs: list[int], who: str) -> None:
    assert seqs, f"{who}: nothing received"
    bad = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
    assert not bad, f"{who}: seq not one up at {bad[:10]} in {seqs[:40]}..."


class RawLossless(threading.Thread):
    """A DEALER following §8.1: HELLO (again once a second while idle), CREDIT at half its window."""

    def __init__(self, endpoint: str, window: int = 8, credit: bool = True, hello_every_s: float = 1.0,
                 key_every_s: float = 0.0, deadline_s: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.window, self.credit, self.hello_every_s = endpoint, window, credit, hello_every_s
        self.key_every_s, self.deadline = key_every_s, time.monotonic() + deadline_s
        self.got = Received()
        self.stop = threading.Event()
        _RUNNING.append(self)

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        hello = [b"HELLO", json.dumps({"v": [1, 1], "streams": None, "credit": self.window}).encode()]
        sock.send_multipart(hello)
        last_hello = last_key = time.monotonic()
        consumed = 0
        while not self.stop.is_set() and not self.got.ended and time.monotonic() < self.deadline:
            now = time.monotonic()
            if now - last_hello >= self.hello_every_s:
                sock.send_multipart(hello)
                last_hello = now
            if self.key_every_s and now - last_key >= self.key_every_s:
                sock.send_multipart([b"KEY", STREAM.encode()])
                last_key = now
            if not sock.poll(20):
                if self.credit and consumed:  # idle: grant what was consumed
                    sock.send_multipart([b"CREDIT", str(consumed).encode()])
                    consumed = 0
                continue
            self.got.take(sock.recv_multipart())
            consumed += 1
            if self.credit and consumed >= self.window // 2:
                sock.send_multipart([b"CREDIT", str(consumed).encode()])
                consumed = 0
        if self.credit and consumed:
            sock.send_multipart([b"CREDIT", str(consumed).encode()])
        sock.send_multipart([b"BYE"])
        sock.close()


class RawLive(threading.Thread):
    """A SUB on the live endpoint that records what it receives."""

    def __init__(self, endpoint: str, deadline_s: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.deadline = endpoint, time.monotonic() + deadline_s
        self.got = Received()
        self.stop = threading.Event()
        _RUNNING.append(self)
        self.subscribed = threading.Event()

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, f"{STREAM}/".encode())
        sock.connect(self.endpoint)
        self.subscribed.set()
        while not self.stop.is_set() and not self.got.ended and time.monotonic() < self.deadline:
            if sock.poll(20):
                self.got.take(sock.recv_multipart())
        sock.close()


def _churn(endpoint: str, stop: threading.Event, joined: list[int]) -> None:
    """Live subscribers joining and leaving, one every ~30 ms."""
    ctx = zmq.Context.instance()
    while not stop.is_set():
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, f"{STREAM}/".encode())
        sock.connect(endpoint)
        sock.poll(30)
        sock.close()
        joined[0] += 1


def _finish(proc: Any, results: Any, timeout_s: float) -> dict[str, Any]:
    try:
        out = results.get(timeout=timeout_s)
    finally:
        proc.join(15)
        if proc.is_alive():
            proc.kill()
    assert isinstance(out, dict)
    return out


def test_heartbeats_without_credit_do_not_keep_a_lossless_subscriber() -> None:
    """Item 2: a DEALER that repeats HELLO {"credit": 1} and never grants is dropped after the timeout and
    not taken back; the honest lossless subscriber gets everything, the run is not held."""
    config = PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint(), lossless_timeout_s=1.0)
    proc, results = _start(config, 60, 0.05, 1)
    honest = RawLossless(config.lossless_endpoint or "", window=8)
    honest.start()
    assert results.get(timeout=30) == "started"
    staller = RawLossless(config.lossless_endpoint or "", window=1, credit=False, hello_every_s=0.2)
    staller.start()
    out = _finish(proc, results, 20.0)  # old publisher: held for as long as the staller says HELLO
    honest.join(10)
    staller.stop.set()
    staller.join(5)
    assert out["elapsed"] < 8.0, out
    assert out["dropped"] == 1 and out["refused"] >= 1, out  # dropped, and its later HELLOs ignored
    frames = [m for m in honest.got.messages if m[0] == "frame"]
    assert len(frames) == 60 and honest.got.ended
    _assert_counts_up(honest.got.seqs, "honest")
    assert len(staller.got.messages) <= 1  # its one credit, never more


def test_lossless_subscribers_are_capped() -> None:
    """Item 2: beyond ``lossless_max_subscribers`` a HELLO is ignored (the subscriber gets nothing)."""
    config = PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint(), lossless_max_subscribers=1)
    proc, results = _start(config, 20, 0.01, 1)
    first = RawLossless(config.lossless_endpoint or "", window=8)
    first.start()
    assert results.get(timeout=30) == "started"
    second = RawLossless(config.lossless_endpoint or "", window=8, hello_every_s=0.1)
    second.start()
    out = _finish(proc, results, 30.0)
    first.join(10)
    second.stop.set()
    second.join(5)
    assert out["refused"] >= 1
    assert len([m for m in first.got.messages if m[0] == "frame"]) == 20
    assert second.got.messages == []


def test_every_subscriber_sees_seq_one_up() -> None:
    """Item 3: two lossless subscribers joining together, one of them sending KEY every 20 ms, live
    subscribers joining and leaving meanwhile: every subscriber sees the stream's seq go up by exactly one."""
    config = PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint())
    proc, results = _start(config, 150, 0.005, 3, grids=True)
    live = RawLive(config.endpoint)
    live.start()
    live.subscribed.wait(5)
    a = RawLossless(config.lossless_endpoint or "", window=16, key_every_s=0.02)
    b = RawLossless(config.lossless_endpoint or "", window=64)
    a.start()
    b.start()
    assert results.get(timeout=30) == "started"
    stop, joined = threading.Event(), [0]
    churner = threading.Thread(target=_churn, args=(config.endpoint, stop, joined), daemon=True)
    churner.start()
    try:
        _finish(proc, results, 40.0)
    finally:
        stop.set()
        churner.join(5)
    for sub in (a, b, live):
        sub.join(10)
    assert joined[0] >= 5
    for name, sub in (("lossless a", a), ("lossless b", b), ("live", live)):
        assert sub.got.ended, name
        _assert_counts_up(sub.got.seqs, name)
    assert len([m for m in a.got.messages if m[0] == "frame"]) == 150
    assert len([m for m in b.got.messages if m[0] == "frame"]) == 150


def test_lossless_joiner_gets_its_keyframe_alone() -> None:
    """Item 4: a lossless subscriber joining mid-stream, and one sending KEY, get the grid whole, alone:
    the subscriber already in sync sees deltas only after its first key, and every grid rebuilt is the same."""
    config = PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint())
    proc, results = _start(config, 120, 0.01, 1, grids=True)
    first = RawLossless(config.lossless_endpoint or "", window=16)
    first.start()
    assert results.get(timeout=30) == "started"
    deadline = time.monotonic() + 20
    while len(first.got.messages) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    joiner = RawLossless(config.lossless_endpoint or "", window=16, key_every_s=0.25)
    joiner.start()
    _finish(proc, results, 40.0)
    first.join(10)
    joiner.join(10)
    keys_first = [m for m in first.got.messages if m[2] == "key"]
    assert len(keys_first) == 1, "the subscriber in sync must not be sent keyframes for others"
    joined = [m for m in joiner.got.messages if m[2] is not None]
    assert len(joined) > 20 and joined[0][2] == "key"
    assert sum(m[2] == "key" for m in joined) >= 2  # its KEYs were answered (to it alone)
    by_seq = {m[1]: m for m in first.got.messages}
    for kind, seq, grid_kind, grid in joiner.got.messages:
        mine = by_seq[seq]  # the same message (same seq), with possibly its grid whole
        assert mine[0] == kind
        if grid_kind is not None:
            assert grid is not None and mine[3] is not None
            assert np.array_equal(grid, mine[3]), f"seq {seq}: rebuilt grids differ"
    _assert_counts_up(joiner.got.seqs, "joiner")


def test_live_churn_forces_few_keyframes(tiny_encoder: Path, tmp_path: Path) -> None:
    """Item 4 through ``frametok run``: live subscribers joining and leaving all along make at most one
    keyframe per ``forced_keyframe_gap`` frames (here 300 of 1500), not one per join."""
    clip = write_video(tmp_path / "clip.mp4", frames=1500, size_wh=(64, 48), fps=30)
    endpoint, lossless = free_endpoint(), free_endpoint()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"id": STREAM, "uri": str(clip)}],
        "detector": None,
        "encoder": {"model": str(tiny_encoder), "keyframe_interval": 0, "scene_cut_share": 1.0, "skip_threshold": 0},
        "publisher": {"endpoint": endpoint, "lossless_endpoint": lossless, "wait_subscribers": 1,
                      "forced_keyframe_gap": 300},
    }))
    steady = RawLossless(lossless, window=32, deadline_s=90)
    steady.start()
    proc = start_cli("run", str(config), "--no-progress")
    stop, joined = threading.Event(), [0]
    churner = threading.Thread(target=_churn, args=(endpoint, stop, joined), daemon=True)
    try:
        deadline = time.monotonic() + 60
        while not steady.got.messages and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        churner.start()
        steady.join(80)
        joins = joined[0]
    finally:
        stop.set()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    frames = [m for m in steady.got.messages if m[0] == "frame"]
    assert len(frames) == 1500
    keys = sum(m[2] == "key" for m in frames)
    assert joins >= 10, "the churn should have run during the clip"
    assert keys <= 1 + 1500 // 300, f"{keys} keyframes for {joins} live joins"
    _assert_counts_up(steady.got.seqs, "steady")


@pytest.fixture(autouse=True)
def _stop_subscribers() -> Any:
    yield
    for sub in _RUNNING:
        sub.stop.set()
    for sub in _RUNNING:
        sub.join(5)
    _RUNNING.clear()
