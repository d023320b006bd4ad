"""One subscriber, several publishers (one ``frametok run`` per host): every stream of every publisher,
live or lossless, and a stream id announced by two publishers is an error naming both.

Each publisher runs in its own process and sends synthetic packets through the real Publisher, sockets
and wire format."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
import pytest

from frametok import ConfigError, EndOfStream, StreamInfo, Subscriber, TokenPacket
from frametok.config import PublisherConfig
from frametok.packet import Detections

from ..conftest import free_endpoint

COUNT = 60


def _publish(config: PublisherConfig, stream: str, count: int, wait: int) -> None:
    import zmq

    from frametok.streamer.delivery.publisher import Publisher

    ctx = zmq.Context()
    pub = Publisher(ctx, config, {stream: StreamInfo(stream, "file", {"detector": {"class_names": ["thing"]}})})
    try:
        if not pub.wait_for_subscribers(wait, lambda: False):
            return
        for info in pub.infos.values():
            pub.publish(info)
        grid = np.ones((4, 4, 8), np.float16)
        det = Detections(np.array([[1, 2, 3, 4]]), np.array([0.9]), np.array([0]))
        for i in range(count):
            pub.publish(TokenPacket(stream, i, i / 30, (64, 48), detections=det, patch_tokens=grid))
            pub.poll_subscriptions()
        pub.publish(EndOfStream(stream, count))
    finally:
        pub.close(drain_s=10.0)
        ctx.term()


def _start(config: PublisherConfig, stream: str, wait: int = 1) -> Any:
    proc = mp.get_context("spawn").Process(target=_publish, args=(config, stream, COUNT, wait), daemon=True)
    proc.start()
    return proc


def _frames(sub: Subscriber) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for msg in sub:
        if isinstance(msg, TokenPacket):
            got.setdefault(msg.stream_id, []).append(msg.frame_index)
            assert msg.patch_tokens is not None and msg.patch_tokens.shape == (4, 4, 8)
    return got


@pytest.mark.parametrize("mode", ["live", "lossless"])
def test_one_subscriber_reads_every_stream_of_two_publishers(mode: str) -> None:
    configs = [PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint()) for _ in range(2)]
    endpoints = [c.endpoint if mode == "live" else c.lossless_endpoint for c in configs]
    with Subscriber(endpoints, mode=mode, timeout_s=60) as sub:  # type: ignore[arg-type]
        procs = [_start(c, s) for c, s in zip(configs, ["east", "west"], strict=True)]
        got = _frames(sub)
        for p in procs:
            p.join(30)
        assert sub.gaps == {} and sub.malformed == 0
        assert sub.ended == {"east", "west"}
        assert set(sub.infos) == {"east", "west"}
    assert got == {"east": list(range(COUNT)), "west": list(range(COUNT))}


def test_a_stream_id_on_two_publishers_is_an_error_naming_both() -> None:
    configs = [PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint()) for _ in range(2)]
    endpoints = [c.lossless_endpoint for c in configs]
    with Subscriber(endpoints, mode="lossless", timeout_s=60) as sub:  # type: ignore[arg-type]
        procs = [_start(c, "cam") for c in configs]
        with pytest.raises(ConfigError) as err:
            _frames(sub)
    for p in procs:
        p.terminate()
        p.join(10)
    text = str(err.value)
    assert "'cam'" in text and endpoints[0] in text and endpoints[1] in text  # type: ignore[operator]


def test_endpoints_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Subscriber([])
    ep = free_endpoint()
    with pytest.raises(ValueError, match="twice"):
        Subscriber([ep, ep])


def test_subscribe_cli_reads_two_publishers() -> None:
    import json
    import subprocess
    import sys

    configs = [PublisherConfig(endpoint=free_endpoint(), lossless_endpoint=free_endpoint()) for _ in range(2)]
    endpoints = [str(c.lossless_endpoint) for c in configs]
    cmd = [sys.executable, "-m", "frametok", "subscribe", *endpoints, "--lossless", "--json", "--timeout", "60"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        procs = [_start(c, s) for c, s in zip(configs, ["east", "west"], strict=True)]
        out, err = cli.communicate(timeout=120)
    for p in procs:
        p.join(30)
    assert cli.returncode == 0, err
    frames: dict[str, list[int]] = {}
    for line in out.splitlines():
        msg = json.loads(line)
        if msg["kind"] == "frame":
            frames.setdefault(msg["stream"], []).append(msg["frame"])
    assert frames == {"east": list(range(COUNT)), "west": list(range(COUNT))}
