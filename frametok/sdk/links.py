"""One connection of a subscriber to one publisher endpoint: its socket (SUB for live, DEALER for
lossless), CURVE, and for lossless its credit client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import zmq

from ..keys import client_curve
from ..packet import topic_for
from ..zmq_parts import recv_parts
from .lossless import CreditClient

__all__ = ["Link"]


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
