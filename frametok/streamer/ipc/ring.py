"""A per-source ring of frame slots in shared memory, with no cross-process lock.

Each slot has a small header row in the segment, every field written by one process only:

* ``version`` and ``frame_seq`` by the producer: ``version`` is odd while it writes pixels
  (a seqlock), ``frame_seq`` is the sequence number of the frame the slot holds (-1: never used);
* ``claimed_seq`` and ``released_seq`` by the worker: the frame it started reading, and the
  frame it finished with.

After the slot rows, one row written by the worker only: its batch cycle (``submitted_ns``, when it
started the models on the batch now running, CLOCK_MONOTONIC ns, which every process of a host shares;
``due_ns``, when it expects them to finish and to take the next frames; ``cycle_ns``, what a batch takes
it). A live producer's pacer reads it to announce its frame just before the worker is due.

A slot is free when it was never used or its frame was released. Under the ``live`` policy the
producer may overwrite a ready frame the worker has not claimed (newest frame wins); the worker
checks ``version`` after reading and discards a frame that changed under it. No lock is held
across processes, so a killed process can never leave the other one blocked on it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["FrameRing", "RingSpec"]

_VERSION, _FRAME_SEQ, _CLAIMED, _RELEASED = range(4)
_HEADER_FIELDS = 4
_SUBMITTED, _DUE, _CYCLE = range(3)  # the worker's row
_ALIGN = 64


@dataclass(frozen=True)
class RingSpec:
    """What a worker needs to attach to a ring: its segment name, slot count and frame shape."""

    name: str
    slots: int
    shape_hwc: tuple[int, int, int]

    @property
    def slot_bytes(self) -> int:
        h, w, c = self.shape_hwc
        return h * w * c

    @property
    def header_bytes(self) -> int:
        raw = (self.slots + 1) * _HEADER_FIELDS * 8  # the slots' rows, then the worker's
        return (raw + _ALIGN - 1) // _ALIGN * _ALIGN

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + self.slots * self.slot_bytes


class _Segment:
    """A named POSIX shared-memory segment, mapped; never registered with multiprocessing's tracker.

    (``multiprocessing.shared_memory`` on Python < 3.13 registers every attach with a resource
    tracker shared by all processes of a run, which then unlinks or double-unregisters segments
    it does not own. The ring's owner unlinks explicitly and the supervisor sweeps after crashes.)
    """

    def __init__(self, name: str, size: int | None) -> None:
        import _posixshmem  # the C module behind multiprocessing.shared_memory

        self.name = name
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if size is not None else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if size is not None:
                os.ftruncate(fd, size)
            self.size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, self.size)
        except BaseException:
            if size is not None:
                _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a live numpy view keeps it mapped until collected
            self.map.close()

    def unlink(self) -> None:
        import _posixshmem

        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + self.name)


class FrameRing:
    """A ring of ``slots`` frames of ``shape_hwc`` uint8 in one shared-memory segment."""

    def __init__(self, spec: RingSpec, shm: _Segment, owner: bool) -> None:
        self.spec = spec
        self._shm: _Segment | None = shm
        self._owner = owner
        buf = shm.map
        self.header: NDArray[np.int64] = np.ndarray((spec.slots, _HEADER_FIELDS), np.int64, buf, 0)
        self.cycle_row: NDArray[np.int64] = np.ndarray(
            (_HEADER_FIELDS,), np.int64, buf, spec.slots * _HEADER_FIELDS * 8)
        self.frames: NDArray[np.uint8] = np.ndarray((spec.slots, *spec.shape_hwc), np.uint8, buf, spec.header_bytes)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, name: str, slots: int, shape_hwc: tuple[int, int, int]) -> FrameRing:
        spec = RingSpec(name, slots, shape_hwc)
        ring = cls(spec, _Segment(name, spec.total_bytes), owner=True)
        ring.header[:] = -1
        ring.header[:, _VERSION] = 0
        ring.cycle_row[:] = 0
        return ring

    @classmethod
    def attach(cls, spec: RingSpec) -> FrameRing:
        shm = _Segment(spec.name, None)
        if shm.size < spec.total_bytes:
            shm.close()
            raise ValueError(f"shared memory {spec.name}: {shm.size} bytes, expected {spec.total_bytes}")
        return cls(spec, shm, owner=False)

    @property
    def closed(self) -> bool:
        return self._shm is None

    def close(self) -> None:
        """Detach; the owner also unlinks the segment. Safe to call twice."""
        if self._shm is None:
            return
        del self.header, self.cycle_row, self.frames
        shm, self._shm = self._shm, None
        shm.close()
        if self._owner:
            shm.unlink()

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ producer side

    def _free_slot(self) -> int | None:
        h = self.header
        for slot in range(self.spec.slots):
            seq = h[slot, _FRAME_SEQ]
            if seq < 0 or h[slot, _RELEASED] == seq:
                return slot
        return None

    def _stealable_slot(self) -> int | None:
        """The oldest ready frame the worker has not claimed (live policy)."""
        h = self.header
        best: int | None = None
        for slot in range(self.spec.slots):
            seq = h[slot, _FRAME_SEQ]
            if seq >= 0 and h[slot, _CLAIMED] != seq and (best is None or seq < h[best, _FRAME_SEQ]):
                best = slot
        return best

    def acquire(
        self, policy: Literal["file", "live"], timeout_s: float | None = None, poll_s: float = 0.0005,
        max_poll_s: float = 0.008,
    ) -> tuple[int, int] | None:
        """A slot to write the next frame into, and the frame seq it drops (-1: none dropped).

        ``file`` waits (up to ``timeout_s``) until the worker releases a slot, looking every ``poll_s``
        at first and backing off to ``max_poll_s``: a full ring means the worker is busy for a while, and
        thousands of wake-ups a second per producer would slow its models down. ``live`` never waits:
        it takes a free slot, else overwrites the oldest unclaimed frame (a drop), else returns None
        (every slot is being read right now: the new frame is the one to drop).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            slot = self._free_slot()
            if slot is not None:
                return slot, -1
            if policy == "live":
                slot = self._stealable_slot()
                if slot is None:
                    return None
                return slot, int(self.header[slot, _FRAME_SEQ])
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)
            poll_s = min(poll_s * 2, max_poll_s)

    def taken(self, slot: int, seq: int) -> bool:
        """Has the worker claimed or released frame ``seq`` in ``slot``, or was it overwritten since?"""
        row = self.header[slot]
        return bool(row[_CLAIMED] == seq or row[_RELEASED] == seq or row[_FRAME_SEQ] != seq)

    def unclaimed(self, slot: int, seq: int) -> bool:
        """Does ``slot`` still hold frame ``seq``, neither claimed nor released by the worker?"""
        row = self.header[slot]
        return bool(row[_FRAME_SEQ] == seq and row[_CLAIMED] != seq and row[_RELEASED] != seq)

    def all_released(self) -> bool:
        """True when the worker has finished with every frame written so far."""
        h = self.header
        return bool(np.all((h[:, _FRAME_SEQ] < 0) | (h[:, _RELEASED] == h[:, _FRAME_SEQ])))

    def write(self, slot: int, seq: int, frame_hwc: NDArray[np.uint8]) -> None:
        """Copy a frame into ``slot`` and publish it as frame ``seq`` (seqlock-protected)."""
        h = self.header
        h[slot, _VERSION] += 1  # odd: writing
        np.copyto(self.frames[slot], frame_hwc)
        h[slot, _FRAME_SEQ] = seq
        h[slot, _VERSION] += 1  # even: stable

    # ------------------------------------------------------------------ worker side

    def claim(self, slot: int, seq: int) -> int | None:
        """Start reading frame ``seq`` in ``slot``; returns the version to :meth:`verify`, or None if gone."""
        h = self.header
        version = int(h[slot, _VERSION])
        if version % 2 or h[slot, _FRAME_SEQ] != seq:
            return None
        h[slot, _CLAIMED] = seq
        # re-check: the producer may have begun overwriting between the two reads
        if int(h[slot, _VERSION]) != version or h[slot, _FRAME_SEQ] != seq:
            return None
        return version

    def view(self, slot: int) -> NDArray[np.uint8]:
        """The slot's pixels, zero-copy; valid only between :meth:`claim` and :meth:`release`."""
        view: NDArray[np.uint8] = self.frames[slot]
        return view

    def verify(self, slot: int, version: int) -> bool:
        """True when the slot was not overwritten since :meth:`claim` returned ``version``."""
        return int(self.header[slot, _VERSION]) == version

    def release(self, slot: int, seq: int) -> None:
        """Give ``slot`` back to the producer."""
        self.header[slot, _RELEASED] = seq

    def announce_cycle(self, submitted_ns: int, due_ns: int, cycle_ns: int) -> None:
        """The worker started a batch at ``submitted_ns`` and expects to be back for frames at ``due_ns``
        (monotonic ns); a batch takes it ``cycle_ns``. ``submitted_ns`` is written last: a reader that sees
        it new sees the rest new too (stores are not reordered on x86; elsewhere a stale ``due`` costs one
        frame's freshness, never a frame)."""
        row = self.cycle_row
        row[_DUE] = due_ns
        row[_CYCLE] = cycle_ns
        row[_SUBMITTED] = submitted_ns

    def worker_cycle(self) -> tuple[int, int, int]:
        """What the worker announced last: (submitted_ns, due_ns, cycle_ns); zeros before its first batch."""
        row = self.cycle_row
        submitted = int(row[_SUBMITTED])
        return submitted, int(row[_DUE]), int(row[_CYCLE])

    def pending(self) -> int:
        """Frames written and not yet released by the worker (the source's queue depth)."""
        h = self.header
        return int(np.count_nonzero((h[:, _FRAME_SEQ] >= 0) & (h[:, _RELEASED] != h[:, _FRAME_SEQ])))

    def unreleased(self) -> list[int]:
        """Slots holding a frame the worker has not released, oldest frame first."""
        h = self.header
        slots = [slot for slot in range(self.spec.slots)
                 if h[slot, _FRAME_SEQ] >= 0 and h[slot, _RELEASED] != h[slot, _FRAME_SEQ]]
        return sorted(slots, key=lambda slot: int(h[slot, _FRAME_SEQ]))

    def frame_seq(self, slot: int) -> int:
        return int(self.header[slot, _FRAME_SEQ])

    def reset_claims(self) -> None:
        """Forget the claims of a worker that died, keeping its releases: the frames it had not released
        are handed to the next worker again (nothing lost; see :meth:`reset_worker_side` to drop them)."""
        self.header[:, _CLAIMED] = -1

    def reset_worker_side(self) -> None:
        """Forget the claims of a worker that died (a new worker takes over)."""
        self.header[:, _CLAIMED] = -1
        self.header[:, _RELEASED] = self.header[:, _FRAME_SEQ]
