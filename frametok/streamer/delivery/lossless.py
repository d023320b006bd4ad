"""Lossless delivery: a ROUTER socket that sends each subscriber only as many messages as it granted.

A lossless subscriber (a DEALER) sends ``HELLO`` with the streams it wants and its credit window,
then ``CREDIT n`` whenever it has consumed ``n`` messages. The publisher sends it nothing beyond
its credit: when a subscriber has no credit left, :meth:`LosslessRouter.send` waits for it, so a
slow subscriber slows the pipeline (back-pressure) instead of losing messages. A subscriber that
grants nothing for ``timeout_s`` while it has no credit left is dropped, whatever else it sends (its
HELLO heartbeats do not keep it), so a dead or hostile one cannot stall the run for longer; a dropped
connection is not taken back. At most ``max_peers`` subscribers are admitted at once.

Control messages (DEALER -> ROUTER), each a multipart message:

* ``[b"HELLO", json {"v": [1, 2], "streams": [ids] | null, "credit": n}]`` (again, as a heartbeat,
  when idle; a known subscriber's HELLO only refreshes it);
* ``[b"CREDIT", ascii decimal n]``;
* ``[b"KEY", stream id]``: the subscriber lost a stream's grid; its next one is sent whole, to it alone;
* ``[b"BYE"]``.

What a control message asks for is never done while a message is being sent: joins are queued
(:attr:`LosslessRouter.joins`) for the publisher to answer once the message went to everyone, so that
each subscriber sees a stream's ``seq`` in order. A joiner's (or a KEY's) first grid goes to it alone:
:meth:`LosslessRouter.send` is given the message's whole-grid variant for the subscribers out of sync.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from ...packet import BYE, CREDIT, HELLO, KEY, MAX_CREDIT, topic_for
from ...zmq_parts import send_parts

__all__ = ["LosslessRouter"]

log = logging.getLogger(__name__)

_REFUSED_KEEP = 4096  # dropped connections remembered (their HELLOs are ignored)


@dataclass
class _Peer:
    identity: bytes
    prefixes: list[bytes]
    window: int
    credit: int
    last_seen: float
    granted_at: float  # when it last granted credit (or joined)
    empty_since: float = 0.0  # when its credit last ran out
    sent: int = 0
    pending: deque[int] = field(default_factory=deque)  # ids of the messages sent, not yet credited back
    synced: set[bytes] = field(default_factory=set)  # topics whose grid it holds (a key was sent to it)

    def wants(self, topic: bytes) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)

    @property
    def outstanding(self) -> int:
        return self.window - self.credit


class LosslessRouter:
    """The publisher's side of lossless delivery."""

    def __init__(self, sock: zmq.Socket[Any], timeout_s: float, max_peers: int = 0) -> None:
        self.socket = sock
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.timeout_s = timeout_s
        self.max_peers = max_peers  # 0: no limit
        self.peers: dict[bytes, _Peer] = {}
        self.joins: list[list[bytes]] = []  # topic prefixes of subscribers joined, not yet answered
        self.dropped_peers = 0
        self.refused_hellos = 0  # HELLOs ignored: over max_peers, or from a dropped connection
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self.wait_s = 0.0  # time spent waiting for credit (back-pressure)
        self.on_wait: Callable[[], None] | None = None  # called while waiting (a heartbeat)
        self.sent_total = 0  # messages given to send(): the next one's id

    def _drop(self, peer: _Peer, why: str) -> None:
        log.warning("dropping lossless subscriber %s: %s", peer.identity.hex(), why)
        self.peers.pop(peer.identity, None)
        self.dropped_peers += 1
        self._refused[peer.identity] = None
        while len(self._refused) > _REFUSED_KEEP:
            self._refused.popitem(last=False)

    def _hello(self, identity: bytes, parts: list[bytes], now: float) -> None:
        if identity in self._refused or (self.max_peers and len(self.peers) >= self.max_peers):
            self.refused_hellos += 1
            return
        try:
            hello = json.loads(parts[2]) if len(parts) > 2 else {}
            streams = hello.get("streams")
            window = max(1, min(MAX_CREDIT, int(hello.get("credit", 16))))
            prefixes = [b""] if streams is None else [topic_for(str(s)) for s in streams]
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring a malformed HELLO from %s: %s", identity.hex(), exc)
            return
        self.peers[identity] = _Peer(identity, prefixes, window, window, now, now)
        log.info("lossless subscriber %s joined (credit %d)", identity.hex(), window)
        self.joins.append(prefixes)

    def _on_message(self, parts: list[bytes]) -> None:
        if len(parts) < 2:
            return
        identity, command = parts[0], parts[1]
        peer = self.peers.get(identity)
        now = time.monotonic()
        if command == HELLO:
            if peer is None:
                self._hello(identity, parts, now)
            else:  # a heartbeat: says it is alive, never that it consumes
                peer.last_seen = now
        elif peer is None:
            return  # a subscriber we dropped, or one that never said HELLO
        elif command == CREDIT and len(parts) > 2:
            try:
                grant = int(parts[2])
            except ValueError:
                return
            peer.last_seen = now
            if grant <= 0:
                return
            peer.credit = min(peer.window, peer.credit + grant)
            peer.granted_at = now
            for _ in range(min(grant, len(peer.pending))):
                peer.pending.popleft()
        elif command == KEY and len(parts) > 2:
            peer.last_seen = now
            try:
                peer.synced.discard(topic_for(parts[2].decode()))
            except (UnicodeDecodeError, ValueError):
                return
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
            if time.monotonic() - max(peer.empty_since, peer.granted_at) > self.timeout_s:
                self._drop(peer, f"no credit granted for {self.timeout_s:g} s")
                return False
            self.poll(50)
            if self.on_wait is not None:
                self.on_wait()
        self.wait_s += time.monotonic() - start
        return True

    def acked_below(self) -> int:
        """Every message with a smaller id was taken by every subscriber it was sent to (credited back)."""
        return min((p.pending[0] for p in self.peers.values() if p.pending), default=self.sent_total)

    def send(self, topic: bytes, frames: Sequence[Any], grid: str | None = None,
             key_frames: Callable[[], Sequence[Any]] | None = None) -> int:
        """Send one encoded message to every lossless subscriber that wants ``topic``, within credit; returns
        the message's id (see :meth:`acked_below`). ``grid``: the kind of grid update the message carries
        (None: none); ``key_frames``: the same message with its grid whole, for subscribers out of sync."""
        message_id = self.sent_total
        self.sent_total += 1
        self.poll(0)
        whole: Sequence[Any] | None = None
        for peer in list(self.peers.values()):
            if not peer.wants(topic) or not self._await_credit(peer):
                continue
            out = frames
            if grid is not None and topic not in peer.synced:
                if grid == "key":
                    peer.synced.add(topic)
                elif key_frames is not None:
                    if whole is None:
                        whole = key_frames()
                    out = whole
                    peer.synced.add(topic)
            try:
                send_parts(self.socket, [peer.identity, *out])
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the subscriber went away
                self._drop(peer, str(exc))
                continue
            peer.credit -= 1
            if peer.credit <= 0:
                peer.empty_since = time.monotonic()
            peer.sent += 1
            peer.pending.append(message_id)
        return message_id

    def drain(self, timeout_s: float) -> bool:
        """Wait until every subscriber has consumed all it was sent; False on timeout."""
        start = time.monotonic()
        deadline = start + timeout_s
        while any(p.outstanding > 0 for p in self.peers.values()):
            if time.monotonic() > deadline:
                return False
            self.poll(50)
            for peer in list(self.peers.values()):
                if peer.outstanding > 0 and time.monotonic() - max(start, peer.granted_at) > self.timeout_s:
                    self._drop(peer, "gone while draining")
        return True
