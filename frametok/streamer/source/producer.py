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

import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from typing import Any

from ...config import SourceConfig, source_kind
from ...errors import SourceError
from ..ipc.notices import EndNotice, ResumeNotice, RunContext, StatusNotice, die_with_parent, set_process_name
from .decode import DecodedFrame, SourceStalled, decode_frames, redact_uri
from .outbox import Outbox
from .pacer import Pacer
from .reader import Reader
from .writer import RingWriter

__all__ = ["producer_main"]

log = logging.getLogger(__name__)

_TICK_S = 0.05  # how often the main thread looks at the stop flag while it waits
_PENDING_TICK_S = 0.002  # how often it looks whether the worker took the last frame (live, a frame waiting)
_WAIT_TICK_S = 1.0  # how often it sends a heartbeat while it waits to reconnect


class _Producer:
    def __init__(self, src: SourceConfig, uri: str, run: RunContext, stop: Event, epoch: Any = None,
                 attempt: int = 0, resume_from: int = 0) -> None:
        self.src, self.uri, self.run, self.stop = src, uri, run, stop
        self.stream_id = src.id
        self.policy = src.effective_policy
        self.live_source = src.kind in ("camera", "network")
        self.reconnect = src.effective_reconnect
        self.outbox = Outbox(src.id, run, stop, epoch)
        self.outbox.on_new_worker = self._resync
        self.pacer = Pacer()
        self.writer = RingWriter(src.id, run.shm_prefix, src.slots or 4, self.policy, self.outbox, stop,
                                 self.pacer, lambda: self.dropped, attempt)
        self.captured = 0  # frames read from the source over every connection (the packets' frame index)
        self.pending_dropped = 0  # replaced by a newer frame while the worker was busy (live)
        self.handoff_dropped = 0  # by the readers of earlier connections
        self.pending: DecodedFrame | None = None  # live: the newest frame, waiting for the worker
        self.reader: Reader | None = None
        self.base = 0  # frame index of the current connection's first frame
        self.stragglers: list[Reader] = []
        self.state = ""
        self.damage: deque[str] = deque()  # damaged parts the reader skipped, to report (files)
        self.damaged = 0
        # restarts: a file continues from the first frame the worker did not publish, a live source's
        # index goes on
        self.resume_from = resume_from
        if self.live_source:
            self.captured = resume_from
        self.end_notice: EndNotice | None = None

    def _resync(self) -> None:
        """A restarted worker is ready: tell it this stream resumes, its ring, every frame still in the ring
        and, when sent already, the stream's end."""
        self.outbox.send_frames(ResumeNotice(self.stream_id, self.state))
        resent = self.writer.reannounce()
        if self.end_notice is not None:
            self.outbox.send_frames(self.end_notice)
        log.info("a new worker: %d frame(s) announced again", resent)
        self.event("resumed", frames=resent)

    def event(self, event: str, **data: Any) -> None:
        self.outbox.event(event, **data)

    def status(self, state: str, detail: str = "") -> None:
        self.state = state
        log.info("%s %s", state, detail)
        self.outbox.notify(StatusNotice(self.stream_id, state, detail, time.time_ns()))
        self.event("status", state=state, detail=detail)

    @property
    def dropped(self) -> int:
        current = self.reader.dropped if self.reader is not None else 0
        return self.writer.ring_dropped + self.pending_dropped + self.handoff_dropped + current

    def _write(self, frame: DecodedFrame) -> bool:
        index = self.base + frame.index  # frames dropped before leave a jump in the frame index
        self.captured = max(self.captured, index + 1)
        return self.writer.write(frame, index)

    # ------------------------------------------------------------------ reading

    def _open_reader(self) -> Reader:
        src, live = self.src, self.policy == "live"
        read_timeout = src.stall_timeout_s if self.live_source else None

        def frames() -> Iterator[DecodedFrame]:
            frames = decode_frames(self.uri, src.open_timeout_s, read_timeout_s=read_timeout, fps=src.fps,
                                   options=src.options, on_damage=self.damage.append,
                                   start_frame=self._start_frame(), every=src.every)
            if source_kind(self.uri) == "images" and self.resume_from:  # restarted: what was published is done
                return (f for f in frames if f.index >= self.resume_from)
            return frames

        return Reader(frames, live=live, depth=2, name=f"read-{self.stream_id}")

    def _start_frame(self) -> int:
        """A file's first frame: ``start_frame``, or after a restart the first one (of every ``every``-th)
        the worker did not publish yet."""
        start, every = self.src.start_frame, self.src.every
        if source_kind(self.uri) == "file" and self.resume_from > start:  # the demo is a file too
            start += -(-(self.resume_from - start) // every) * every
        return start

    def _close_reader(self) -> None:
        reader, self.reader = self.reader, None
        if reader is None:
            return
        if not reader.close():
            log.warning("the reader of %s is still blocked; leaving it behind", redact_uri(self.uri))
            self.stragglers.append(reader)
        self.captured = max(self.captured, self.base + reader.read)
        self.handoff_dropped += reader.dropped

    def _pump(self, reader: Reader) -> tuple[str, str]:
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
            if live and self.writer.taken() and self.pending is not None and self.pacer.due(time.monotonic()):
                held, self.pending = self.pending, None
                if not self._write(held):
                    return "stopped", ""
            busy = self.pending is not None or self.writer.outstanding is not None
            frame = reader.get(_PENDING_TICK_S if busy else _TICK_S)
            self._report_damage()
            self.outbox.tick()
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
            while not self.stop.wait(max(0.0, min(_WAIT_TICK_S, until - time.monotonic()))):
                self.outbox.tick()
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
            self.end_notice = EndNotice(self.stream_id, self.writer.written, reason, detail)
            self.outbox.notify(self.end_notice)
            self.event("producer_end", frames=self.writer.written, captured=self.captured, dropped=self.dropped,
                       reason=reason, detail=detail, damaged=self.damaged)
            self.writer.close()
            self.outbox.close(stopping=self.stop.is_set())

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
