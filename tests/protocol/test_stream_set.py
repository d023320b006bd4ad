"""Protocol 1.2, the set of streams (docs/protocol.md §3.6): every info names, in ``streams``, every stream
the publisher serves, so a lossless subscriber of all streams ends only once each of them has ended, also
one it has not received a message of yet (its worker not started when the others ended)."""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from frametok import Subscriber
from frametok.config import PublisherConfig
from frametok.packet import EndOfStream, Message, StreamInfo, TokenPacket
from frametok.streamer.delivery.publisher import Publisher

from ..conftest import free_endpoint


def _frame(stream_id: str, index: int) -> TokenPacket:
    return TokenPacket(stream_id=stream_id, frame_index=index, pts_s=index / 10, size_wh=(4, 4), policy="file",
                       dropped=0)


def _read(endpoint: str, got: list[Message]) -> None:
    with Subscriber(endpoint, mode="lossless", timeout_s=20) as sub:
        got.extend(sub)


def _wait(condition: Any, pub: Publisher, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        pub.poll_subscriptions(20)


def test_a_lossless_subscriber_waits_for_every_announced_stream() -> None:
    endpoint, lossless_endpoint = free_endpoint(), free_endpoint()
    while lossless_endpoint == endpoint:  # the two free ports asked for one after the other can be one
        lossless_endpoint = free_endpoint()
    config = PublisherConfig(endpoint=endpoint, lossless_endpoint=lossless_endpoint)
    everyone = ("a", "b")
    ctx = zmq.Context()
    pub = Publisher(ctx, config, {"a": StreamInfo("a", "file", {}, streams=everyone)})  # b's not known yet
    got: list[Message] = []
    reader = threading.Thread(target=_read, args=(config.lossless_endpoint, got), daemon=True)
    reader.start()
    try:
        assert pub.lossless is not None
        lossless = pub.lossless
        _wait(lambda: lossless.peers and not lossless.joins, pub)
        for i in range(3):
            pub.publish(_frame("a", i))
        pub.publish(EndOfStream("a", 3, "end"))
        _wait(lambda: any(isinstance(m, EndOfStream) for m in got), pub)
        time.sleep(1.0)
        assert reader.is_alive(), "the subscriber ended before b, which a's info announced, ended"
        info_b = StreamInfo("b", "file", {}, streams=everyone)  # b's worker says hello
        pub.infos["b"] = info_b
        pub.publish(info_b)
        pub.publish(_frame("b", 0))
        pub.publish(EndOfStream("b", 1, "end"))
        deadline = time.monotonic() + 10
        while reader.is_alive() and time.monotonic() < deadline:
            pub.poll_subscriptions(50)
        assert not reader.is_alive(), "the subscriber did not end once every announced stream ended"
    finally:
        pub.close(drain_s=2.0)
        ctx.term()
    frames = [(m.stream_id, m.frame_index) for m in got if isinstance(m, TokenPacket)]
    assert frames == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert [m.stream_id for m in got if isinstance(m, EndOfStream)] == ["a", "b"]
    assert {m.streams for m in got if isinstance(m, StreamInfo)} == {everyone}
