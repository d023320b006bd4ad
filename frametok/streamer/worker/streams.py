"""Per-stream state in the worker: its ring, soft-token and tracker state, what it published."""

from __future__ import annotations

from dataclasses import dataclass

from ...models.tracking import Tracker
from ...packet import Detections
from ..ipc.notices import WorkerResume
from ..ipc.ring import FrameRing
from .models import LoadedModels
from .motion import MotionGate
from .tokens import SoftTokenStream

__all__ = ["StreamState", "make_streams"]


@dataclass
class StreamState:
    stream_id: str
    policy: str
    ring: FrameRing | None = None
    soft: SoftTokenStream | None = None
    tracker: Tracker | None = None
    published: int = 0
    dropped: int = 0
    discarded: int = 0
    ended: bool = False
    last_frame: int = -1  # the frame index of the last packet published
    reset_tracker: bool = False  # the stream reconnected: its next frame starts the tracker afresh
    motion: MotionGate | None = None  # motion gating (None: off): still frames re-send the last tokens
    last_detections: Detections | None = None  # what the detector found in the last frame it ran on (untracked)


def make_streams(models: LoadedModels, resume: WorkerResume | None) -> tuple[dict[str, StreamState], set[str]]:
    """The state of every configured stream, and (a restarted worker) those whose producer must resume."""
    config = models.config
    ec = config.encoder
    streams = {
        s.id: StreamState(s.id, s.effective_policy,
                          soft=SoftTokenStream(ec, models.queries) if (models.encoder or models.neck) and ec else None,
                          tracker=models.tracker(s.fps),
                          motion=MotionGate(s.effective_motion_threshold)
                          if s.effective_motion_threshold and not (s.kind == "images" and not s.sequence) else None)
        for s in config.sources
    }
    resuming: set[str] = set()
    if resume is not None:
        for sid, st in streams.items():
            st.published = resume.packets.get(sid, 0)
            st.last_frame = resume.last_frames.get(sid, -1)
            st.ended = sid in resume.ended
            if not st.ended:
                resuming.add(sid)
    return streams, resuming
