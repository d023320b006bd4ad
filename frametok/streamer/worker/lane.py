"""The worker's batches, and the thread that runs the models on them.

Frames are pre-processed straight into one of two sets of batch tensors (the detector's: one tensor per
input shape, :mod:`~frametok.models.shape_groups`: with the rect letterbox, streams of other aspects run in
the same batch, one detector call per shape). While :class:`ModelLane` runs
the models on one set in its own thread (onnxruntime releases the GIL), the worker's main thread gathers
and pre-processes the next batch into the other set and post-processes and publishes the batch before:
the models wait for nothing but frames. The lane says it is free through a pipe the worker's
``zmq.Poller`` watches beside its frame socket, so the worker sleeps until a frame arrives or the models
finish, never polling.
"""

from __future__ import annotations

import contextlib
import os
import time
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

_TENSOR_SETS = 2  # one batch in the models, the next one being filled


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
    """Runs the detector and the encoder on one batch at a time, in a thread of its own."""

    def __init__(self, detector: Detector | None, encoder: Encoder | None, max_batch: int,
                 neck: NeckReader | None = None) -> None:
        self.detector, self.encoder, self.neck = detector, encoder, neck
        # without rect every frame has the manifest's input shape: made at once; with it, as the shapes come
        first = () if detector is None or detector.rect else (detector.input_hw,)
        self.det_tensors = [ShapeTensors(max_batch, first)
                            for _ in range(_TENSOR_SETS)] if detector is not None else None
        self.enc_tensors = [np.empty((max_batch, 3, *encoder.input_hw), np.float32)
                            for _ in range(_TENSOR_SETS)] if encoder is not None else None
        self._next_set = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frametok-models")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._running: Batch | None = None
        self.clock = BatchClock()
        # the batch in the models: when it started and when it should end (monotonic ns), what it should take
        self.submitted_ns = self.due_ns = self.cycle_ns = 0

    @property
    def wake_fd(self) -> int:
        """Readable once the batch in the models is done (register it with a ``zmq.Poller``)."""
        return self._wake_r

    def new_batch(self) -> Batch:
        """An empty batch on the tensor set not in the models now."""
        batch = Batch(self._next_set)
        self._next_set = (self._next_set + 1) % _TENSOR_SETS
        return batch

    @property
    def running(self) -> Batch | None:
        """The batch submitted last and not yet collected with :meth:`result`."""
        return self._running

    @property
    def busy(self) -> bool:
        """True while the models are running a batch."""
        return self._running is not None and self._running.future is not None and not self._running.future.done()

    def submit(self, batch: Batch) -> None:
        """Start the models on ``batch``; the batch submitted before must have been collected."""
        assert self._running is None, "collect the running batch before submitting the next one"
        self.submitted_ns = time.monotonic_ns()
        expected = self.clock.estimate(batch.shape)
        self.cycle_ns = 0 if expected is None else int(expected * 1e9)
        self.due_ns = self.submitted_ns + self.cycle_ns
        batch.future = self._pool.submit(self._run, batch.tensors, batch.detector_groups, batch.encoder_rows)
        batch.future.add_done_callback(self._wake)
        self._running = batch

    def result(self) -> tuple[Batch, Inference]:
        """Wait for the running batch; returns it with what the models made of it."""
        batch, self._running = self._running, None
        assert batch is not None and batch.future is not None
        out = batch.future.result()
        self.clock.observe(batch.shape, out.detector_s + out.encoder_s)
        return batch, out

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
        """Wait for the batch in the models, stop the thread and close the pipe. Safe to call twice."""
        self._pool.shutdown(wait=True)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
