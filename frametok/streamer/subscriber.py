"""The subscriber SDK: iterate typed messages from a frametok publisher.

>>> with Subscriber("tcp://127.0.0.1:5555", streams=["cam0"]) as sub:   # doctest: +SKIP
...     for msg in sub:
...         if isinstance(msg, TokenPacket):
...             print(msg.frame_index, len(msg.detections))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..errors import ProtocolError
from ..packet import EndOfStream, Message, StreamInfo, TokenPacket, decode, topic_for

__all__ = ["GapReport", "Subscriber"]

log = logging.getLogger(__name__)


@dataclass
class GapReport:
    """Messages of one stream that never arrived: how many, and after which sequence numbers."""

    missing: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (last seq seen, next seq seen)


class Subscriber:
    """A SUB socket that yields decoded messages and counts what went wrong instead of hiding it.

    ``streams``: stream ids to receive (None: all). ``strict``: raise :class:`ProtocolError` on a
    malformed message instead of logging, counting and skipping it. Iteration ends when every
    stream seen has sent its end-of-stream (``until_eos``), or on ``timeout_s`` of silence.
    """

    def __init__(
        self,
        endpoint: str,
        streams: Iterable[str] | None = None,
        *,
        strict: bool = False,
        rcvhwm: int = 1000,
        timeout_s: float | None = None,
        until_eos: bool = True,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.strict = strict
        self.timeout_s = timeout_s
        self.until_eos = until_eos
        self.streams = None if streams is None else list(streams)
        self.infos: dict[str, StreamInfo] = {}
        self.gaps: dict[str, GapReport] = {}
        self.malformed = 0
        self.received = 0
        self._last_seq: dict[str, int] = {}
        self._ended: set[str] = set()
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        for topic in [b""] if self.streams is None else [topic_for(s) for s in self.streams]:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)

    # ------------------------------------------------------------------ state

    @property
    def ended(self) -> set[str]:
        return set(self._ended)

    def class_names(self, stream_id: str) -> list[str]:
        info = self.infos.get(stream_id)
        return info.class_names() if info else []

    def _all_ended(self) -> bool:
        expected = set(self.streams) if self.streams is not None else set(self._last_seq)
        return bool(expected) and expected <= self._ended

    def _track(self, msg: Message) -> None:
        sid = msg.stream_id
        last = self._last_seq.get(sid)
        if last is not None and msg.seq > last + 1:
            report = self.gaps.setdefault(sid, GapReport())
            report.missing += msg.seq - last - 1
            report.gaps.append((last, msg.seq))
        elif last is not None and msg.seq <= last:
            log.info("stream %s restarted its sequence (%d after %d)", sid, msg.seq, last)
        self._last_seq[sid] = msg.seq
        if isinstance(msg, StreamInfo):
            self.infos[sid] = msg
        elif isinstance(msg, EndOfStream):
            self._ended.add(sid)
        elif sid in self._ended and isinstance(msg, TokenPacket):
            self._ended.discard(sid)  # the stream started again

    # ------------------------------------------------------------------ receiving

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next valid message, or None after ``timeout_s`` without one (None: wait forever)."""
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        while True:
            if not self.socket.poll(timeout_ms):
                return None
            parts = self.socket.recv_multipart(copy=False)
            try:
                msg = decode(parts)
            except ProtocolError as exc:
                self.malformed += 1
                if self.strict:
                    raise
                log.warning("skipping malformed message (%d so far): %s", self.malformed, exc)
                continue
            self.received += 1
            self._track(msg)
            return msg

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
        self.socket.close(0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
