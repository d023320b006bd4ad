"""Lossless delivery: a ROUTER socket that sends each subscriber only as many messages as it granted.

A lossless subscriber (a DEALER) sends ``HELLO`` with the streams it wants and its credit window,
then ``CREDIT n`` whenever it has consumed ``n`` messages. The publisher sends it nothing beyond
its credit: when a subscriber has no credit left, :meth:`LosslessRouter.send` waits for it, so a
slow subscriber slows the pipeline (back-pressure) instead of losing messages. A subscriber that
grants nothing for ``timeout_s`` is dropped, so a dead one cannot stall the run forever.

Control messages (DEALER -> ROUTER), each a multipart message:

* ``[b"HELLO", json {"v": [1, 0], "streams": [ids] | null, "credit": n}]`` (again, as a heartbeat,
  when idle; a known subscriber's HELLO only refreshes it);
* ``[b"CREDIT", ascii decimal n]``;
* ``[b"KEY", stream id]``: the subscriber lost a stream's grid; the next one is sent whole;
* ``[b"BYE"]``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from ...packet import BYE, CREDIT, HELLO, KEY, MAX_CREDIT, topic_for

__all__ = ["LosslessRouter"]

log = logging.getLogger(__name__)



@dataclass
class _Peer:
    identity: bytes
    prefixes: list[bytes]
    window: int
    credit: int
    last_seen: float
    sent: int = 0
    pending: deque[int] = field(default_factory=deque)  # ids of the messages sent, not yet credited back

    def wants(self, topic: bytes) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)

    @property
    def outstanding(self) -> int:
        return self.window - self.credit


class LosslessRouter:
    """The publisher's side of lossless delivery."""

    def __init__(self, sock: zmq.Socket[Any], timeout_s: float,
                 on_join: Callable[[Sequence[bytes]], None] | None = None) -> None:
        self.socket = sock
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.timeout_s = timeout_s
        self.on_join = on_join
        self.peers: dict[bytes, _Peer] = {}
        self.dropped_peers = 0
        self.wait_s = 0.0  # time spent waiting for credit (back-pressure)
        self.on_wait: Callable[[], None] | None = None  # called while waiting (a heartbeat)
        self.sent_total = 0  # messages given to send(): the next one's id

    def _drop(self, peer: _Peer, why: str) -> None:
        log.warning("dropping lossless subscriber %s: %s", peer.identity.hex(), why)
        self.peers.pop(peer.identity, None)
        self.dropped_peers += 1

    def _on_message(self, parts: list[bytes]) -> None:
        if len(parts) < 2:
            return
        identity, command = parts[0], parts[1]
        peer = self.peers.get(identity)
        now = time.monotonic()
        if command == HELLO:
            if peer is not None:
                peer.last_seen = now
                return
            try:
                hello = json.loads(parts[2]) if len(parts) > 2 else {}
                streams = hello.get("streams")
                window = max(1, min(MAX_CREDIT, int(hello.get("credit", 16))))
                prefixes = [b""] if streams is None else [topic_for(str(s)) for s in streams]
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("ignoring a malformed HELLO from %s: %s", identity.hex(), exc)
                return
            self.peers[identity] = _Peer(identity, prefixes, window, window, now)
            log.info("lossless subscriber %s joined (credit %d)", identity.hex(), window)
            if self.on_join is not None:
                self.on_join(prefixes)
        elif peer is None:
            return  # a subscriber we dropped, or one that never said HELLO
        elif command == CREDIT and len(parts) > 2:
            try:
                grant = int(parts[2])
            except ValueError:
                return
            peer.credit = min(peer.window, peer.credit + max(0, grant))
            peer.last_seen = now
            for _ in range(min(max(0, grant), len(peer.pending))):
                peer.pending.popleft()
        elif command == KEY and len(parts) > 2:
            peer.last_seen = now
            try:
                prefix = topic_for(parts[2].decode())
            except (UnicodeDecodeError, ValueError):
                return
            if self.on_join is not None:
                self.on_join([prefix])
        elif command == BYE:
            self.peers.pop(identity, None)

    def poll(self, timeout_ms: int = 0) -> int:
        """Handle waiting control messages; returns how many."""
        handled = 0
        while self.socket.poll(timeout_ms if handled == 0 else 0, zmq.POLLIN):
            self._on_message(self.socket.recv_multipart())
            handled += 1
        return handled

    def _await_credit(self, peer: _Peer) -> bool:
        start = time.monotonic()
        while peer.credit <= 0:
            if peer.identity not in self.peers:
                return False
            if time.monotonic() - peer.last_seen > self.timeout_s:
                self._drop(peer, f"no credit for {self.timeout_s:.0f} s")
                return False
            self.poll(50)
            if self.on_wait is not None:
                self.on_wait()
        self.wait_s += time.monotonic() - start
        return True

    def acked_below(self) -> int:
        """Every message with a smaller id was taken by every subscriber it was sent to (credited back)."""
        return min((p.pending[0] for p in self.peers.values() if p.pending), default=self.sent_total)

    def send(self, topic: bytes, frames: Sequence[Any]) -> int:
        """Send one encoded message to every lossless subscriber that wants ``topic``, within credit; returns
        the message's id (see :meth:`acked_below`)."""
        message_id = self.sent_total
        self.sent_total += 1
        self.poll(0)
        for peer in list(self.peers.values()):
            if not peer.wants(topic) or not self._await_credit(peer):
                continue
            try:
                self.socket.send_multipart([peer.identity, *frames], copy=False)
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the subscriber went away
                self._drop(peer, str(exc))
                continue
            peer.credit -= 1
            peer.sent += 1
            peer.pending.append(message_id)
        return message_id

    def drain(self, timeout_s: float) -> bool:
        """Wait until every subscriber has consumed all it was sent; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while any(p.outstanding > 0 for p in self.peers.values()):
            if time.monotonic() > deadline:
                return False
            self.poll(50)
            for peer in list(self.peers.values()):
                if time.monotonic() - peer.last_seen > self.timeout_s:
                    self._drop(peer, "gone while draining")
        return True
