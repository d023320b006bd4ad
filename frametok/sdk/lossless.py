"""The lossless client's side of credit flow control (docs/protocol.md §8): HELLO with the credit window
(again as a heartbeat while idle), CREDIT for what was consumed, KEY to ask for a whole grid."""

from __future__ import annotations

import json
import time
from typing import Any

import zmq

from ..packet import BYE, CREDIT, HELLO, KEY, PROTOCOL_VERSION

__all__ = ["CreditClient"]


class CreditClient:
    """Control messages on a DEALER ``socket`` connected to a publisher's lossless endpoint."""

    def __init__(self, socket: zmq.Socket[Any], streams: list[str] | None, credit: int, heartbeat_s: float) -> None:
        self.socket, self.streams, self.credit, self.heartbeat_s = socket, streams, credit, heartbeat_s
        self._consumed = 0
        self._last_hello = 0.0

    def _control(self, parts: list[bytes]) -> bool:
        """Send a control message without blocking (False when no publisher is connected yet)."""
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def hello(self) -> None:
        hello = {"v": list(PROTOCOL_VERSION), "streams": self.streams, "credit": self.credit}
        self._control([HELLO, json.dumps(hello).encode()])
        self._last_hello = time.monotonic()

    def ask_keyframe(self, stream_id: str) -> None:
        self._control([KEY, stream_id.encode()])

    def consumed(self) -> None:
        """One message taken. Every message is credited back at once: the credit is also the publisher's
        acknowledgement, on which it lets go of the frame (a frame not acknowledged is redone should the
        publisher die)."""
        self._consumed += 1
        self.grant()

    def grant(self) -> None:
        if self._consumed and self._control([CREDIT, str(self._consumed).encode()]):
            self._consumed = 0

    def idle(self) -> None:
        """While waiting: return credit for what was consumed, and say we are alive."""
        self.grant()
        if time.monotonic() - self._last_hello >= self.heartbeat_s:
            self.hello()

    def bye(self) -> None:
        self._control([BYE])
