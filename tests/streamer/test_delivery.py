"""Delivery you can count on: live (a slow subscriber loses, nobody else does), lossless (a slow
subscriber slows the publisher and loses nothing), and CURVE (unauthorised subscribers get nothing).

The publisher runs in its own process and sends synthetic token packets through the real
Publisher, sockets and wire format; the subscribers are real Subscriber objects."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frametok import EndOfStream, StreamInfo, Subscriber, TokenPacket
from frametok.config import PublisherConfig
from frametok.packet import Detections

from ..conftest import free_endpoint


def _publish(config: PublisherConfig, count: int, interval_s: float, wait: int, results: Any) -> None:
    import zmq

    from frametok.streamer.delivery.publisher import Publisher

    ctx = zmq.Context()
    pub = Publisher(ctx, config, {"cam": StreamInfo("cam", "file", {"detector": {"class_names": ["thing"]}})})
    pub.wait_for_subscribers(wait, lambda: False)
    time.sleep(0.3)  # let every subscription settle
    grid = np.ones((16, 16, 384), np.float16)
    det = Detections(np.array([[1, 2, 3, 4]]), np.array([0.9]), np.array([0]))
    t0 = time.monotonic()
    for i in range(count):
        pub.publish(TokenPacket("cam", i, i / 30, (64, 48), detections=det, patch_tokens=grid))
        pub.poll_subscriptions()
        if interval_s:
            time.sleep(interval_s)
    pub.publish(EndOfStream("cam", count))
    elapsed = time.monotonic() - t0
    waited = pub.lossless.wait_s if pub.lossless else 0.0
    pub.close()
    ctx.term()
    results.put({"elapsed": elapsed, "waited": waited})


def _start(config: PublisherConfig, count: int, interval_s: float, wait: int) -> tuple[Any, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_publish, args=(config, count, interval_s, wait, results))
    proc.start()
    return proc, results


def _consume(sub: Subscriber, delay_s: float, out: dict[str, Any]) -> None:
    frames = []
    for msg in sub:
        if isinstance(msg, TokenPacket):
            frames.append(msg.frame_index)
            if delay_s:
                time.sleep(delay_s)
    out["frames"] = frames
    out["gaps"] = {k: v.missing for k, v in sub.gaps.items()}
    out["gap_frames"] = {k: v.frames for k, v in sub.gaps.items()}
    out["ended"] = sub.ended


def test_live_slow_subscriber_loses_alone() -> None:
    config = PublisherConfig(endpoint=free_endpoint(), hwm=8)
    count = 300
    fast_out: dict[str, Any] = {}
    slow_out: dict[str, Any] = {}
    with Subscriber(config.endpoint, timeout_s=30) as fast, \
         Subscriber(config.endpoint, rcvhwm=2, timeout_s=3) as slow:
        proc, results = _start(config, count, 0.004, wait=2)
        threads = [threading.Thread(target=_consume, args=(fast, 0.0, fast_out)),
                   threading.Thread(target=_consume, args=(slow, 0.05, slow_out))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        proc.join(30)
    assert fast_out["frames"] == list(range(count)), "the fast subscriber must get every packet"
    assert fast_out["gaps"] == {}
    assert len(slow_out["frames"]) < count // 2, "the slow live subscriber keeps up only by losing packets"
    # every packet it missed up to the last one it saw is reported as a gap (a live subscriber may
    # also miss the end-of-stream itself; then it ends on its silence timeout)
    assert slow_out["gaps"]["cam"] >= slow_out["frames"][-1] + 1 - len(slow_out["frames"])
    missed = {f for first, last in slow_out["gap_frames"]["cam"] for f in range(first, last + 1)}
    assert missed == set(range(slow_out["frames"][-1] + 1)) - set(slow_out["frames"]), "gaps name the lost frames"
    assert slow_out["frames"] == sorted(slow_out["frames"])
    # the publisher was not held back by the slow subscriber: it ran at its own pace
    assert results.get(timeout=10)["waited"] == 0.0


def test_lossless_slow_subscriber_gets_everything() -> None:
    config = PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint())
    count = 300
    out: dict[str, Any] = {}
    with Subscriber(config.lossless_endpoint, mode="lossless", credit=8, timeout_s=60) as slow:  # type: ignore[arg-type]
        proc, results = _start(config, count, 0.0, wait=1)
        _consume(slow, 0.005, out)
        proc.join(60)
    assert out["frames"] == list(range(count))
    assert out["gaps"] == {} and out["ended"] == {"cam"}
    stats = results.get(timeout=10)
    assert stats["waited"] > 0.5, "the publisher must have waited for the slow subscriber's credit"


def test_late_joiner_starts_cleanly() -> None:
    config = PublisherConfig(endpoint=free_endpoint())
    with Subscriber(config.endpoint, timeout_s=30) as first:
        proc, _ = _start(config, 200, 0.01, wait=1)
        got_first = first.recv(30)
        assert got_first is not None
        time.sleep(0.5)
        with Subscriber(config.endpoint, timeout_s=30) as late:
            msgs = list(late)
        proc.join(30)
    frames = [m for m in msgs if isinstance(m, TokenPacket)]
    assert frames and frames[0].frame_index > 0  # it joined in the middle...
    assert any(isinstance(m, StreamInfo) for m in msgs), "...and was sent the stream's info on joining"
    assert late.gaps == {} and isinstance(msgs[-1], EndOfStream)
    assert [f.frame_index for f in frames] == list(range(frames[0].frame_index, 200))


@pytest.mark.parametrize("mode", ["live", "lossless"])
def test_curve_admits_only_authorised_keys(tmp_path: Path, mode: str) -> None:
    from frametok.config import CurveConfig
    from frametok.keys import make_keypair

    _, server_secret = make_keypair(tmp_path / "server", "server")
    server_public = tmp_path / "server" / "server.key"
    make_keypair(tmp_path / "allowed", "alice")
    _, alice_secret = make_keypair(tmp_path / "alice", "alice")  # a fresh pair, not yet authorised
    (tmp_path / "allowed" / "alice.key").write_bytes((tmp_path / "alice" / "alice.key").read_bytes())
    _, mallory_secret = make_keypair(tmp_path / "mallory", "mallory")
    curve = CurveConfig(secret_key=str(server_secret), authorized_keys=str(tmp_path / "allowed"))
    config = PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint(), curve=curve)
    endpoint = config.endpoint if mode == "live" else config.lossless_endpoint
    kwargs = {"mode": mode, "timeout_s": 5}
    good: dict[str, Any] = {}
    bad: dict[str, Any] = {}
    with Subscriber(endpoint, curve_secret_key=alice_secret, curve_server_key=server_public, **kwargs) as alice, \
         Subscriber(endpoint, curve_secret_key=mallory_secret, curve_server_key=server_public, **kwargs) as mallory:
        proc, _ = _start(config, 50, 0.002, wait=1)
        threads = [threading.Thread(target=_consume, args=(alice, 0.0, good)),
                   threading.Thread(target=_consume, args=(mallory, 0.0, bad))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        proc.join(30)
    assert good["frames"] == list(range(50))
    assert bad["frames"] == [] and bad["ended"] == set()
