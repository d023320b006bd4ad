"""Worker process: gather ready frames across sources, run the models in batches, publish packets.

The process wires its parts together and runs the loop: :class:`~.gather.Gatherer` fills a batch while
:class:`~.lane.ModelLane` runs the ones before (one, or ``worker.in_flight``) and :class:`~.emit.Emitter`
publishes those the models finished, in order.
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
from ..delivery.feed import HubFeed
from ..ipc.hub import BatchStats
from ..ipc.notices import EventNotice, RunContext, WorkerResume, die_with_parent, set_process_name
from .emit import Emitter
from .gather import Gatherer
from .lane import ModelLane
from .models import Models, load_models
from .streams import make_streams

__all__ = ["worker_main"]


log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 0.5
_STOPPED_FLUSH_S = 1.0  # stopped: the hub's last chance to take our end-of-stream messages


class _Worker:
    def __init__(self, config: Config, models: Models, run: RunContext, stop: Event,
                 resume: WorkerResume | None = None, index: int = 0, device: int | None = None) -> None:
        self.config, self.run, self.stop = config, run, stop
        self.resume, self.index = resume, index
        self.name = "worker" if index == 0 and run.workers == 1 else f"worker-{index}"
        self.models = load_models(config, models, device)
        self.streams, resuming = make_streams(self.models, resume)
        self.infos = {s.id: StreamInfo(s.id, s.effective_policy, self.models.infos, worker=index)  # type: ignore[arg-type]
                      for s in config.sources}
        self.lane = ModelLane(self.models.detector, self.models.encoder, config.worker.max_batch, self.models.neck,
                              self.models.in_flight)
        self.ctx = zmq.Context()
        self.events_out = self.ctx.socket(zmq.PUSH)
        self.events_out.setsockopt(zmq.LINGER, 2000)
        self.events_out.connect(run.events_endpoint)
        self.publisher = HubFeed(self.ctx, run.hub_endpoint, config.publisher, index,
                                 resume.attempt if resume is not None else 0, stop)
        self.publisher.join_hooks.append(self._on_join)
        self.publisher.on_wait = self._progress  # waiting for the hub (a slow lossless subscriber) is no hang
        on_batch = self._batch_stats if config.metrics.enabled else None
        self.emitter = Emitter(self.models, self.streams, self.publisher, on_batch, self.event)
        self.gatherer = Gatherer(config, self.ctx, run.frames_endpoint, self.models, self.streams, resuming,
                                 self.lane, self.publisher, self.emitter, stop, self._progress, self.event)
        self.resuming = resuming
        self._last_progress = 0.0

    def _batch_stats(self, frames: int, detector_s: float | None, encoder_s: float | None) -> None:
        """For the run's metrics (kept by the hub): what the batch cost, and the rings' depths."""
        self.publisher.batch(BatchStats(
            self.index, frames, detector_s, encoder_s,
            {sid: st.ring.pending() if st.ring is not None else 0 for sid, st in self.streams.items()},
            {sid: st.discarded for sid, st in self.streams.items()}))

    def _on_join(self, prefixes: Any) -> None:
        """A live subscriber joined or lost sync: a keyframe of its streams, coalesced (lossless ones get
        theirs alone)."""
        for st in self.streams.values():
            if st.soft is not None and any(topic_for(st.stream_id).startswith(p) for p in prefixes):
                self.emitter.want_keyframe(st.stream_id)

    def event(self, event: str, **data: Any) -> None:
        self.events_out.send_pyobj(EventNotice(self.name, event, data))

    def step(self) -> None:
        """Gather the next batch while the models run the one before; then start the models on it and
        publish the one before while they run."""
        batch = self.gatherer.gather()
        lane = self.lane
        if batch.frames or not batch.ends:  # the batches done, and the oldest while no place is free
            finished = lane.finished_results()
        else:  # nothing for the models: its ends follow the packets of every batch before them
            finished = [lane.result() for _ in range(lane.pending)]
        if batch.frames:
            lane.submit(batch)
            self._announce_cycle()
        for done in finished:
            self.emitter.publish(*done)
        if not batch.frames:
            self.emitter.end_streams(batch.ends)

    def _announce_cycle(self) -> None:
        """Tell the live producers when the models should be free again (their pacers announce the newest
        frame just before): written into each live stream's ring header."""
        lane = self.lane
        if not lane.cycle_ns:
            return  # nothing learnt yet: the pacers go by the takes they see
        for st in self.streams.values():
            if st.policy == "live" and st.ring is not None and not st.ring.closed:
                st.ring.announce_cycle(lane.submitted_ns, lane.due_ns, lane.cycle_ns)

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= _PROGRESS_EVERY_S:
            self._last_progress = now
            self.event("progress", frames=self.emitter.frames_done,
                       streams={sid: st.published for sid, st in self.streams.items()},
                       last_frames={sid: st.last_frame for sid, st in self.streams.items()},
                       dropped={sid: st.dropped for sid, st in self.streams.items()})

    def _resume(self) -> None:
        """Tell the hub this worker is ready, and go on after what it already published of our streams (a
        restarted worker: frames the dead one handed over are not made again; its streams say so)."""
        state = self.publisher.hello(self.infos)
        for sid, st in self.streams.items():
            st.last_frame = max(st.last_frame, state.last_frames.get(sid, -1))
            st.published = state.packets.get(sid, st.published)
            if st.tracker is not None and sid in state.max_track_ids:
                st.tracker.continue_after(state.max_track_ids[sid])
            if sid in state.ended:
                st.ended = True
                self.resuming.discard(sid)
        if self.resume is not None:
            for sid in sorted(self.resuming):
                self.publisher.publish(StatusMessage(sid, "reconnecting", self.resume.detail, time.time_ns()))

    def main(self) -> None:
        self.event("ready", models=self.models.ids)
        self._resume()
        while not self.stop.is_set() and not all(st.ended for st in self.streams.values()):
            self.step()
            self.publisher.poll()
            self.emitter.release_delivered()
            self._progress()
        while self.lane.running is not None:  # stopped: what the models are running still goes out
            self.emitter.publish(*self.lane.result())
        self.publisher.flush()  # the hub holds everything (the end-of-stream too) before this worker exits
        self._progress(force=True)

    def close(self) -> None:
        self.lane.close()
        if self.stop.is_set():
            for st in self.streams.values():
                if not st.ended:
                    self.publisher.publish(EndOfStream(st.stream_id, st.published, "stopped", "run stopped"))
            self.publisher.flush(_STOPPED_FLUSH_S)
        self.event("done", **self.emitter.summary(), in_flight=self.lane.in_flight,
                   packets={sid: st.published for sid, st in self.streams.items()},
                   discarded={sid: st.discarded for sid, st in self.streams.items()},
                   dropped={sid: st.dropped for sid, st in self.streams.items()},
                   soft_tokens={sid: st.soft.stats() for sid, st in self.streams.items() if st.soft is not None})
        for st in self.streams.values():
            if st.ring is not None:
                st.ring.close()
        self.publisher.close()
        self.gatherer.close()
        self.events_out.close()
        self.ctx.term()


def worker_main(config: Config, models: Models, run: RunContext, stop: Event, log_level: int = logging.WARNING,
                resume: WorkerResume | None = None, index: int = 0, device: int | None = None) -> None:
    """Entry point of worker ``index`` (``resume``: a restarted worker, what it takes over; ``device``: the
    accelerator it runs on)."""
    # the supervisor decides when to stop (its stop flag), also when a Ctrl-C or SIGTERM reaches the
    # whole process group; the kernel kills us if the supervisor itself dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    name = "worker" if run.workers == 1 else f"worker-{index}"
    set_process_name("frametok-worker" if run.workers == 1 else f"frametok-w{index}")  # 15 bytes at most
    logging.basicConfig(level=log_level, format=f"%(levelname)s {name} %(message)s")
    try:
        worker = _Worker(config, models, run, stop, resume, index, device)
    except FrametokError as exc:
        _report_failure(run, name, exc)
        raise SystemExit(3) from None
    try:
        worker.main()
    finally:
        worker.close()


def _report_failure(run: RunContext, name: str, exc: FrametokError) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(run.events_endpoint)
    sock.send_pyobj(EventNotice(name, "failed", {"error": str(exc), "kind": type(exc).__name__}))
    sock.close()
    ctx.term()
