"""A producer's side of its shared-memory ring: rings per frame size, writing frames and announcing them,
knowing what the worker took and released, and re-announcing what a restarted worker never published."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Literal

from ..ipc.notices import FrameNotice, OpenNotice
from ..ipc.ring import FrameRing
from .decode import DecodedFrame
from .outbox import Outbox
from .pacer import Pacer

__all__ = ["RingWriter"]

log = logging.getLogger(__name__)


class RingWriter:
    """``dropped``: the stream's drop count so far (for the frame notices)."""

    def __init__(self, stream_id: str, shm_prefix: str, slots: int, policy: Literal["file", "live"],
                 outbox: Outbox, stop: Event, pacer: Pacer, dropped: Callable[[], int], attempt: int = 0) -> None:
        self.stream_id, self.shm_prefix, self.slots, self.policy = stream_id, shm_prefix, slots, policy
        self.outbox, self.stop, self.pacer, self.dropped = outbox, stop, pacer, dropped
        self.ring: FrameRing | None = None
        # a restarted producer names its rings and numbers its frames apart from its predecessor's
        self.attempt = attempt
        self.generation = attempt * 1000
        self.seq = attempt << 32  # frames written into the ring (the worker's notices)
        self.ring_dropped = 0  # overwritten in the ring (live; only when the worker lost track of a frame)
        self.outstanding: tuple[int, int] | None = None  # (slot, seq) announced, not yet taken by the worker
        self.notices: dict[int, FrameNotice] = {}  # slot -> the notice of the frame it holds
        self.replace = False  # the next frame written takes the place of the outstanding one (live)
        self.replaced = 0  # frames that took the place of one announced and not taken (counted in ring_dropped)

    @property
    def written(self) -> int:
        """Frames this producer wrote into its rings."""
        return self.seq - (self.attempt << 32) - self.replaced

    def _ring_for(self, shape: tuple[int, int, int]) -> FrameRing:
        if self.ring is not None and self.ring.spec.shape_hwc == shape:
            return self.ring
        if self.ring is not None:  # a new frame size: a new ring, once the worker is done with the old one
            self.retire(self.ring, timeout_s=10.0)
        self.generation += 1
        name = f"{self.shm_prefix}{self.stream_id}-{self.generation}"
        self.ring = FrameRing.create(name, self.slots, shape)
        self.outbox.notify(OpenNotice(self.stream_id, self.ring.spec))
        return self.ring

    def retire(self, ring: FrameRing, timeout_s: float | None = None) -> None:
        """Remove ``ring`` once the worker released every frame in it. A ring it may still have to attach
        to (the run stopped, or the worker is late) is left in place: the supervisor removes every
        segment of the run once all its processes have exited."""
        if self._drained(ring, timeout_s):
            ring.close()
        else:
            log.debug("leaving %s to the supervisor", ring.spec.name)

    def _drained(self, ring: FrameRing, timeout_s: float | None = None) -> bool:
        """Wait until the worker has released every frame of ``ring`` (False: stop, or the timeout)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.stop.is_set():
            if ring.all_released():
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.outbox.tick()
            time.sleep(0.005)
        return False

    def write(self, frame: DecodedFrame, index: int) -> bool:
        """Put one frame (frame index ``index``) into the ring and tell the worker; False when the run
        stopped meanwhile."""
        ring = self._ring_for(frame.frame_rgb.shape)
        got = self._replacing(ring)
        while got is None and not self.stop.is_set():
            got = ring.acquire(self.policy, timeout_s=0.1)
            if got is None and self.policy == "live":
                break
            self.outbox.tick()
        if got is None:
            if self.stop.is_set():
                return False
            self.ring_dropped += 1  # live: every slot is being read, drop the new frame
            return True
        slot, dropped_seq = got
        if dropped_seq >= 0:
            self.ring_dropped += 1
        ring.write(slot, self.seq, frame.frame_rgb)
        notice = FrameNotice(self.stream_id, slot, self.seq, index, frame.pts_s, frame.t_capture_ns,
                             frame.t_decode_ns, self.dropped(), frame.damaged)
        self.notices[slot] = notice
        if self.policy == "live":
            self._read_cycle(ring)
            self.pacer.announced()
        self.outbox.notify(notice)
        self.outstanding = (slot, self.seq)
        self.seq += 1
        return True

    def _replacing(self, ring: FrameRing) -> tuple[int, int] | None:
        """Live, paced by the worker: the slot of the frame announced and not yet claimed, for the newer frame
        to take its place (the worker, finding the first notice's frame gone, takes the second)."""
        replace, self.replace = self.replace, False
        if not replace or self.outstanding is None:
            return None
        slot, seq = self.outstanding
        if self.ring is not ring or not ring.unclaimed(slot, seq):
            return None  # claimed meanwhile: the new frame is the next one
        self.replaced += 1
        return slot, seq

    def _read_cycle(self, ring: FrameRing) -> None:
        """The worker's batch cycle, as it wrote it into the ring's header, to the pacer."""
        submitted_ns, due_ns, cycle_ns = ring.worker_cycle()
        self.pacer.worker_cycle(submitted_ns / 1e9, due_ns / 1e9, cycle_ns / 1e9)

    def taken(self) -> bool:
        """Has the worker taken (claimed, released or lost) the last frame we told it about? (Live: also
        tells the pacer the worker's cycle.)"""
        self.replace = self.pacer.replace = False
        if self.ring is not None and self.policy == "live":
            self._read_cycle(self.ring)
        if self.outstanding is None or self.ring is None:
            return True
        slot, seq = self.outstanding
        if self.ring.taken(slot, seq):
            self.outstanding = None
            self.pacer.taken(time.monotonic())
            return True
        if self.policy == "live" and self.pacer.may_replace():
            # not taken yet, and the worker paces us: a newer frame may take its place (see Pacer)
            self.replace = self.pacer.replace = True
            return True
        return False

    def reannounce(self) -> int:
        """A restarted worker: the ring, then every frame still in it (in order: the dead worker never
        published them); how many frames."""
        ring = self.ring
        if ring is None:
            return 0
        resent = 0
        ring.reset_claims()
        self.outbox.send_frames(OpenNotice(self.stream_id, ring.spec))
        for slot in ring.unreleased():
            notice = self.notices.get(slot)
            if notice is not None and notice.seq == ring.frame_seq(slot):
                self.outbox.send_frames(notice)
                resent += 1
        return resent

    def close(self) -> None:
        if self.ring is not None:
            self.retire(self.ring)
