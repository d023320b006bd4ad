"""Producer process: decode one source into its shared-memory ring and notify the worker."""

from __future__ import annotations

import logging
import signal
import time
from multiprocessing.synchronize import Event
from typing import Any, Literal

import zmq

from ..errors import SourceError
from .notices import EndNotice, EventNotice, FrameNotice, OpenNotice, RunContext, StatusNotice, set_process_name
from .ring import FrameRing
from .sources import decode_frames, redact_uri

__all__ = ["producer_main"]

log = logging.getLogger(__name__)

_LINGER_MS = 2000


class _Producer:
    def __init__(self, stream_id: str, uri: str, policy: Literal["file", "live"], slots: int,
                 run: RunContext, stop: Event) -> None:
        self.stream_id, self.uri, self.policy, self.slots = stream_id, uri, policy, slots
        self.run, self.stop = run, stop
        self.ctx = zmq.Context()
        self.frames_out = self.ctx.socket(zmq.PUSH)
        self.frames_out.setsockopt(zmq.LINGER, _LINGER_MS)
        self.frames_out.connect(run.frames_endpoint)
        self.events_out = self.ctx.socket(zmq.PUSH)
        self.events_out.setsockopt(zmq.LINGER, _LINGER_MS)
        self.events_out.connect(run.events_endpoint)
        self.ring: FrameRing | None = None
        self.generation = 0
        self.seq = 0
        self.dropped = 0

    def notify(self, notice: Any) -> None:
        self.frames_out.send_pyobj(notice)

    def event(self, event: str, **data: Any) -> None:
        self.events_out.send_pyobj(EventNotice(self.stream_id, event, data))

    def status(self, state: str, detail: str = "") -> None:
        self.notify(StatusNotice(self.stream_id, state, detail, time.time_ns()))
        self.event("status", state=state, detail=detail)

    def _ring_for(self, shape: tuple[int, int, int]) -> FrameRing:
        if self.ring is not None and self.ring.spec.shape_hwc == shape:
            return self.ring
        if self.ring is not None:
            self._drain_ring()
            self.ring.close()
        self.generation += 1
        name = f"{self.run.shm_prefix}{self.stream_id}-{self.generation}"
        self.ring = FrameRing.create(name, self.slots, shape)
        self.notify(OpenNotice(self.stream_id, self.ring.spec))
        return self.ring

    def _drain_ring(self, timeout_s: float | None = None) -> None:
        """Wait until the worker has released every frame (or stop, or the timeout)."""
        if self.ring is None:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.stop.is_set():
            if self.ring.all_released():
                return
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def run_source(self) -> tuple[str, str]:
        self.status("connecting", redact_uri(self.uri))
        online = False
        for frame in decode_frames(self.uri):
            if self.stop.is_set():
                return "stopped", ""
            if not online:
                self.status("online", f"{frame.frame_rgb.shape[1]}x{frame.frame_rgb.shape[0]}")
                online = True
            ring = self._ring_for(frame.frame_rgb.shape)  # type: ignore[arg-type]
            got = None
            while got is None and not self.stop.is_set():
                got = ring.acquire(self.policy, timeout_s=0.1)
                if got is None and self.policy == "live":
                    break
            if got is None:
                if self.stop.is_set():
                    return "stopped", ""
                self.dropped += 1  # live: every slot is being read, drop the new frame
                continue
            slot, dropped_seq = got
            if dropped_seq >= 0:
                self.dropped += 1
            ring.write(slot, self.seq, frame.frame_rgb)
            self.notify(FrameNotice(self.stream_id, slot, self.seq, frame.index, frame.pts_s,
                                    frame.t_capture_ns, frame.t_decode_ns, self.dropped))
            self.seq += 1
        return "end", ""

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
            self.notify(EndNotice(self.stream_id, self.seq, reason, detail))
            self.event("producer_end", frames=self.seq, dropped=self.dropped, reason=reason, detail=detail)
            self._drain_ring()
            if self.ring is not None:
                self.ring.close()
            self.frames_out.close()
            self.events_out.close()
            self.ctx.term()


def producer_main(stream_id: str, uri: str, policy: Literal["file", "live"], slots: int,
                  run: RunContext, stop: Event, log_level: int = logging.WARNING) -> None:
    """Entry point of a producer process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    set_process_name(f"frametok-src-{stream_id}")
    logging.basicConfig(level=log_level, format=f"%(levelname)s producer[{stream_id}] %(message)s")
    _Producer(stream_id, uri, policy, slots, run, stop).main()
