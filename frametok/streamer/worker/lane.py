"""The worker's batches, and the thread that runs the models on them.

Frames are pre-processed straight into one of ``in_flight + 1`` sets of batch tensors (the detector's: one
tensor per input shape, :mod:`~frametok.models.shape_groups`: with the rect letterbox, streams of other
aspects run in the same batch, one detector call per shape). While :class:`ModelLane` runs the models on
up to ``in_flight`` sets in threads of its own (onnxruntime releases the GIL), the worker's main thread
gathers and pre-processes the next batch into a free set and post-processes and publishes the batches
the models finished, in the order they were submitted: the models wait for nothing but frames.

``in_flight`` > 1 runs several batches at once, each on its share of the cores (the sessions are made with
``threads / in_flight`` threads; onnxruntime sessions take concurrent runs): on a CPU a small model keeps
two cores busier as two single-threaded runs than as one run on two threads (int8 YOLOv8n at 640x480 on 2
cores: 16.0 ms a frame on 2 threads, 10.5 as two 1-thread runs), at the price of each batch taking longer.
The lane says a batch finished through a pipe the worker's ``zmq.Poller`` watches beside its frame socket,
so the worker sleeps until a frame arrives or the models finish, never polling.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...models.detector import Detector, LetterboxInfo
from ...models.encoder import EncodedFrames, Encoder
from ...models.neck import NeckReader, detect_groups
from ...models.shape_groups import ShapeGroups, ShapeTensors
from ..ipc.notices import EndNotice, FrameNotice
from ..ipc.ring import FrameRing

__all__ = ["Batch", "BatchClock", "Inference", "Loaded", "ModelLane"]

@dataclass(frozen=True)
class Loaded:
    """A frame pre-processed into its batch: the ring it came from (its slot is released once the packet
    is delivered), its letterbox, its rows in the encoder's and the detector's tensors (-1: that model is
    skipped), and whether it is still (motion gating: neither model runs, the last tokens go again)."""

    notice: FrameNotice
    ring: FrameRing
    letterbox: LetterboxInfo | None
    encoder_row: int
    preview_jpeg: bytes | None = None
    reset_tracker: bool = False  # the first frame after its stream reconnected
    detector_row: int = -1
    reused: bool = False


@dataclass(frozen=True)
class Inference:
    """What the models made of one batch, and the seconds each took; ``detections_raw``: the detector's raw
    output of each frame through it, by its ``detector_row``."""

    detections_raw: list[Any] | None
    encoded: EncodedFrames | None
    detector_s: float
    encoder_s: float
    neck_maps: list[Any] | None = None  # encoder.model detector: each frame's neck map (C, h, w), by detector_row


class BatchClock:
    """How long the models take a batch, by its shape (frames through the detector, through the encoder),
    learnt from the batches they ran (a moving average: the machine's load changes)."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[int, int], float] = {}

    def observe(self, shape: tuple[int, int], seconds: float) -> None:
        old = self._seconds.get(shape)
        self._seconds[shape] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def estimate(self, shape: tuple[int, int]) -> float | None:
        """Seconds a batch of ``shape`` takes (a shape not seen yet: the nearest one seen; None: none yet)."""
        got = self._seconds.get(shape)
        if got is None and self._seconds:
            near = min(self._seconds, key=lambda s: (abs(s[0] - shape[0]) + abs(s[1] - shape[1]), -s[0] - s[1]))
            got = self._seconds[near]
        return got


@dataclass
class Batch:
    """Frames gathered for one run of the models, into tensor set ``tensors``; ``ends``: streams that ended
    after them."""

    tensors: int
    frames: list[Loaded] = field(default_factory=list)
    ends: list[EndNotice] = field(default_factory=list)
    encoder_rows: int = 0
    detector_groups: ShapeGroups = field(default_factory=ShapeGroups)  # frames through the detector, by input shape
    future: Future[Inference] | None = field(default=None, repr=False)

    @property
    def detector_rows(self) -> int:
        """Frames through the detector."""
        return self.detector_groups.count

    @property
    def shape(self) -> tuple[int, int]:
        """(frames through the detector, frames through the encoder)."""
        return self.detector_rows, self.encoder_rows


class ModelLane:
    """Runs the detector and the encoder on up to ``in_flight`` batches at a time, in threads of its own;
    their results are collected in the order the batches were submitted."""

    def __init__(self, detector: Detector | None, encoder: Encoder | None, max_batch: int,
                 neck: NeckReader | None = None, in_flight: int = 1) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight: expected at least 1 batch, got {in_flight}")
        self.detector, self.encoder, self.neck = detector, encoder, neck
        self.in_flight = in_flight
        sets = in_flight + 1  # the batches in the models, and the next one being filled
        # without rect every frame has the manifest's input shape: made at once; with it, as the shapes come
        first = () if detector is None or detector.rect else (detector.input_hw,)
        self.det_tensors = [ShapeTensors(max_batch, first)
                            for _ in range(sets)] if detector is not None else None
        self.enc_tensors = [np.empty((max_batch, 3, *encoder.input_hw), np.float32)
                            for _ in range(sets)] if encoder is not None else None
        self._sets = sets
        self._next_set = 0
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="frametok-models")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._submitted: deque[Batch] = deque()  # in the models or finished, not yet collected: oldest first
        self.clock = BatchClock()
        # the batch in the models: when it started and when it should end (monotonic ns), what it should take
        self.submitted_ns = self.due_ns = self.cycle_ns = 0

    @property
    def wake_fd(self) -> int:
        """Readable once the batch in the models is done (register it with a ``zmq.Poller``)."""
        return self._wake_r

    def new_batch(self) -> Batch:
        """An empty batch on a tensor set no submitted batch holds (at most ``in_flight`` are submitted and
        not collected, so one of the ``in_flight + 1`` sets is free). Not simply the next set in turn: a
        batch that closed empty (only ends, or nothing came) is never submitted, and the set after it may
        still be in the models."""
        held = {b.tensors for b in self._submitted}
        free = next(k % self._sets for k in range(self._next_set, self._next_set + self._sets)
                    if k % self._sets not in held)
        self._next_set = (free + 1) % self._sets
        return Batch(free)

    @property
    def running(self) -> Batch | None:
        """The oldest batch submitted and not yet collected with :meth:`result` (None: none)."""
        return self._submitted[0] if self._submitted else None

    @property
    def pending(self) -> int:
        """Batches submitted and not yet collected."""
        return len(self._submitted)

    @property
    def finished(self) -> bool:
        """True when the oldest submitted batch is done: :meth:`result` returns at once."""
        return bool(self._submitted) and _done(self._submitted[0])

    @property
    def busy(self) -> bool:
        """True while every one of the ``in_flight`` places runs a batch (one finished, not yet collected,
        leaves its place free: it is collected before the next submit)."""
        return sum(not _done(b) for b in self._submitted) >= self.in_flight

    def submit(self, batch: Batch) -> None:
        """Start the models on ``batch``; fewer than ``in_flight`` batches may be waiting to be collected."""
        assert len(self._submitted) < self.in_flight, "collect a finished batch before submitting the next one"
        self.submitted_ns = time.monotonic_ns()
        expected = self.clock.estimate(batch.shape)
        self.cycle_ns = 0 if expected is None else int(expected * 1e9)
        self.due_ns = self.submitted_ns + self.cycle_ns
        batch.future = self._pool.submit(self._run, batch.tensors, batch.detector_groups, batch.encoder_rows)
        batch.future.add_done_callback(self._wake)
        self._submitted.append(batch)

    def result(self) -> tuple[Batch, Inference]:
        """Wait for the oldest submitted batch; returns it with what the models made of it."""
        batch = self._submitted.popleft()
        assert batch.future is not None
        out = batch.future.result()
        self.clock.observe(batch.shape, out.detector_s + out.encoder_s)
        return batch, out

    def finished_results(self) -> list[tuple[Batch, Inference]]:
        """Every batch done at the head of the queue (oldest first), collected; and, while the lane is
        full, the oldest one waited for, so that a place is free for the next submit."""
        out = []
        while self.finished or len(self._submitted) >= self.in_flight:
            out.append(self.result())
        return out

    def drain_wake(self) -> None:
        """Empty the wake pipe (the poller saw it readable). Its byte may come a moment after the result
        (futures run their callbacks after waking their waiters), so it is emptied here, when seen."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 64):
                pass

    def _wake(self, _: Future[Inference]) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\x01")

    def _run(self, tensors: int, groups: ShapeGroups, m: int) -> Inference:
        t0 = time.perf_counter()
        raw = maps = None
        if groups.count and self.detector is not None and self.det_tensors is not None:
            raw, maps = detect_groups(self.detector, self.neck, self.det_tensors[tensors], groups)
        t1 = time.perf_counter()
        enc = None
        if m and self.encoder is not None and self.enc_tensors is not None:
            enc = self.encoder.split(self.encoder.infer(self.enc_tensors[tensors][:m]))
        t2 = time.perf_counter()
        return Inference(raw, enc, t1 - t0, t2 - t1, maps)

    def close(self) -> None:
        """Wait for the batches in the models, stop the threads and close the pipe. Safe to call twice."""
        self._pool.shutdown(wait=True)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1


def _done(batch: Batch) -> bool:
    return batch.future is None or batch.future.done()
