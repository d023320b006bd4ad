"""Worker process: gather ready frames across sources, run the models in batches, publish packets."""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from ..config import Config
from ..errors import ConfigError, FrametokError
from ..models.detector import Detector
from ..models.encoder import Encoder
from ..models.session import ModelFiles, create_session
from ..models.soft_tokens import QueryBank
from ..models.tracking import Tracker
from ..packet import (
    STATUS_STATES,
    Detections,
    EndOfStream,
    StatusMessage,
    StreamInfo,
    Timestamps,
    TokenPacket,
    topic_for,
)
from .batches import Batch, Inference, Loaded, ModelLane
from .metrics import MetricsServer, WorkerMetrics, serve_metrics
from .notices import (
    EndNotice,
    EventNotice,
    FrameNotice,
    LostNotice,
    OpenNotice,
    ResumeNotice,
    RunContext,
    StatusNotice,
    WorkerResume,
    die_with_parent,
    set_process_name,
)
from .preview import make_preview
from .publisher import Publisher
from .queries import build_query_bank
from .ring import FrameRing
from .tokens import SoftTokens, SoftTokenStream

__all__ = ["Models", "worker_main"]

_ENDED_DRAIN_S = 30.0  # every stream ended: lossless subscribers get everything
_STOPPED_DRAIN_S = 1.5  # stopped (Ctrl-C, SIGTERM): stop promptly

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 0.5
_DEFAULT_TRACK_FPS = 30.0  # the tracker's frame rate when the source gives none
_TRACK_RESET_STATES = frozenset({"reconnecting", "offline"})


@dataclass(frozen=True)
class Models:
    """The resolved model files a worker loads."""

    detector: ModelFiles | None
    encoder: ModelFiles | None


@dataclass
class _Stream:
    stream_id: str
    policy: str
    ring: FrameRing | None = None
    soft: SoftTokenStream | None = None
    tracker: Tracker | None = None
    published: int = 0
    dropped: int = 0
    discarded: int = 0
    ended: bool = False
    last_frame: int = -1  # the frame index of the last packet published
    reset_tracker: bool = False  # the stream reconnected: its next frame starts the tracker afresh


class _Worker:
    def __init__(self, config: Config, models: Models, run: RunContext, stop: Event,
                 resume: WorkerResume | None = None) -> None:
        self.config, self.run, self.stop = config, run, stop
        self.resume = resume
        wc = config.worker
        self.detector: Detector | None = None
        self.encoder: Encoder | None = None
        if models.detector is not None and config.detector is not None:
            dc = config.detector
            session = create_session(models.detector, wc.providers, wc.threads, precision=wc.precision,
                                     spin_wait=wc.spin_wait)
            self.detector = Detector(models.detector.manifest, session,  # type: ignore[arg-type]
                                     dc.conf_threshold, dc.iou_threshold, dc.max_det)
        if models.encoder is not None and config.encoder is not None:
            session = create_session(models.encoder, wc.providers, wc.threads, precision=wc.precision,
                                     spin_wait=wc.spin_wait)
            self.encoder = Encoder(models.encoder.manifest, session)  # type: ignore[arg-type]
        queries: QueryBank | None = None
        if self.encoder is not None and config.encoder is not None and config.encoder.queries:
            queries = build_query_bank(config.encoder.queries, self.encoder)
        self.model_ids = {}
        model_infos: dict[str, Any] = {}
        if self.detector is not None:
            self.model_ids["detector"] = self.detector.manifest.model_id
            model_infos["detector"] = {**self.detector.manifest.info(),
                                       "providers": list(self.detector.session.get_providers()),
                                       "precision": self.detector.precision}
        if self.encoder is not None:
            self.model_ids["encoder"] = self.encoder.manifest.model_id
            ec = config.encoder
            assert ec is not None
            model_infos["encoder"] = {
                **self.encoder.manifest.info(), "dtype": ec.dtype, "pool": ec.pool,
                "providers": list(self.encoder.session.get_providers()), "precision": self.encoder.precision,
                "queries": list(queries.names) if queries else [],
                "compression": {"tau": ec.tau, "keyframe_interval": ec.keyframe_interval} if ec.compress else None,
            }
        self.streams = {
            s.id: _Stream(s.id, s.effective_policy,
                          soft=SoftTokenStream(config.encoder, queries) if self.encoder and config.encoder else None,
                          tracker=self._tracker_for(s.fps))
            for s in config.sources
        }
        if self.detector is not None and config.detector is not None and config.detector.tracker.enabled:
            model_infos["tracker"] = {"kind": "bytetrack", **config.detector.tracker.model_dump(exclude={"enabled"})}
        infos = {s.id: StreamInfo(s.id, s.effective_policy, model_infos) for s in config.sources}  # type: ignore[arg-type]
        # batch buffers, allocated once
        n = wc.max_batch
        self.lane = ModelLane(self.detector, self.encoder, n)
        self.ctx = zmq.Context()
        self.frames_in = self.ctx.socket(zmq.PULL)
        self.frames_in.bind(run.frames_endpoint)
        self.poll_frames = zmq.Poller()
        self.poll_frames.register(self.frames_in, zmq.POLLIN)
        self.poll_frames_or_models = zmq.Poller()  # while the models run: wake up when they finish too
        self.poll_frames_or_models.register(self.frames_in, zmq.POLLIN)
        self.poll_frames_or_models.register(self.lane.wake_fd, zmq.POLLIN)
        self.poll_models = zmq.Poller()  # the batch is full: wait for the models alone
        self.poll_models.register(self.lane.wake_fd, zmq.POLLIN)
        self.deferred: deque[Any] = deque()  # notices held back while the models run (see gather)
        self.events_out = self.ctx.socket(zmq.PUSH)
        self.events_out.setsockopt(zmq.LINGER, 2000)
        self.events_out.connect(run.events_endpoint)
        self.publisher = Publisher(self.ctx, config.publisher, infos)
        self.publisher.join_hooks.append(self._on_join)
        if self.publisher.lossless is not None:  # waiting for a slow lossless subscriber is no hang
            self.publisher.lossless.on_wait = self._progress
        self.resuming: set[str] = set()  # restarted worker: streams whose producer has not resumed yet
        self.undelivered: deque[tuple[int, FrameRing, int, int]] = deque()  # (message id, ring, slot, seq)
        self._subscribers = (0, 0)  # (live subscriptions, lossless subscribers) last reported
        if resume is not None:
            for sid, st in self.streams.items():
                st.published = resume.packets.get(sid, 0)
                st.last_frame = resume.last_frames.get(sid, -1)
                st.ended = sid in resume.ended
                if not st.ended:
                    self.resuming.add(sid)
        self.metrics: WorkerMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        if config.metrics.enabled:
            self.metrics, self.metrics_server = serve_metrics(config.metrics, self.streams, wc.max_batch)
            self.publisher.sent_hooks.append(self.metrics.on_sent)
        self.batches = 0
        self.frames_done = 0
        self.model_time_s = 0.0
        self.active_since: float | None = None  # monotonic: the first batch of frames began loading
        self.active_until = 0.0  # monotonic: the last batch of frames was published
        self._last_progress = 0.0

    def _tracker_for(self, fps: float | None) -> Tracker | None:
        dc = self.config.detector
        if self.detector is None or dc is None or not dc.tracker.enabled:
            return None
        tc = dc.tracker
        try:
            return Tracker(fps or _DEFAULT_TRACK_FPS, tc.activation_threshold, tc.lost_track_buffer,
                           tc.matching_threshold, tc.min_consecutive_frames)
        except ValueError as exc:
            raise ConfigError(f"detector.tracker: {exc}") from exc

    def _on_join(self, prefixes: Any) -> None:
        """A subscriber joined or lost sync: the next grid of its streams is a keyframe."""
        for st in self.streams.values():
            if st.soft is not None and any(topic_for(st.stream_id).startswith(p) for p in prefixes):
                st.soft.request_keyframe()

    def event(self, event: str, **data: Any) -> None:
        self.events_out.send_pyobj(EventNotice("worker", event, data))

    # ------------------------------------------------------------------ notices

    def _take(self, notice: Any, batch: Batch, models_busy: bool) -> None:
        """A notice from a producer: into ``batch``, or held back (see :meth:`gather`)."""
        sid = getattr(notice, "stream_id", None)
        st = self.streams.get(sid) if isinstance(sid, str) else None
        live_frame = isinstance(notice, FrameNotice) and st is not None and st.policy == "live"
        held_back = st is not None and any(n.stream_id == st.stream_id for n in self.deferred)
        if st is not None and (held_back or (models_busy and live_frame)):
            self.deferred.append(notice)  # and everything after it from that stream, to keep its order
            return
        self._handle(notice, batch)

    def _nothing_more_can_come(self, batch: Batch) -> bool:
        """Every stream still running is live and has its frame in ``batch``: a live producer announces its
        next frame only once the worker took this one and is due back, so waiting for one is time lost."""
        have = {item.notice.stream_id for item in batch.frames}
        return all(st.policy == "live" and st.stream_id in have for st in self.streams.values() if not st.ended)

    def _take_deferred(self, batch: Batch) -> None:
        """The notices held back while the models ran, in the order they came, as far as ``batch`` has room."""
        while self.deferred and len(batch.frames) < self.config.worker.max_batch and not batch.ends:
            self._handle(self.deferred.popleft(), batch)

    def _handle(self, notice: Any, batch: Batch) -> None:
        if self._restart_notice(notice):
            return
        if isinstance(notice, FrameNotice):
            self._load(notice, batch)
        elif isinstance(notice, OpenNotice):
            st = self.streams[notice.stream_id]
            if st.ring is not None:
                st.ring.close()
                st.ring = None
            try:
                st.ring = FrameRing.attach(notice.ring)
            except (FileNotFoundError, ValueError) as exc:
                # the producer already retired that ring (it reopened its source again): a newer
                # OpenNotice follows; until then this stream's frame notices find no ring
                log.warning("stream %s: cannot attach ring %s: %s", notice.stream_id, notice.ring.name, exc)
        elif isinstance(notice, StatusNotice):
            st = self.streams[notice.stream_id]
            if notice.state in _TRACK_RESET_STATES and st.tracker is not None:
                st.reset_tracker = True  # what follows a reconnect is not the same scene; ids are not reused
            self.publisher.publish(StatusMessage(notice.stream_id, notice.state, notice.detail, notice.t_ns))  # type: ignore[arg-type]
        elif isinstance(notice, EndNotice):
            batch.ends.append(notice)
        else:  # pragma: no cover - only our own processes write here
            log.warning("ignoring unknown notice %r", notice)

    def _release_when_delivered(self, ring: FrameRing, notice: FrameNotice, message_id: int) -> None:
        """A frame's ring slot goes back to the producer once its packet is delivered: at once for live
        subscribers, once every lossless subscriber took it (credited it back) otherwise. So a frame still in
        the ring may not have reached a lossless subscriber, and is redone by the next worker should this one
        die (one that did reach it is then not yielded twice by the subscriber)."""
        if ring.closed:  # replaced meanwhile (the producer retired or lost it)
            return
        if message_id < 0 or self.publisher.lossless is None or not self.publisher.lossless.peers:
            ring.release(notice.slot, notice.seq)
        else:
            self.undelivered.append((message_id, ring, notice.slot, notice.seq))

    def _release_delivered(self) -> None:
        lossless = self.publisher.lossless
        if lossless is None:
            return
        below = lossless.acked_below()
        while self.undelivered and self.undelivered[0][0] < below:
            _, ring, slot, seq = self.undelivered.popleft()
            if not ring.closed:  # a ring replaced meanwhile (the producer retired or lost it)
                ring.release(slot, seq)

    def _restart_notice(self, notice: Any) -> bool:
        """Restarts: True when ``notice`` was handled here (or is stale and dropped)."""
        sid = getattr(notice, "stream_id", None)
        if isinstance(notice, LostNotice):  # the producer died: its ring goes, a new producer goes on
            st = self.streams[notice.stream_id]
            self.resuming.discard(notice.stream_id)  # the new producer starts afresh
            if st.ring is not None:
                st.ring.close()
                st.ring = None
            st.reset_tracker = st.tracker is not None
            self.publisher.publish(StatusMessage(notice.stream_id, "reconnecting", notice.detail, time.time_ns()))
            self.event("stream_lost", stream=notice.stream_id, last_frame=st.last_frame, packets=st.published)
            return True
        if isinstance(notice, ResumeNotice):
            if sid in self.resuming:
                self.resuming.discard(sid)
                if notice.state in STATUS_STATES:
                    self.publisher.publish(StatusMessage(notice.stream_id, notice.state,  # type: ignore[arg-type]
                                                         "resumed after a worker restart", time.time_ns()))
            return True
        # meant for the worker that died: the producer announces it all again after its resume
        return sid in self.resuming or (sid in self.streams and self.streams[sid].ended)

    def gather(self) -> Batch:
        """The next batch for the models: frames pre-processed as they arrive, while the models run the
        batch before (if any).

        The batch closes when it holds ``max_batch`` frames or a stream ended; else, once the models are
        free, ``max_wait_ms`` after its first frame (at once if that time passed while they ran, or when it
        holds a frame of every stream and all are live: no more can come). Frames of
        file sources are taken while the models run; a live frame waits unclaimed until they finish, so
        its producer keeps the newest frame ready for that moment (a frame taken early would only wait
        longer: measured p99 latency 2.1 batch times against 1.7) and a busy camera cannot fill a batch
        ahead of a quiet stream; file frames leave room in the batch for the live frames waiting. The
        packets of the batch the models finished go out as soon as they finish, not once this one closes.
        """
        wc = self.config.worker
        batch = self.lane.new_batch()
        deadline: float | None = None
        while not batch.ends and not self.stop.is_set():
            busy = self.lane.busy
            now = time.monotonic()
            if not busy:
                if self.deferred and len(batch.frames) < wc.max_batch:
                    self._take_deferred(batch)
                    if batch.frames and deadline is None:
                        deadline = now + wc.max_wait_ms / 1000.0
                    continue
                if len(batch.frames) >= wc.max_batch or (deadline is not None and now >= deadline):
                    break
                if batch.frames and self._nothing_more_can_come(batch):
                    break
                if self.lane.running is not None:
                    if not batch.frames:
                        break  # the models finished and nothing came meanwhile: publish what they made
                    # the batch may still fill: what the models made goes out meanwhile, not after
                    self._publish(*self.lane.result())
                    continue
            if busy:
                # room is kept for the live streams waiting: file frames cannot fill the batch ahead of them
                waiting = {n.stream_id for n in self.deferred if isinstance(n, FrameNotice)}
                full = len(batch.frames) + len(waiting) >= wc.max_batch
                poller, timeout_ms = (self.poll_models if full else self.poll_frames_or_models), 100
            elif deadline is not None:
                poller, timeout_ms = self.poll_frames, max(0, int((deadline - now) * 1000))
            else:  # idle; frames waiting for their acknowledgement: look often
                poller, timeout_ms = self.poll_frames, 2 if self.undelivered else 100
            ready = dict(poller.poll(timeout_ms))
            if self.lane.wake_fd in ready:
                self.lane.drain_wake()
            if self.frames_in in ready:
                self._take(self.frames_in.recv_pyobj(), batch, busy)
                if batch.frames and deadline is None:
                    deadline = time.monotonic() + wc.max_wait_ms / 1000.0
            elif not ready and deadline is None:
                self.publisher.poll_subscriptions()
                self._release_delivered()
                self._progress()  # also the supervisor's heartbeat while idle
        return batch

    # ------------------------------------------------------------------ processing

    def _load(self, notice: FrameNotice, batch: Batch) -> None:
        """Pre-process a frame straight from shared memory into ``batch``'s tensors."""
        st = self.streams[notice.stream_id]
        st.dropped = notice.dropped
        ring = st.ring
        version = ring.claim(notice.slot, notice.seq) if ring is not None else None
        if ring is None or version is None:
            st.discarded += 1  # overwritten by a newer frame (live policy)
            return
        if self.active_since is None:
            self.active_since = time.monotonic()
        view = ring.view(notice.slot)
        lane = self.lane
        letterbox = None
        if self.detector is not None and lane.det_tensors is not None:
            letterbox = self.detector.preprocess(view, lane.det_tensors[batch.tensors][len(batch.frames)])
        row = -1
        if self.encoder is not None and lane.enc_tensors is not None and st.soft is not None \
                and st.soft.wants_encoder(view):
            self.encoder.preprocess(view, lane.enc_tensors[batch.tensors][batch.encoder_rows])
            row = batch.encoder_rows
        preview = make_preview(view, self.config.preview) if self.config.preview.enabled else None
        if not ring.verify(notice.slot, version):
            ring.release(notice.slot, notice.seq)
            st.discarded += 1
            if row >= 0 and st.soft is not None:
                st.soft.discard()
            return
        batch.encoder_rows += row >= 0
        batch.frames.append(Loaded(notice, ring, letterbox, row, preview, st.reset_tracker))
        st.reset_tracker = False

    def _publish(self, batch: Batch, out: Inference) -> None:
        """Post-process a batch the models ran (NMS, tracks, soft tokens), publish its packets in order, then
        the ends of its streams."""
        n = len(batch.frames)
        dets: list[Detections | None] = [None] * n
        if self.detector is not None and out.detections_raw is not None:
            for i, item in enumerate(batch.frames):  # in frame order within each stream
                found = self.detector.postprocess(out.detections_raw[i], item.letterbox)  # type: ignore[arg-type]
                tracker = self.streams[item.notice.stream_id].tracker
                if tracker is not None:
                    if item.reset_tracker:
                        tracker.reset()
                    found = tracker.update(found)
                dets[i] = found
        enc = out.encoded
        self.model_time_s += out.detector_s + out.encoder_s
        if self.metrics is not None:
            self.metrics.on_batch(n, out.detector_s if self.detector is not None else None,
                                  out.encoder_s if enc is not None else None, self.streams)
        t_infer = time.time_ns()
        for i, item in enumerate(batch.frames):
            notice = item.notice
            st = self.streams[notice.stream_id]
            soft = SoftTokens()
            if st.soft is not None:
                if item.encoder_row >= 0 and enc is not None:
                    soft = st.soft.encoded(enc.context[item.encoder_row], enc.patches[item.encoder_row])
                else:
                    soft = st.soft.skip()
            h, w = item.ring.spec.shape_hwc[:2]
            message_id = self.publisher.publish(TokenPacket(
                stream_id=notice.stream_id,
                frame_index=notice.frame_index,
                pts_s=notice.pts_s,
                size_wh=(w, h),
                policy=st.policy,  # type: ignore[arg-type]
                dropped=notice.dropped,
                timestamps=Timestamps(notice.t_capture_ns, notice.t_decode_ns, t_infer),
                detections=dets[i],
                context_token=soft.context,
                patch_tokens=soft.patches,
                models=self.model_ids,
                grid_update=soft.grid_update,
                content_tokens=soft.content,
                query_tokens=soft.query_tokens,
                query_scores=soft.query_scores,
                preview_jpeg=item.preview_jpeg,
            ))
            self._release_when_delivered(item.ring, notice, message_id)
            st.published += 1
            st.last_frame = notice.frame_index
        if n:
            self.batches += 1
            self.frames_done += n
            self.active_until = time.monotonic()
        self._end_streams(batch.ends)

    def _end_streams(self, ends: list[EndNotice]) -> None:
        for end in ends:
            st = self.streams[end.stream_id]
            st.ended = True
            self.publisher.publish(EndOfStream(end.stream_id, st.published, end.reason, end.detail))  # type: ignore[arg-type]
            self.event("stream_end", stream=end.stream_id, packets=st.published, reason=end.reason,
                       detail=end.detail)

    def step(self) -> None:
        """Gather the next batch while the models run the one before; then start the models on it and
        publish the one before while they run."""
        batch = self.gather()
        finished = self.lane.result() if self.lane.running is not None else None
        if batch.frames:
            self.lane.submit(batch)
        if finished is not None:
            self._publish(*finished)
        if not batch.frames:  # nothing for the models: its ends follow the packets before them
            self._end_streams(batch.ends)

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        lossless = self.publisher.lossless
        # the subscribers a restarted worker waits for: told to the supervisor as soon as they change
        subscribers = (self.publisher.subscriptions, len(lossless.peers) if lossless is not None else 0)
        if force or now - self._last_progress >= _PROGRESS_EVERY_S or subscribers != self._subscribers:
            self._last_progress = now
            self._subscribers = subscribers
            self.event("progress", frames=self.frames_done,
                       streams={sid: st.published for sid, st in self.streams.items()},
                       last_frames={sid: st.last_frame for sid, st in self.streams.items()},
                       dropped={sid: st.dropped for sid, st in self.streams.items()},
                       live_subscriptions=subscribers[0], lossless_subscribers=subscribers[1])

    def main(self) -> None:
        self.event("ready", endpoint=self.config.publisher.endpoint, models=self.model_ids)
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
            self._release_delivered()
            self._progress()
        if self.lane.running is not None:  # stopped: what the models are running still goes out
            self._publish(*self.lane.result())
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
        active_s = self.active_until - self.active_since if self.active_since is not None else 0.0
        self.event("done", frames=self.frames_done, batches=self.batches, model_time_s=self.model_time_s,
                   active_s=max(0.0, active_s),
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
        self.frames_in.close(0)
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
