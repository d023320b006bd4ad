"""Worker process: gather ready frames across sources, run the models in batches, publish packets.

The process wires its parts together and runs the loop: :class:`~.gather.Gatherer` fills a batch while
:class:`~.lane.ModelLane` runs the one before and :class:`~.emit.Emitter` publishes the one before that.
"""

from __future__ import annotations

import logging
import signal
import time
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from ...config import Config
from ...errors import FrametokError
from ...packet import EndOfStream, StatusMessage, StreamInfo, topic_for
from ..delivery.publisher import Publisher
from ..ipc.notices import EventNotice, RunContext, WorkerResume, die_with_parent, set_process_name
from .emit import Emitter
from .gather import Gatherer
from .lane import ModelLane
from .metrics import MetricsServer, WorkerMetrics, serve_metrics
from .models import Models, load_models
from .streams import make_streams

__all__ = ["worker_main"]

_ENDED_DRAIN_S = 30.0  # every stream ended: lossless subscribers get everything
_STOPPED_DRAIN_S = 1.5  # stopped (Ctrl-C, SIGTERM): stop promptly

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 0.5


class _Worker:
    def __init__(self, config: Config, models: Models, run: RunContext, stop: Event,
                 resume: WorkerResume | None = None) -> None:
        self.config, self.run, self.stop = config, run, stop
        self.resume = resume
        self.models = load_models(config, models)
        self.streams, resuming = make_streams(self.models, resume)
        infos = {s.id: StreamInfo(s.id, s.effective_policy, self.models.infos)  # type: ignore[arg-type]
                 for s in config.sources}
        self.lane = ModelLane(self.models.detector, self.models.encoder, config.worker.max_batch)
        self.ctx = zmq.Context()
        self.events_out = self.ctx.socket(zmq.PUSH)
        self.events_out.setsockopt(zmq.LINGER, 2000)
        self.events_out.connect(run.events_endpoint)
        self.publisher = Publisher(self.ctx, config.publisher, infos)
        self.publisher.join_hooks.append(self._on_join)
        if self.publisher.lossless is not None:  # waiting for a slow lossless subscriber is no hang
            self.publisher.lossless.on_wait = self._progress
        self._subscribers = (0, 0)  # (live subscriptions, lossless subscribers) last reported
        self.metrics: WorkerMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        if config.metrics.enabled:
            self.metrics, self.metrics_server = serve_metrics(config.metrics, self.streams, config.worker.max_batch)
            self.publisher.sent_hooks.append(self.metrics.on_sent)
        self.emitter = Emitter(self.models, self.streams, self.publisher, self.metrics, self.event)
        self.gatherer = Gatherer(config, self.ctx, run.frames_endpoint, self.models, self.streams, resuming,
                                 self.lane, self.publisher, self.emitter, stop, self._progress, self.event)
        self.resuming = resuming
        self._last_progress = 0.0

    def _on_join(self, prefixes: Any) -> None:
        """A subscriber joined or lost sync: the next grid of its streams is a keyframe."""
        for st in self.streams.values():
            if st.soft is not None and any(topic_for(st.stream_id).startswith(p) for p in prefixes):
                st.soft.request_keyframe()

    def event(self, event: str, **data: Any) -> None:
        self.events_out.send_pyobj(EventNotice("worker", event, data))

    def step(self) -> None:
        """Gather the next batch while the models run the one before; then start the models on it and
        publish the one before while they run."""
        batch = self.gatherer.gather()
        finished = self.lane.result() if self.lane.running is not None else None
        if batch.frames:
            self.lane.submit(batch)
        if finished is not None:
            self.emitter.publish(*finished)
        if not batch.frames:  # nothing for the models: its ends follow the packets before them
            self.emitter.end_streams(batch.ends)

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        lossless = self.publisher.lossless
        # the subscribers a restarted worker waits for: told to the supervisor as soon as they change
        subscribers = (self.publisher.subscriptions, len(lossless.peers) if lossless is not None else 0)
        if force or now - self._last_progress >= _PROGRESS_EVERY_S or subscribers != self._subscribers:
            self._last_progress = now
            self._subscribers = subscribers
            self.event("progress", frames=self.emitter.frames_done,
                       streams={sid: st.published for sid, st in self.streams.items()},
                       last_frames={sid: st.last_frame for sid, st in self.streams.items()},
                       dropped={sid: st.dropped for sid, st in self.streams.items()},
                       live_subscriptions=subscribers[0], lossless_subscribers=subscribers[1])

    def main(self) -> None:
        self.event("ready", endpoint=self.config.publisher.endpoint, models=self.models.ids)
        wanted = self.config.publisher.wait_subscribers
        if self.resume is not None:
            if not self._await_resubscribers():
                return
        elif wanted and not self.publisher.wait_for_subscribers(wanted, self._stopping):
            return
        for info in self.publisher.infos.values():
            self.publisher.publish(info)
        while not self.stop.is_set() and not all(st.ended for st in self.streams.values()):
            self.step()
            self.publisher.poll_subscriptions()
            self.emitter.release_delivered()
            self._progress()
        if self.lane.running is not None:  # stopped: what the models are running still goes out
            self.emitter.publish(*self.lane.result())
        self._progress(force=True)

    def _stopping(self) -> bool:
        self._progress()  # the supervisor's heartbeat while waiting
        return self.stop.is_set()

    def _await_resubscribers(self) -> bool:
        """A restarted worker: tell the streams, then wait (up to the lossless timeout) for the subscribers
        of the worker that died to find this one, so that lossless ones miss nothing."""
        resume = self.resume
        assert resume is not None
        lossless = self.publisher.lossless
        deadline = time.monotonic() + self.config.publisher.lossless_timeout_s
        while time.monotonic() < deadline:
            if self._stopping():
                return False
            have_lossless = len(lossless.peers) if lossless is not None else 0
            if (have_lossless >= resume.lossless_subscribers
                    and self.publisher.subscriptions >= resume.live_subscriptions):
                break
            self.publisher.poll_subscriptions(100)
        else:
            log.warning("restarted worker: not every subscriber came back within %.0f s; going on",
                        self.config.publisher.lossless_timeout_s)
        for sid in sorted(self.resuming):
            self.publisher.publish(StatusMessage(sid, "reconnecting", resume.detail, time.time_ns()))
        return True

    def close(self) -> None:
        self.lane.close()
        if self.stop.is_set():
            for st in self.streams.values():
                if not st.ended:
                    self.publisher.publish(EndOfStream(st.stream_id, st.published, "stopped", "run stopped"))
        self.event("done", **self.emitter.summary(),
                   packets={sid: st.published for sid, st in self.streams.items()},
                   discarded={sid: st.discarded for sid, st in self.streams.items()},
                   dropped={sid: st.dropped for sid, st in self.streams.items()},
                   bytes_sent=self.publisher.bytes_sent,
                   soft_tokens={sid: st.soft.stats() for sid, st in self.streams.items() if st.soft is not None})
        for st in self.streams.values():
            if st.ring is not None:
                st.ring.close()
        self.publisher.close(drain_s=_STOPPED_DRAIN_S if self.stop.is_set() else _ENDED_DRAIN_S)
        if self.metrics_server is not None:  # served until the end, lossless drain included
            self.metrics_server.close()
        self.gatherer.close()
        self.events_out.close()
        self.ctx.term()


def worker_main(config: Config, models: Models, run: RunContext, stop: Event, log_level: int = logging.WARNING,
                resume: WorkerResume | None = None) -> None:
    """Entry point of the worker process (``resume``: a restarted worker, what it takes over)."""
    # the supervisor decides when to stop (its stop flag), also when a Ctrl-C or SIGTERM reaches the
    # whole process group; the kernel kills us if the supervisor itself dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    set_process_name("frametok-worker")
    logging.basicConfig(level=log_level, format="%(levelname)s worker %(message)s")
    try:
        worker = _Worker(config, models, run, stop, resume)
    except FrametokError as exc:
        _report_failure(run, exc)
        raise SystemExit(3) from None
    try:
        worker.main()
    finally:
        worker.close()


def _report_failure(run: RunContext, exc: FrametokError) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(run.events_endpoint)
    sock.send_pyobj(EventNotice("worker", "failed", {"error": str(exc), "kind": type(exc).__name__}))
    sock.close()
    ctx.term()
