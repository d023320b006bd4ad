"""Producer process: decode one source into its shared-memory ring and notify the worker.

A reader thread does the blocking I/O (open, read, decode: PyAV or OpenCV) and hands frames over in a
small queue; the process's main thread writes them into the ring, sends the notices, watches for stalls,
reconnects live sources with capped exponential backoff, and sees the run's stop at once: a read that
blocks (a network stream that went silent) never keeps the producer from stopping.

* ``file`` policy: the reader waits for room in the hand-off and the main thread for a free ring slot,
  so every decoded frame reaches the worker (back-pressure).
* ``live`` policy: nothing waits on the worker; the newest frame wins. A frame is announced to the
  worker only when it took the one announced before; until then the newest frame waits in the producer
  and replaces older ones. Every frame replaced (here, in the hand-off or in the ring) is counted in
  ``dropped``, and its frame index is skipped in the packets.

Cameras and network streams are live sources: no frame for ``stall_timeout_s`` is a stall, and a stall,
a failure or (network, unless ``end_on_eof``) the end of the stream makes the producer report
``stalled``, then ``reconnecting`` (each attempt), then ``online`` when frames flow again, or ``offline``
when it gives up after ``reconnect_attempts`` failed attempts in a row. Files and image folders end
with an end-of-stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from ...config import SourceConfig, source_kind
from ...errors import SourceError
from ..ipc.notices import (
    EndNotice,
    EventNotice,
    FrameNotice,
    OpenNotice,
    ResumeNotice,
    RunContext,
    StatusNotice,
    die_with_parent,
    set_process_name,
)
from ..ipc.ring import FrameRing
from .decode import DecodedFrame, SourceStalled, decode_frames, redact_uri

__all__ = ["producer_main"]

log = logging.getLogger(__name__)

_LINGER_MS = 2000
_SEND_TIMEOUT_MS = 100
_TICK_S = 0.05  # how often the main thread looks at the stop flag while it waits
_PENDING_TICK_S = 0.002  # how often it looks whether the worker took the last frame (live, a frame waiting)
_READER_JOIN_S = 1.0
_BEAT_S = 1.0  # heartbeats to the supervisor, at most this often


class _Reader:
    """One connection of a source, read by a daemon thread into a hand-off of ``depth`` frames.

    ``live``: a full hand-off drops its oldest frame (counted in ``dropped``) and the reader never
    waits; otherwise the reader waits for room (back-pressure).
    """

    def __init__(self, open_frames: Callable[[], Iterator[DecodedFrame]], live: bool, depth: int, name: str) -> None:
        self._open = open_frames
        self.live, self.depth = live, depth
        self._cond = threading.Condition()
        self._queue: deque[DecodedFrame] = deque()
        self.read = 0  # frames handed over (dropped ones included)
        self.dropped = 0
        self.error: BaseException | None = None
        self._closed = False
        self._done = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        frames: Iterator[DecodedFrame] | None = None
        try:
            frames = self._open()
            for frame in frames:
                with self._cond:
                    while not self.live and len(self._queue) >= self.depth and not self._closed:
                        self._cond.wait(_TICK_S)
                    if self._closed:
                        break
                    if len(self._queue) >= self.depth:
                        self._queue.popleft()
                        self.dropped += 1
                    self._queue.append(frame)
                    self.read += 1
                    self._cond.notify_all()
        except BaseException as exc:  # reported to the main thread, which decides what it means
            self.error = exc
        finally:
            if frames is not None:
                with contextlib.suppress(Exception):
                    frames.close()  # type: ignore[attr-defined]
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def get(self, timeout_s: float) -> DecodedFrame | None:
        """The next frame, or None when none came within ``timeout_s`` (or the reader finished)."""
        with self._cond:
            if not self._queue and not self._done:
                self._cond.wait(timeout_s)
            if not self._queue:
                return None
            frame = self._queue.popleft()
            self._cond.notify_all()
            return frame

    @property
    def finished(self) -> bool:
        """The reader is done and every frame it read was taken."""
        with self._cond:
            return self._done and not self._queue

    def close(self, join_s: float = _READER_JOIN_S) -> bool:
        """Ask the reader to stop; True when its thread ended within ``join_s``."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self.thread.join(join_s)
        return not self.thread.is_alive()


class _Pacer:
    """When to announce the next frame of a live source to the worker.

    The worker takes frames in the order it was told of them and runs them in batches. A frame announced
    as soon as the worker took the previous one would sit out the rest of the batch in progress before its
    own ran: up to twice the batch time old when published. So the pacer learns the worker's cycle (the
    shortest of the last few times between two takes) and lets the newest frame go a frame period and a
    half before the worker is due back. (Half a period cut the p50 latency of one 30 fps camera from 173 to
    146 ms, but with three cameras one kept missing its batch and settled at every other one, its learnt
    cycle then twice the worker's: 602 packets against 1,194 each for the other two.) A worker that keeps
    up takes each frame at once, so its cycle is the source's frame period and every frame goes at once; a
    worker that is late finds the frame waiting (never worse than announcing at once).
    """

    def __init__(self, window: int = 8) -> None:
        self.taken_at: float | None = None
        self.cycles: deque[float] = deque(maxlen=window)
        self.period: float | None = None  # the source's frame period (moving average)
        self._last_arrival: float | None = None

    def arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            dt = now - self._last_arrival
            self.period = dt if self.period is None else 0.9 * self.period + 0.1 * dt
        self._last_arrival = now

    def _lead(self) -> float:
        return 1.5 * (self.period or 1 / 30) + 0.005

    def taken(self, now: float) -> None:
        # two frames taken into one batch (one early, one as the worker came back, maybe after it published
        # the batch before) are no cycle of the worker: counted, the next frame would go at once, wait out
        # a whole batch, and batches would keep taking a stale frame. A worker about as fast as the source
        # loses nothing by that: with no cycle learnt every frame goes at once.
        if self.taken_at is not None and now - self.taken_at >= 1.5 * (self.period or 1 / 30) + 0.005:
            self.cycles.append(now - self.taken_at)
        self.taken_at = now

    def due(self, now: float) -> bool:
        if self.taken_at is None or not self.cycles:
            return True
        return now >= self.taken_at + min(self.cycles) - self._lead()


class _Producer:
    def __init__(self, src: SourceConfig, uri: str, run: RunContext, stop: Event, epoch: Any = None,
                 attempt: int = 0, resume_from: int = 0) -> None:
        self.src, self.uri, self.run, self.stop = src, uri, run, stop
        self.stream_id = src.id
        self.policy = src.effective_policy
        self.live_source = src.kind in ("camera", "network")
        self.reconnect = src.effective_reconnect
        self.ctx = zmq.Context()
        self.frames_out = self.ctx.socket(zmq.PUSH)
        self.frames_out.setsockopt(zmq.LINGER, _LINGER_MS)
        self.frames_out.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
        self.frames_out.connect(run.frames_endpoint)
        self.events_out = self.ctx.socket(zmq.PUSH)
        self.events_out.setsockopt(zmq.LINGER, _LINGER_MS)
        self.events_out.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
        self.events_out.connect(run.events_endpoint)
        self.ring: FrameRing | None = None
        self.generation = 0
        self.seq = 0  # frames written into the ring (the worker's notices)
        self.captured = 0  # frames read from the source over every connection (the packets' frame index)
        self.ring_dropped = 0  # overwritten in the ring (live; only when the worker lost track of a frame)
        self.pending_dropped = 0  # replaced by a newer frame while the worker was busy (live)
        self.handoff_dropped = 0  # by the readers of earlier connections
        self.pending: DecodedFrame | None = None  # live: the newest frame, waiting for the worker
        self.outstanding: tuple[int, int] | None = None  # (slot, seq) announced, not yet taken by the worker
        self.pacer = _Pacer()
        self.reader: _Reader | None = None
        self.base = 0  # frame index of the current connection's first frame
        self.stragglers: list[_Reader] = []
        self.state = ""
        self.damage: deque[str] = deque()  # damaged parts the reader skipped, to report (files)
        self.damaged = 0
        # restarts: a restarted producer names its rings and numbers its frames apart from its predecessor's;
        # a file continues from the first frame the worker did not publish, a live source's index goes on
        self.attempt = attempt
        self.generation = attempt * 1000
        self.seq = attempt << 32
        self.resume_from = resume_from
        if self.live_source:
            self.captured = resume_from
        # worker restarts: ``epoch`` (a shared counter) changes when a new worker is ready; the frames still
        # in the ring (not released: not published) are announced to it again
        self.epoch_value = epoch
        self.epoch = epoch.value if epoch is not None else 0
        self.notices: dict[int, FrameNotice] = {}  # slot -> the notice of the frame it holds
        self.end_notice: EndNotice | None = None
        self._beat_at = 0.0

    # ------------------------------------------------------------------ messages

    def _send(self, sock: zmq.Socket[Any], obj: Any) -> bool:
        """Send, retrying while the receiver's queue is full; gives up once the run stops."""
        while True:
            try:
                sock.send_pyobj(obj)
                return True
            except zmq.Again:
                if self.stop.is_set():
                    return False
                if sock is self.frames_out:
                    self._beat()

    def notify(self, notice: Any) -> None:
        self._resync()
        self._send(self.frames_out, notice)

    def _beat(self) -> None:
        """A heartbeat for the supervisor (at most one a second): this process is not hung."""
        now = time.monotonic()
        if now - self._beat_at >= _BEAT_S:
            self._beat_at = now
            self._send(self.events_out, EventNotice(self.stream_id, "heartbeat", {}))

    def _tick(self) -> None:
        """Called wherever the producer waits: heartbeat, and a new worker to bring up to date."""
        self._resync()
        self._beat()

    def _resync(self) -> None:
        """A restarted worker is ready: tell it this stream resumes, its ring, every frame still in the ring
        (in order: the dead worker never published them) and, when sent already, the stream's end."""
        if self.epoch_value is None or self.epoch_value.value == self.epoch:
            return
        self.epoch = self.epoch_value.value
        self._send(self.frames_out, ResumeNotice(self.stream_id, self.state))
        resent = 0
        ring = self.ring
        if ring is not None:
            ring.reset_claims()
            self._send(self.frames_out, OpenNotice(self.stream_id, ring.spec))
            for slot in ring.unreleased():
                notice = self.notices.get(slot)
                if notice is not None and notice.seq == ring.frame_seq(slot):
                    self._send(self.frames_out, notice)
                    resent += 1
        if self.end_notice is not None:
            self._send(self.frames_out, self.end_notice)
        log.info("a new worker: %d frame(s) announced again", resent)
        self.event("resumed", frames=resent)

    def event(self, event: str, **data: Any) -> None:
        self._send(self.events_out, EventNotice(self.stream_id, event, data))

    def status(self, state: str, detail: str = "") -> None:
        self.state = state
        log.info("%s %s", state, detail)
        self.notify(StatusNotice(self.stream_id, state, detail, time.time_ns()))
        self.event("status", state=state, detail=detail)

    @property
    def dropped(self) -> int:
        current = self.reader.dropped if self.reader is not None else 0
        return self.ring_dropped + self.pending_dropped + self.handoff_dropped + current

    # ------------------------------------------------------------------ ring

    def _ring_for(self, shape: tuple[int, int, int]) -> FrameRing:
        if self.ring is not None and self.ring.spec.shape_hwc == shape:
            return self.ring
        if self.ring is not None:  # a new frame size: a new ring, once the worker is done with the old one
            self._retire(self.ring, timeout_s=10.0)
        self.generation += 1
        name = f"{self.run.shm_prefix}{self.stream_id}-{self.generation}"
        self.ring = FrameRing.create(name, self.src.slots or 4, shape)
        self.notify(OpenNotice(self.stream_id, self.ring.spec))
        return self.ring

    def _retire(self, ring: FrameRing, timeout_s: float | None = None) -> None:
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
            self._tick()
            time.sleep(0.005)
        return False

    def _write(self, frame: DecodedFrame) -> bool:
        """Put one frame into the ring and tell the worker; False when the run stopped meanwhile."""
        ring = self._ring_for(frame.frame_rgb.shape)  # type: ignore[arg-type]
        index = self.base + frame.index  # frames dropped before leave a jump in the frame index
        self.captured = max(self.captured, index + 1)
        got = None
        while got is None and not self.stop.is_set():
            got = ring.acquire(self.policy, timeout_s=0.1)
            if got is None and self.policy == "live":
                break
            self._tick()
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
                             frame.t_decode_ns, self.dropped)
        self.notices[slot] = notice
        self.notify(notice)
        self.outstanding = (slot, self.seq)
        self.seq += 1
        return True

    def _taken(self) -> bool:
        """Has the worker taken (claimed, released or lost) the last frame we told it about?"""
        if self.outstanding is None or self.ring is None:
            return True
        slot, seq = self.outstanding
        if self.ring.taken(slot, seq):
            self.outstanding = None
            self.pacer.taken(time.monotonic())
            return True
        return False

    # ------------------------------------------------------------------ reading

    def _open_reader(self) -> _Reader:
        src, live = self.src, self.policy == "live"
        read_timeout = src.stall_timeout_s if self.live_source else None

        def frames() -> Iterator[DecodedFrame]:
            frames = decode_frames(self.uri, src.open_timeout_s, read_timeout_s=read_timeout, fps=src.fps,
                                   options=src.options, on_damage=self.damage.append,
                                   start_frame=self._start_frame(), every=src.every)
            if source_kind(self.uri) == "images" and self.resume_from:  # restarted: what was published is done
                return (f for f in frames if f.index >= self.resume_from)
            return frames

        return _Reader(frames, live=live, depth=2, name=f"read-{self.stream_id}")

    def _start_frame(self) -> int:
        """A file's first frame: ``start_frame``, or after a restart the first one (of every ``every``-th)
        the worker did not publish yet."""
        start, every = self.src.start_frame, self.src.every
        if source_kind(self.uri) == "file" and self.resume_from > start:  # the demo is a file too
            start += -(-(self.resume_from - start) // every) * every
        return start

    @property
    def written(self) -> int:
        """Frames this producer wrote into its rings."""
        return self.seq - (self.attempt << 32)

    def _close_reader(self) -> None:
        reader, self.reader = self.reader, None
        if reader is None:
            return
        if not reader.close():
            log.warning("the reader of %s is still blocked; leaving it behind", redact_uri(self.uri))
            self.stragglers.append(reader)
        self.captured = max(self.captured, self.base + reader.read)
        self.handoff_dropped += reader.dropped

    def _pump(self, reader: _Reader) -> tuple[str, str]:
        """Frames of one connection into the ring until it ends ("eof"), fails ("error"), stalls ("stall")
        or the run stops ("stopped").

        ``live``: a frame is written and announced only once the worker took the one before, and until
        then the newest frame waits here, replacing (dropping) older ones. So the worker, which takes
        frames in the order it was told of them, always finds the newest frame there was when it took
        the previous one, never a queue of stale ones: the latency stays bounded.
        """
        live = self.policy == "live"
        last_frame = time.monotonic()
        stall_s = self.src.stall_timeout_s
        limit_s = self.src.open_timeout_s + stall_s  # until the first frame: opening may take its own time
        while True:
            if self.stop.is_set():
                return "stopped", ""
            if live and self._taken() and self.pending is not None and self.pacer.due(time.monotonic()):
                held, self.pending = self.pending, None
                if not self._write(held):
                    return "stopped", ""
            busy = self.pending is not None or self.outstanding is not None
            frame = reader.get(_PENDING_TICK_S if busy else _TICK_S)
            self._report_damage()
            self._tick()
            if frame is None:
                if reader.finished:
                    if self.pending is not None:  # the stream is gone: its last frame is stale
                        self.pending = None
                        self.pending_dropped += 1
                    err = reader.error
                    if err is None:
                        return "eof", ""
                    if isinstance(err, SourceStalled):
                        return "stall", f"no frame for {stall_s:g} s"
                    if isinstance(err, SourceError):
                        return "error", str(err)
                    log.error("reading %s failed", redact_uri(self.uri), exc_info=err)
                    return "error", f"{type(err).__name__}: {err}"
                if self.live_source and time.monotonic() - last_frame > limit_s:
                    return "stall", f"no frame for {limit_s:g} s"
                continue
            if self.state != "online":
                self.status("online", f"{frame.frame_rgb.shape[1]}x{frame.frame_rgb.shape[0]}")
            if live:
                self.pacer.arrived(time.monotonic())
                if self.pending is not None:
                    self.pending_dropped += 1
                self.pending = frame
            elif not self._write(frame):
                return "stopped", ""
            last_frame = time.monotonic()
            limit_s = stall_s

    def run_source(self) -> tuple[str, str]:
        src = self.src
        self.status("connecting", redact_uri(self.uri))
        failures = 0
        while True:
            self.base = self.captured
            self.reader = reader = self._open_reader()
            try:
                outcome, detail = self._pump(reader)
            finally:
                self._close_reader()
                if self.pending is not None:  # from a connection that is gone: stale
                    self.pending = None
                    self.pending_dropped += 1
            if outcome == "stopped":
                return "stopped", ""
            if outcome == "eof" and (not self.live_source or src.end_on_eof or not self.reconnect):
                return "end", ""
            if outcome == "eof":
                detail = "the stream ended"
            if not self.reconnect:
                self.status("stalled" if outcome == "stall" else "error", detail)
                return "error", detail
            if reader.read:
                failures = 0  # it delivered frames: a new outage, the backoff starts over
            if self.state == "online":
                self.status("stalled", detail)
            failures += 1
            if src.reconnect_attempts and failures > src.reconnect_attempts:
                self.status("offline", f"gave up after {src.reconnect_attempts} attempts: {detail}")
                return "error", f"offline after {src.reconnect_attempts} failed reconnect attempts: {detail}"
            delay = min(src.reconnect_max_s, src.reconnect_initial_s * 2.0 ** (failures - 1))
            self.status("reconnecting", f"attempt {failures} in {delay:.1f} s ({detail})")
            until = time.monotonic() + delay
            while not self.stop.wait(max(0.0, min(_BEAT_S, until - time.monotonic()))):
                self._tick()
                if time.monotonic() >= until:
                    break
            if self.stop.is_set():
                return "stopped", ""

    def _report_damage(self) -> None:
        """Damaged parts of a file the reader skipped: an ``error`` status each, naming the part; the next
        frame decoded says ``online`` again."""
        while self.damage:
            self.damaged += 1
            self.status("error", self.damage.popleft())

    # ------------------------------------------------------------------ lifecycle

    def main(self) -> None:
        reason, detail = "end", ""
        try:
            reason, detail = self.run_source()
        except SourceError as exc:
            reason, detail = "error", str(exc)
            log.error("source %s: %s", self.stream_id, exc)
            self.status("error", detail)
        except Exception as exc:  # report anything else too: the other sources must go on
            reason, detail = "error", f"{type(exc).__name__}: {exc}"
            log.exception("source %s failed", self.stream_id)
            self.status("error", detail)
        finally:
            self._close_reader()
            self._report_damage()
            if reason == "error" and self.state not in ("error", "offline", "stalled"):
                self.status("error", detail)
            stopping = self.stop.is_set()
            if stopping:  # the worker is stopping too: nothing it has not taken yet will be read
                self.frames_out.setsockopt(zmq.LINGER, 0)
            self.end_notice = EndNotice(self.stream_id, self.written, reason, detail)
            self.notify(self.end_notice)
            self.event("producer_end", frames=self.written, captured=self.captured, dropped=self.dropped,
                       reason=reason, detail=detail, damaged=self.damaged)
            if self.ring is not None:
                self._retire(self.ring)
            self.frames_out.close()
            self.events_out.close()
            self.ctx.term()

    def stuck(self) -> bool:
        return any(r.thread.is_alive() for r in self.stragglers)




def producer_main(src: SourceConfig, uri: str, run: RunContext, stop: Event, log_level: int = logging.WARNING,
                  epoch: Any = None, attempt: int = 0, resume_from: int = 0) -> None:
    """Entry point of a producer process (``uri``: the source's URI, resolved by the supervisor).

    ``epoch``: the run's worker epoch (a shared counter, bumped when a restarted worker is ready);
    ``attempt``/``resume_from``: a restarted producer's attempt number and the frame index to go on from.
    """
    # The supervisor decides when to stop (its stop flag), also when a Ctrl-C or a SIGTERM reaches the
    # whole process group; it kills a producer that does not stop in time, and the kernel kills us if
    # the supervisor itself dies (nothing would ever tell us to stop then).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while we started
    die_with_parent()
    set_process_name(f"frametok-src-{src.id}")
    logging.basicConfig(level=log_level, format=f"%(levelname)s producer[{src.id}] %(message)s")
    producer = _Producer(src, uri, run, stop, epoch, attempt, resume_from)
    producer.main()
    if producer.stuck():
        # a reader thread is still blocked inside a library call: leave without waiting for it
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
