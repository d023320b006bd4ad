"""How a subscriber waits for a message: a lone live connection waits in its receive (with the timeout asked
for each call), several connections through a poller; what arrives is decoded as views of the frames."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from frametok import Subscriber, TokenPacket
from frametok.packet import encode
from frametok.zmq_parts import send_parts

from ..conftest import free_endpoint


def _packet(i: int) -> TokenPacket:
    grid = np.full((16, 16, 384), i, np.float16)  # ~200 KB: sent without a copy
    return TokenPacket("cam0", i, i / 30, (64, 48), patch_tokens=grid, seq=i)


def _xpub(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.XPUB)
    sock.bind(endpoint)
    return sock


def test_lone_live_connection_waits_in_its_receive() -> None:
    ctx = zmq.Context()
    endpoint = free_endpoint()
    pub = _xpub(ctx, endpoint)
    try:
        with Subscriber(endpoint, context=ctx) as sub:
            assert pub.poll(10_000) and pub.recv() == b"\x01"  # subscribed to everything
            t0 = time.monotonic()
            assert sub.recv(0.3) is None  # nothing sent: the timeout, not sooner
            assert time.monotonic() - t0 >= 0.25
            # sent from another thread (while recv waits, or just before it): received either way
            sender = threading.Thread(target=send_parts, args=(pub, encode(_packet(1))))
            sender.start()
            msg = sub.recv(30)
            sender.join()
            assert isinstance(msg, TokenPacket) and msg.frame_index == 1
            assert msg.patch_tokens is not None and not msg.patch_tokens.flags.owndata  # a view of the frame
            assert float(msg.patch_tokens[15, 15, 383]) == 1.0
            # a message already waiting is taken at once, under any timeout (0 too)
            send_parts(pub, encode(_packet(2)))
            msg = sub.recv(30)
            assert isinstance(msg, TokenPacket) and msg.frame_index == 2
            send_parts(pub, encode(_packet(3)))
            deadline = time.monotonic() + 10
            while (msg := sub.recv(0)) is None:
                assert time.monotonic() < deadline, "packet 3 never came"
            assert isinstance(msg, TokenPacket) and msg.frame_index == 3
            t0 = time.monotonic()
            assert sub.recv(0.2) is None  # the timeout of this call, not the last one's
            assert 0.15 <= time.monotonic() - t0 < 10
            assert sub.received == 3 and sub.malformed == 0
    finally:
        pub.close(0)
        ctx.term()


def test_two_connections_are_polled_in_turn() -> None:
    ctx = zmq.Context()
    endpoints = [free_endpoint(), free_endpoint()]
    pubs = [_xpub(ctx, ep) for ep in endpoints]
    try:
        with Subscriber(endpoints, context=ctx) as sub:
            for pub in pubs:
                assert pub.poll(10_000) and pub.recv() == b"\x01"
            assert sub.recv(0.2) is None
            send_parts(pubs[1], encode(TokenPacket("b", 0, 0.0, (64, 48), seq=0)))
            send_parts(pubs[0], encode(TokenPacket("a", 0, 0.0, (64, 48), seq=0)))
            got = {msg.stream_id for msg in (sub.recv(30), sub.recv(30)) if isinstance(msg, TokenPacket)}
            assert got == {"a", "b"}
            assert sub.endpoint_of("a") == endpoints[0] and sub.endpoint_of("b") == endpoints[1]
    finally:
        for pub in pubs:
            pub.close(0)
        ctx.term()
