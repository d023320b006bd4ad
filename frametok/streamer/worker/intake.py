"""What the worker does with each notice from its producers and the supervisor: frames into the batch,
rings attached, status relayed, ends recorded, and the bookkeeping of producer and worker restarts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ...packet import STATUS_STATES, StatusMessage
from ..delivery.feed import HubFeed
from ..ipc.notices import EndNotice, FrameNotice, LostNotice, OpenNotice, ResumeNotice, StatusNotice
from ..ipc.ring import FrameRing
from .lane import Batch
from .streams import StreamState

__all__ = ["Intake"]

log = logging.getLogger(__name__)

_TRACK_RESET_STATES = frozenset({"reconnecting", "offline"})


class Intake:
    """Applies notices to the streams' state; ``load`` pre-processes a frame into a batch."""

    def __init__(self, streams: dict[str, StreamState], resuming: set[str], publisher: HubFeed,
                 load: Callable[[FrameNotice, Batch], None], event: Callable[..., None]) -> None:
        self.streams, self.resuming, self.publisher = streams, resuming, publisher
        self.load, self.event = load, event

    def handle(self, notice: Any, batch: Batch) -> None:
        if self._restart_notice(notice):
            return
        if isinstance(notice, FrameNotice):
            self.load(notice, batch)
        elif isinstance(notice, OpenNotice):
            st = self.streams[notice.stream_id]
            if st.ring is not None:
                st.ring.close()
                st.ring = None
            try:
                st.ring = FrameRing.attach(notice.ring)
            except (FileNotFoundError, ValueError) as exc:
                # the producer already retired that ring (it reopened its source again): a newer
                # OpenNotice follows; until then this stream's frame notices find no ring
                log.warning("stream %s: cannot attach ring %s: %s", notice.stream_id, notice.ring.name, exc)
        elif isinstance(notice, StatusNotice):
            st = self.streams[notice.stream_id]
            if notice.state in _TRACK_RESET_STATES and st.tracker is not None:
                st.reset_tracker = True  # what follows a reconnect is not the same scene; ids are not reused
            self.publisher.publish(StatusMessage(notice.stream_id, notice.state, notice.detail, notice.t_ns))  # type: ignore[arg-type]
        elif isinstance(notice, EndNotice):
            batch.ends.append(notice)
        else:  # pragma: no cover - only our own processes write here
            log.warning("ignoring unknown notice %r", notice)

    def _restart_notice(self, notice: Any) -> bool:
        """Restarts: True when ``notice`` was handled here (or is stale and dropped)."""
        sid = getattr(notice, "stream_id", None)
        if isinstance(notice, LostNotice):  # the producer died: its ring goes, a new producer goes on
            st = self.streams[notice.stream_id]
            self.resuming.discard(notice.stream_id)  # the new producer starts afresh
            if st.ring is not None:
                st.ring.close()
                st.ring = None
            st.reset_tracker = st.tracker is not None
            self.publisher.publish(StatusMessage(notice.stream_id, "reconnecting", notice.detail, time.time_ns()))
            self.event("stream_lost", stream=notice.stream_id, last_frame=st.last_frame, packets=st.published)
            return True
        if isinstance(notice, ResumeNotice):
            if sid in self.resuming:
                self.resuming.discard(sid)
                if notice.state in STATUS_STATES:
                    self.publisher.publish(StatusMessage(notice.stream_id, notice.state,  # type: ignore[arg-type]
                                                         "resumed after a worker restart", time.time_ns()))
            return True
        # meant for the worker that died: the producer announces it all again after its resume
        return sid in self.resuming or (sid in self.streams and self.streams[sid].ended)
