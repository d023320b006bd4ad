"""Following each stream's sequence numbers on the subscriber side: gaps, publisher restarts, frames
redone by a restarted worker (not yielded twice), stream info and ends."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..packet import EndOfStream, Message, StreamInfo, TokenPacket

__all__ = ["GapReport", "SequenceTracker"]

log = logging.getLogger(__name__)


@dataclass
class GapReport:
    """Messages of one stream that never arrived: how many, between which sequence numbers, and
    which frames they may have held."""

    missing: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (last seq seen, next seq seen)
    frames: list[tuple[int, int]] = field(default_factory=list)  # first..last frame index that may be lost


class SequenceTracker:
    def __init__(self) -> None:
        self.infos: dict[str, StreamInfo] = {}
        self.gaps: dict[str, GapReport] = {}
        self.duplicates = 0  # frame packets skipped: seen already (redone by a restarted worker)
        self.last_seq: dict[str, int] = {}
        self.last_frame: dict[str, int] = {}
        self.ended: set[str] = set()
        self._resumed: set[str] = set()  # streams whose publisher restarted, until a new frame arrives

    def all_ended(self, streams: list[str] | None) -> bool:
        expected = set(streams) if streams is not None else set(self.last_seq)
        return bool(expected) and expected <= self.ended

    def restarted(self, msg: Message) -> bool:
        """Does ``msg`` number from a new publisher (its seq not past the last one, the stream running)?"""
        last = self.last_seq.get(msg.stream_id)
        return last is not None and msg.seq <= last and msg.stream_id not in self.ended

    def track(self, msg: Message) -> bool:
        """Follow the stream's sequence; False for a packet to skip: a frame seen already (a restarted
        worker may redo a frame published just before its predecessor died)."""
        sid = msg.stream_id
        last = self.last_seq.get(sid)
        if self.restarted(msg):
            self._resumed.add(sid)  # a new publisher (restarted worker) numbers from 0 again
        if isinstance(msg, TokenPacket) and sid in self._resumed:
            if msg.frame_index <= self.last_frame.get(sid, -1):
                self.last_seq[sid] = msg.seq
                self.duplicates += 1
                return False
            self._resumed.discard(sid)
        if last is not None and msg.seq > last + 1:
            report = self.gaps.setdefault(sid, GapReport())
            report.missing += msg.seq - last - 1
            report.gaps.append((last, msg.seq))
            first = self.last_frame.get(sid, -1) + 1
            if isinstance(msg, TokenPacket) and msg.frame_index > first:
                report.frames.append((first, msg.frame_index - 1))
        elif last is not None and msg.seq <= last:
            log.info("stream %s restarted its sequence (%d after %d)", sid, msg.seq, last)
        self.last_seq[sid] = msg.seq
        if isinstance(msg, TokenPacket):
            self.last_frame[sid] = msg.frame_index
        if isinstance(msg, StreamInfo):
            self.infos[sid] = msg
        elif isinstance(msg, EndOfStream):
            self.ended.add(sid)
        elif sid in self.ended and isinstance(msg, TokenPacket):
            self.ended.discard(sid)  # the stream started again
        return True
