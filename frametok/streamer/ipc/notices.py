"""Small control notices between pipeline processes (pixels never travel here: they are in the ring)."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from .ring import RingSpec

__all__ = [
    "EndNotice", "EventNotice", "FrameNotice", "LostNotice", "OpenNotice", "ResumeNotice", "RunContext",
    "StatusNotice", "WorkerResume", "die_with_parent", "set_process_name",
]


def set_process_name(name: str) -> None:
    """Name this process for ps/top (Linux ``prctl(PR_SET_NAME)``; 15 bytes; a no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15] + b"\0", 0, 0, 0)
    except (OSError, AttributeError):
        pass

def die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it exits (``PR_SET_PDEATHSIG``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the supervisor died before we got here
        os._exit(1)


@dataclass(frozen=True)
class RunContext:
    """Where a run's processes find each other: ipc endpoints and the shared-memory name prefix."""

    run_id: str
    frames_endpoint: str
    events_endpoint: str
    shm_prefix: str
    hub_endpoint: str = ""  # workers -> the run's publisher process
    workers: int = 1  # worker processes in the run


@dataclass(frozen=True)
class OpenNotice:
    """A producer (re)created its ring: the worker attaches to ``ring``."""

    stream_id: str
    ring: RingSpec


@dataclass(frozen=True)
class FrameNotice:
    """Frame ``seq`` of a stream is ready in ``slot`` of its ring."""

    stream_id: str
    slot: int
    seq: int
    frame_index: int
    pts_s: float | None
    t_capture_ns: int
    t_decode_ns: int
    dropped: int
    damaged: bool = False  # the source's data for this frame was damaged (packets' ``damaged`` flag)


@dataclass(frozen=True)
class StatusNotice:
    stream_id: str
    state: str
    detail: str
    t_ns: int


@dataclass(frozen=True)
class EndNotice:
    """The producer sent its last frame (``reason``: end, error, stopped)."""

    stream_id: str
    frames: int
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ResumeNotice:
    """A producer's first word to a restarted worker: what follows (its ring, the frames still in it, its
    end) is current; anything of the stream before it was meant for the worker that died."""

    stream_id: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class LostNotice:
    """Supervisor -> worker: the stream's producer died; forget its ring and say the last frame published."""

    stream_id: str
    detail: str = ""


@dataclass(frozen=True)
class WorkerResume:
    """What a restarted worker is told: why, which streams already ended, how many packets each stream had
    published, and how many subscribers to wait for (up to the lossless timeout) before going on."""

    attempt: int
    detail: str
    ended: frozenset[str] = frozenset()
    packets: dict[str, int] = field(default_factory=dict)
    live_subscriptions: int = 0
    lossless_subscribers: int = 0
    last_frames: dict[str, int] = field(default_factory=dict)  # stream -> frame index last published


@dataclass(frozen=True)
class EventNotice:
    """Worker/producer -> supervisor: ready, failed, progress, stream_end, done."""

    source: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)
