"""A subscriber's connections to publisher endpoints: each one's socket (SUB for live, DEALER for
lossless), CURVE, and for lossless its credit client (:class:`Link`); receiving from them in turn
(:class:`Connections`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import zmq

from ..keys import client_curve
from ..packet import topic_for
from ..zmq_parts import recv_parts
from .lossless import CreditClient

__all__ = ["Connections", "Link"]


class Link:
    def __init__(self, ctx: zmq.Context[Any], endpoint: str, mode: Literal["live", "lossless"],
                 streams: list[str] | None, *, rcvhwm: int, credit: int, heartbeat_s: float,
                 curve_secret_key: str | Path | None, curve_server_key: str | Path | None) -> None:
        self.endpoint = endpoint
        self.socket: zmq.Socket[Any] = ctx.socket(zmq.SUB if mode == "live" else zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0 if mode == "live" else 1000)
        try:
            if curve_secret_key is not None or curve_server_key is not None:
                if curve_secret_key is None or curve_server_key is None:
                    raise ValueError("CURVE needs both curve_secret_key and curve_server_key")
                client_curve(self.socket, curve_secret_key, curve_server_key)
            if mode == "live":
                self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
                for topic in [b""] if streams is None else [topic_for(s) for s in streams]:
                    self.socket.setsockopt(zmq.SUBSCRIBE, topic)
            else:
                self.socket.setsockopt(zmq.RCVHWM, 0)  # bounded by the credit window
            self.socket.connect(endpoint)
        except BaseException:
            self.socket.close(0)
            raise
        self._rcvtimeo_ms = -1  # the socket's receive timeout now (libzmq's default: wait forever)
        self.credit: CreditClient | None = None
        if mode == "lossless":
            self.credit = CreditClient(self.socket, streams, credit, heartbeat_s)
            self.credit.hello()

    def recv_nowait(self) -> Any | None:
        """The parts of a message waiting on this connection, or None."""
        try:
            return recv_parts(self.socket, zmq.NOBLOCK)
        except zmq.Again:
            return None

    def recv_wait(self, timeout_ms: int | None) -> Any | None:
        """The parts of the next message, waiting up to ``timeout_ms`` (None: forever) in libzmq's own receive:
        no poll before it and no ``zmq.Again`` raised for a message that arrives while waiting (each costs
        more than the receive itself). None on timeout."""
        wanted = -1 if timeout_ms is None else timeout_ms
        if wanted != self._rcvtimeo_ms:
            self.socket.setsockopt(zmq.RCVTIMEO, wanted)
            self._rcvtimeo_ms = wanted
        try:
            return recv_parts(self.socket)
        except zmq.Again:
            return None

    def ask_keyframe(self, stream_id: str) -> None:
        """Ask the publisher for a whole grid: a KEY command (lossless) or re-subscribing (live)."""
        if self.credit is not None:
            self.credit.ask_keyframe(stream_id)
            return
        # A subscription reaches the publisher's XPUB (which then sends a keyframe) even when it
        # repeats one we hold; removing it again leaves what we receive as it was.
        topic = topic_for(stream_id)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)

    def close(self) -> None:
        if self.credit is not None:
            self.credit.grant()
            self.credit.bye()
        self.socket.close()


class Connections:
    """A subscriber's connections, taken in turn: the next message waiting on any of them, or waiting for one
    (lossless ones return credit and say hello meanwhile)."""

    def __init__(self, links: list[Link], heartbeat_s: float) -> None:
        self.links = links
        self.heartbeat_s = heartbeat_s
        self._next = 0  # the connection to look at first
        self._poller = zmq.Poller()
        for link in links:
            self._poller.register(link.socket, zmq.POLLIN)
        # a lone live connection needs no poller: it waits in its receive
        self._single = links[0] if len(links) == 1 and links[0].credit is None else None

    def next(self, timeout_ms: int | None) -> tuple[Link, Any] | None:
        """A message (its connection and parts), waiting up to ``timeout_ms`` (None: forever); None on timeout."""
        if self._single is not None:
            parts = self._single.recv_wait(timeout_ms)
            return None if parts is None else (self._single, parts)
        while True:
            taken = self.take()  # a message already waiting needs no poll (the common case under load)
            if taken is not None:
                return taken
            if not self.wait(timeout_ms):
                return None

    def take(self) -> tuple[Link, Any] | None:
        """A message waiting on some connection (in turn), without waiting."""
        n = len(self.links)
        for i in range(n):
            link = self.links[(self._next + i) % n]
            parts = link.recv_nowait()
            if parts is not None:
                self._next = (self._next + i + 1) % n
                return link, parts
        return None

    def wait(self, timeout_ms: int | None) -> bool:
        """Wait for a message on any connection; lossless ones return credit and say hello meanwhile."""
        lossless = [link.credit for link in self.links if link.credit is not None]
        if not lossless:
            return bool(self._poller.poll(timeout_ms))
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            step = int(self.heartbeat_s * 1000)
            if deadline is not None:
                step = max(0, min(step, int((deadline - time.monotonic()) * 1000)))
            if self._poller.poll(step):
                return True
            for credit in lossless:
                credit.idle()
            if deadline is not None and time.monotonic() >= deadline:
                return False
