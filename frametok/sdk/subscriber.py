"""The subscriber SDK: iterate typed messages from a frametok publisher.

Two delivery modes: ``live`` (SUB socket on the publisher's ``endpoint``: a slow subscriber loses
messages, counted as gaps, and never slows the pipeline) and ``lossless`` (DEALER socket on its
``lossless_endpoint``: credit-based flow control, a slow subscriber slows the pipeline instead).
A subscriber may read several publishers at once (say one ``frametok run`` per host): a connection
each, taken in turn; a stream id announced by two of them is an error naming both.

>>> with Subscriber("tcp://127.0.0.1:5555", streams=["cam0"]) as sub:   # doctest: +SKIP
...     for msg in sub:
...         if isinstance(msg, TokenPacket):
...             print(msg.frame_index, len(msg.detections))
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import zmq

from ..errors import ConfigError, ProtocolError
from ..grid import GridDecompressor
from ..packet import (
    Message,
    StreamInfo,
    TokenPacket,
    decode,
)
from .links import Connections, Link
from .sequence import GapReport, SequenceTracker

__all__ = ["GapReport", "Subscriber"]

log = logging.getLogger(__name__)


class Subscriber:
    """Yields decoded messages and counts what went wrong instead of hiding it.

    ``endpoint``: a publisher endpoint, or a list of them (streams are unique across publishers).
    ``streams``: stream ids to receive (None: all). ``mode``: ``live`` or ``lossless`` (then
    ``endpoint`` is the publisher's lossless endpoint and ``credit`` the number of messages it may
    send ahead). ``strict``: raise :class:`ProtocolError` on a malformed message instead of logging,
    counting and skipping it. Iteration ends when every stream wanted (None: every stream seen, and every
    stream a publisher's info announces) has sent its end-of-stream (``until_eos``), or on ``timeout_s`` of
    silence. ``curve_secret_key``/``curve_server_key``: key
    files (from ``frametok keys``) for a publisher that requires CURVE.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        streams: Iterable[str] | None = None,
        *,
        mode: Literal["live", "lossless"] = "live",
        strict: bool = False,
        rcvhwm: int = 64,
        credit: int = 64,
        timeout_s: float | None = None,
        until_eos: bool = True,
        curve_secret_key: str | Path | None = None,
        curve_server_key: str | Path | None = None,
        heartbeat_s: float = 1.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if mode not in ("live", "lossless"):
            raise ValueError(f"mode: expected 'live' or 'lossless', got {mode!r}")
        if credit < 1:
            raise ValueError(f"credit: expected >= 1, got {credit}")
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not self.endpoints:
            raise ValueError("endpoint: expected at least one publisher endpoint")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"endpoint: {self.endpoints} names an endpoint twice")
        self.endpoint = self.endpoints[0]
        self.mode = mode
        self.strict = strict
        self.timeout_s = timeout_s
        self.until_eos = until_eos
        self.credit = credit
        self.heartbeat_s = heartbeat_s
        self.streams = None if streams is None else list(streams)
        self._seq = SequenceTracker()
        self.infos: dict[str, StreamInfo] = self._seq.infos
        self.gaps: dict[str, GapReport] = self._seq.gaps
        self.malformed = 0
        self.received = 0
        self._grids: dict[str, GridDecompressor] = {}
        self._key_asked: dict[str, float] = {}
        self.unsynced = 0  # frame packets yielded without a grid: out of sync, waiting for a keyframe
        self._pending: deque[Message] = deque()  # taken from the socket already, in the order to yield
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._links: list[Link] = []
        try:
            for ep in self.endpoints:
                self._links.append(Link(self._ctx, ep, mode, self.streams, rcvhwm=rcvhwm, credit=credit,
                                        heartbeat_s=heartbeat_s, curve_secret_key=curve_secret_key,
                                        curve_server_key=curve_server_key))
        except BaseException:
            self.close()
            raise
        self._owner: dict[str, Link] = {}  # stream id -> the connection it arrives on
        self._connections = Connections(self._links, heartbeat_s)

    def endpoint_of(self, stream_id: str) -> str | None:
        """The endpoint of the publisher ``stream_id`` arrives from (None: not seen yet)."""
        link = self._owner.get(stream_id)
        return link.endpoint if link is not None else None

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The socket of the first endpoint."""
        return self._links[0].socket

    # ------------------------------------------------------------------ state

    @property
    def ended(self) -> set[str]:
        return set(self._seq.ended)

    @property
    def duplicates(self) -> int:
        """Frame packets skipped: seen already (redone by a restarted worker)."""
        return self._seq.duplicates

    def class_names(self, stream_id: str) -> list[str]:
        info = self.infos.get(stream_id)
        return info.class_names() if info else []

    # ------------------------------------------------------------------ patch grids

    def _rebuild(self, msg: TokenPacket) -> TokenPacket:
        """Rebuild the full patch grid (and (1.2) the code grid) from a keyframe or delta, or yield none while
        out of sync."""
        update = msg.grid_update
        if update is None:
            return msg
        decompressor = self._grids.setdefault(msg.stream_id, GridDecompressor())
        grid = decompressor.apply(update)
        if grid is None:
            self.unsynced += 1
            self._ask_keyframe(msg.stream_id)
        codes = decompressor.code_grid() if decompressor.codes_seen else None
        if grid is msg.patch_tokens and codes is None and msg.code_grid is None:
            return msg
        return replace(msg, patch_tokens=grid, code_grid=codes)

    def _ask_keyframe(self, stream_id: str, every_s: float = 1.0) -> None:
        """Ask the publisher for a whole grid: re-subscribing (live) or a KEY command (lossless)."""
        now = time.monotonic()
        if now - self._key_asked.get(stream_id, -every_s) < every_s:
            return
        self._key_asked[stream_id] = now
        owner = self._owner.get(stream_id)
        for link in [owner] if owner is not None else self._links:
            link.ask_keyframe(stream_id)

    # ------------------------------------------------------------------ receiving

    def _decode(self, link: Link, parts: Any) -> Message | None:
        if link.credit is not None:
            link.credit.consumed()
        try:
            msg = decode(parts)
        except Exception as exc:  # ProtocolError; anything else is a decoder bug, still not fatal
            self.malformed += 1
            if self.strict:
                if isinstance(exc, ProtocolError):
                    raise
                raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc
            log.warning("skipping malformed message (%d so far): %s", self.malformed, exc)
            return None
        owner = self._owner.setdefault(msg.stream_id, link)
        if owner is not link:
            raise ConfigError(f"stream {msg.stream_id!r} is published by both {owner.endpoint} and "
                              f"{link.endpoint}: stream ids must be unique across the publishers read together")
        return msg

    def _reorder(self, link: Link, first_new: Message) -> Message:
        """The publisher restarted (a new worker numbers from 0 again): messages of the dead one that were
        already here may still be queued on its connection, and the socket takes turns between
        connections. Everything queued now is taken, and the dead publisher's messages (continuing its
        sequence) go first, so that its last frames keep their order and their grids."""
        drained = [first_new]
        while (parts := link.recv_nowait()) is not None:
            msg = self._decode(link, parts)
            if msg is not None:
                drained.append(msg)
        old_next = {sid: seq + 1 for sid, seq in self._seq.last_seq.items()}
        old: list[Message] = []
        new: list[Message] = []
        for msg in drained:
            if msg is not first_new and old_next.get(msg.stream_id) == msg.seq:
                old.append(msg)
                old_next[msg.stream_id] += 1
            else:
                new.append(msg)
        self._pending.extend(old + new)
        return self._pending.popleft()

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next valid message, or None after ``timeout_s`` without one (None: wait forever)."""
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        while True:
            if self._pending:
                msg: Message | None = self._pending.popleft()
            else:
                taken = self._connections.next(timeout_ms)
                if taken is None:
                    return None
                link, parts = taken
                msg = self._decode(link, parts)
                if msg is None:
                    continue
                if self._seq.restarted(msg):
                    msg = self._reorder(link, msg)
            assert msg is not None
            self.received += 1
            if not self._seq.track(msg):
                if isinstance(msg, TokenPacket):
                    self._rebuild(msg)  # a redone frame is not yielded twice, but its grid update counts
                continue
            if isinstance(msg, TokenPacket):
                msg = self._rebuild(msg)
            return msg

    def _all_ended(self) -> bool:
        """Every stream wanted (or seen or announced, and at least one from each publisher) has ended."""
        if self.streams is not None:
            return self._seq.all_ended(self.streams)
        if len(set(self._owner.values())) < len(self._links):
            return False
        # (1.2) each info names every stream its publisher serves: wait for the eos of those not seen yet too
        announced = {sid for info in self.infos.values() for sid in info.streams or ()}
        return self._seq.all_ended(sorted(announced | set(self._seq.last_seq)))

    def __iter__(self) -> Iterator[Message]:
        while not (self.until_eos and self._all_ended()):
            msg = self.recv(self.timeout_s)
            if msg is None:
                return
            yield msg

    def packets(self) -> Iterator[TokenPacket]:
        """Only the frame packets."""
        for msg in self:
            if isinstance(msg, TokenPacket):
                yield msg

    def close(self) -> None:
        for link in getattr(self, "_links", []):
            link.close()
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
