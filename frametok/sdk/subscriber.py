"""The subscriber SDK: iterate typed messages from a frametok publisher.

Two delivery modes: ``live`` (SUB socket on the publisher's ``endpoint``: a slow subscriber loses
messages, counted as gaps, and never slows the pipeline) and ``lossless`` (DEALER socket on its
``lossless_endpoint``: credit-based flow control, a slow subscriber slows the pipeline instead).

>>> with Subscriber("tcp://127.0.0.1:5555", streams=["cam0"]) as sub:   # doctest: +SKIP
...     for msg in sub:
...         if isinstance(msg, TokenPacket):
...             print(msg.frame_index, len(msg.detections))
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import zmq

from ..errors import ProtocolError
from ..grid import GridDecompressor
from ..keys import client_curve
from ..packet import (
    Message,
    StreamInfo,
    TokenPacket,
    decode,
    topic_for,
)
from .lossless import CreditClient
from .sequence import GapReport, SequenceTracker

__all__ = ["GapReport", "Subscriber"]

log = logging.getLogger(__name__)


class Subscriber:
    """Yields decoded messages and counts what went wrong instead of hiding it.

    ``streams``: stream ids to receive (None: all). ``mode``: ``live`` or ``lossless`` (then
    ``endpoint`` is the publisher's lossless endpoint and ``credit`` the number of messages it may
    send ahead). ``strict``: raise :class:`ProtocolError` on a malformed message instead of logging,
    counting and skipping it. Iteration ends when every stream seen has sent its end-of-stream
    (``until_eos``), or on ``timeout_s`` of silence. ``curve_secret_key``/``curve_server_key``: key
    files (from ``frametok keys``) for a publisher that requires CURVE.
    """

    def __init__(
        self,
        endpoint: str,
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
        self.endpoint = endpoint
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
        topics = [b""] if self.streams is None else [topic_for(s) for s in self.streams]
        self.socket = self._ctx.socket(zmq.SUB if mode == "live" else zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0 if mode == "live" else 1000)
        if curve_secret_key is not None or curve_server_key is not None:
            if curve_secret_key is None or curve_server_key is None:
                raise ValueError("CURVE needs both curve_secret_key and curve_server_key")
            client_curve(self.socket, curve_secret_key, curve_server_key)
        if mode == "live":
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
            for topic in topics:
                self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        else:
            self.socket.setsockopt(zmq.RCVHWM, 0)  # bounded by the credit window
        self.socket.connect(endpoint)
        self._credit: CreditClient | None = None
        if mode == "lossless":
            self._credit = CreditClient(self.socket, self.streams, credit, heartbeat_s)
            self._credit.hello()

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
        """Rebuild the full patch grid from a keyframe or delta, or yield none while out of sync."""
        update = msg.grid_update
        if update is None:
            return msg
        grid = self._grids.setdefault(msg.stream_id, GridDecompressor()).apply(update)
        if grid is None:
            self.unsynced += 1
            self._ask_keyframe(msg.stream_id)
        if grid is msg.patch_tokens:
            return msg
        return replace(msg, patch_tokens=grid)

    def _ask_keyframe(self, stream_id: str, every_s: float = 1.0) -> None:
        """Ask the publisher for a whole grid: re-subscribing (live) or a KEY command (lossless)."""
        now = time.monotonic()
        if now - self._key_asked.get(stream_id, -every_s) < every_s:
            return
        self._key_asked[stream_id] = now
        if self._credit is not None:
            self._credit.ask_keyframe(stream_id)
        else:
            # A subscription reaches the publisher's XPUB (which then sends a keyframe) even when it
            # repeats one we hold; removing it again leaves what we receive as it was.
            topic = topic_for(stream_id)
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
            self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)

    # ------------------------------------------------------------------ receiving

    def _poll(self, timeout_ms: int | None) -> bool:
        if self._credit is None:
            return bool(self.socket.poll(timeout_ms))
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            step = int(self.heartbeat_s * 1000)
            if deadline is not None:
                step = max(0, min(step, int((deadline - time.monotonic()) * 1000)))
            if self.socket.poll(step):
                return True
            self._credit.idle()
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _decode(self, parts: Any) -> Message | None:
        if self._credit is not None:
            self._credit.consumed()
        try:
            return decode(parts)
        except Exception as exc:  # ProtocolError; anything else is a decoder bug, still not fatal
            self.malformed += 1
            if self.strict:
                if isinstance(exc, ProtocolError):
                    raise
                raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc
            log.warning("skipping malformed message (%d so far): %s", self.malformed, exc)
            return None

    def _reorder(self, first_new: Message) -> Message:
        """The publisher restarted (a new worker numbers from 0 again): messages of the dead one that were
        already here may still be queued on its connection, and the socket takes turns between
        connections. Everything queued now is taken, and the dead publisher's messages (continuing its
        sequence) go first, so that its last frames keep their order and their grids."""
        drained = [first_new]
        while True:
            try:
                parts = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(parts)
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
                try:  # a message already waiting needs no poll (the common case under load)
                    parts = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    if not self._poll(timeout_ms):
                        return None
                    continue
                msg = self._decode(parts)
                if msg is None:
                    continue
                if self._seq.restarted(msg):
                    msg = self._reorder(msg)
            assert msg is not None
            self.received += 1
            if not self._seq.track(msg):
                if isinstance(msg, TokenPacket):
                    self._rebuild(msg)  # a redone frame is not yielded twice, but its grid update counts
                continue
            if isinstance(msg, TokenPacket):
                msg = self._rebuild(msg)
            return msg

    def __iter__(self) -> Iterator[Message]:
        while not (self.until_eos and self._seq.all_ended(self.streams)):
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
        if self._credit is not None:
            self._credit.grant()
            self._credit.bye()
        self.socket.close()
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
