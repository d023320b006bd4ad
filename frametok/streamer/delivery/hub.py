"""The run's publisher process (the hub): one live and one lossless endpoint for every worker of the run.

Workers hand it their messages (``ipc.hub``); it gives each stream its sequence numbers and sends every
message through one :class:`~.publisher.Publisher`. It outlives worker restarts, so subscribers keep their
connection and their place: a restarted worker is told what the hub already published of its streams
(``HubState``) and goes on after it, and a frame redone anyway (handed over by the dead worker, published,
then announced again) is not sent twice. Every frame of a stream is sent exactly once, in order, to every
subscriber that follows the spec, and each stream's end-of-stream counts what was published. The hub acks
each message once it holds it: the worker then lets the frame's ring slot go. A slow lossless subscriber
makes the hub wait for its credit; it then stops reading, the workers' sends block, their rings fill and the
producers wait: back-pressure end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from ...config import Config
from ...errors import FrametokError
from ...grid import GridDecompressor, GridUpdate
from ...packet import EndOfStream, Message, TokenPacket, topic_for
from ...zmq_parts import recv_parts
from ..ipc.hub import ACK, BATCH, HELLO, KEY, MESSAGE, STATE, BatchStats, HubState, WorkerHello, unpack_message
from ..ipc.notices import EventNotice, RunContext, die_with_parent, set_process_name
from .metrics import MetricsServer, RunMetrics, serve_metrics
from .publisher import Publisher

__all__ = ["Hub", "hub_main"]

log = logging.getLogger(__name__)

_ENDED_DRAIN_S = 30.0  # every stream ended: lossless subscribers get everything
_STOPPED_DRAIN_S = 1.5  # stopped (Ctrl-C, SIGTERM): stop promptly
_PROGRESS_EVERY_S = 0.5
_WORKER_HWM = 64  # messages a worker may have queued towards the hub before its sends wait


class _Streams:
    """What the hub published of each stream."""

    def __init__(self, stream_ids: list[str]) -> None:
        self.ids = stream_ids
        self.last_frame = {sid: -1 for sid in stream_ids}
        self.packets = {sid: 0 for sid in stream_ids}
        self.ended: set[str] = set()
        self.max_track_id: dict[str, int] = {}

    def admit(self, message: Message) -> Message | None:
        """``message`` as it goes out (an end-of-stream counts what was published), or None: not twice."""
        sid = message.stream_id
        if isinstance(message, TokenPacket):
            if message.frame_index <= self.last_frame.get(sid, -1) or sid in self.ended:
                return None  # redone by a restarted worker: published already
            self.last_frame[sid] = message.frame_index
            self.packets[sid] = self.packets.get(sid, 0) + 1
            tracks = message.detections.track_id if message.detections is not None else None
            if tracks is not None and len(tracks):
                self.max_track_id[sid] = max(self.max_track_id.get(sid, 0), int(tracks.max()))
        elif isinstance(message, EndOfStream):
            if sid in self.ended:
                return None
            self.ended.add(sid)
            return EndOfStream(sid, self.packets.get(sid, 0), message.reason, message.detail)
        return message

    def state(self, ids: list[str]) -> HubState:
        return HubState({s: self.last_frame.get(s, -1) for s in ids}, {s: self.packets.get(s, 0) for s in ids},
                        frozenset(s for s in ids if s in self.ended),
                        {s: self.max_track_id[s] for s in ids if s in self.max_track_id})


class Hub:
    def __init__(self, config: Config, run: RunContext, stop: Event, finish: Event) -> None:
        self.config, self.run, self.stop, self.finish = config, run, stop, finish
        self.ctx = zmq.Context()
        self.events_out = self.ctx.socket(zmq.PUSH)
        self.events_out.setsockopt(zmq.LINGER, 2000)
        self.events_out.connect(run.events_endpoint)
        self.workers_in = self.ctx.socket(zmq.ROUTER)
        self.workers_in.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.workers_in.setsockopt(zmq.RCVHWM, _WORKER_HWM)
        self.workers_in.setsockopt(zmq.LINGER, 0)
        self.workers_in.bind(run.hub_endpoint)
        self.publisher = Publisher(self.ctx, config.publisher, {})
        self.publisher.join_hooks.append(self._on_join)
        if self.publisher.lossless is not None:  # waiting for a slow lossless subscriber is no hang
            self.publisher.lossless.on_wait = self._progress
        self.streams = _Streams([s.id for s in config.sources])
        self.owners: dict[str, bytes] = {}  # stream -> the connection of the worker serving it now
        self.worker_streams: dict[int, list[str]] = {}
        self.acks: dict[bytes, int] = {}  # connection -> local id to ack below
        self.held: deque[tuple[bytes, int, Message]] = deque()  # before wait_subscribers arrived
        self.grids: dict[str, GridDecompressor] = {}  # each stream's grid as in-sync subscribers hold it
        self.holding = config.publisher.wait_subscribers > 0
        self.metrics: RunMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        if config.metrics.enabled:
            self.metrics, self.metrics_server = serve_metrics(config.metrics, self.streams.ids,
                                                              config.worker.max_batch)
            self.publisher.sent_hooks.append(self.metrics.on_sent)
        self.poller = zmq.Poller()
        self.poller.register(self.workers_in, zmq.POLLIN)
        self.poller.register(self.publisher.socket, zmq.POLLIN)
        if self.publisher.lossless is not None:
            self.poller.register(self.publisher.lossless.socket, zmq.POLLIN)
        self._last_progress = 0.0

    # ------------------------------------------------------------------ to the supervisor and workers

    def event(self, event: str, **data: Any) -> None:
        self.events_out.send_pyobj(EventNotice("hub", event, data))

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= _PROGRESS_EVERY_S:
            self._last_progress = now
            lossless = self.publisher.lossless
            self.event("progress", streams=dict(self.streams.packets), last_frames=dict(self.streams.last_frame),
                       live_subscriptions=self.publisher.subscriptions,
                       lossless_subscribers=len(lossless.peers) if lossless is not None else 0)

    def _to_worker(self, identity: bytes, *parts: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):  # EHOSTUNREACH: that worker is gone (a new one says hello)
            self.workers_in.send_multipart([identity, *parts])

    def _on_join(self, prefixes: Any) -> None:
        """A subscriber joined or lost sync: the workers serving those streams make their next grid a key."""
        wanted = list(prefixes)
        for identity in {self.owners[s] for s in self.owners if any(topic_for(s).startswith(p) for p in wanted)}:
            self._to_worker(identity, KEY, pickle.dumps(wanted))

    def _flush_acks(self) -> None:
        for identity, below in self.acks.items():
            self._to_worker(identity, ACK, str(below).encode())
        self.acks.clear()

    # ------------------------------------------------------------------ from the workers

    def _hello(self, identity: bytes, hello: WorkerHello) -> None:
        ids = list(hello.infos)
        self.worker_streams[hello.worker] = ids
        for sid in ids:
            self.owners[sid] = identity
        self._to_worker(identity, STATE, pickle.dumps(self.streams.state(ids)))
        for info in hello.infos.values():  # also while holding: subscribers already here learn the stream
            # (1.2) every info names all the run's streams, so a subscriber knows when every one has ended
            info = dataclasses.replace(info, streams=tuple(sorted(self.streams.ids)))
            self.publisher.infos[info.stream_id] = info
            self.publisher.publish(info)

    def _publish(self, identity: bytes, local_id: int, message: Message) -> None:
        out = self.streams.admit(message)
        if isinstance(out, TokenPacket) and out.grid_update is not None:
            self.publisher.publish(out, self._whole_grid(out))
        elif out is not None:
            self.publisher.publish(out)
        self.acks[identity] = local_id + 1

    def _whole_grid(self, packet: TokenPacket) -> Callable[[], TokenPacket] | None:
        """Follow the stream's grid as every in-sync subscriber holds it; the frame with that grid whole (a
        key), for a subscriber out of sync (a lossless joiner gets it alone)."""
        update = packet.grid_update
        assert update is not None
        # no copy per frame: ``whole`` runs inside this packet's publish, before the next update
        grid = self.grids.setdefault(packet.stream_id, GridDecompressor()).apply(update, copy=False)
        if grid is None:
            return None

        def whole() -> TokenPacket:
            key = GridUpdate("key", update.n, update.grid_hw, values=grid, reason="join")
            return dataclasses.replace(packet, grid_update=key)

        return whole

    def _batch(self, stats: BatchStats) -> None:
        if self.metrics is not None:
            self.metrics.on_batch(stats.worker, stats.frames, stats.detector_s, stats.encoder_s, stats.queues,
                                  stats.discarded)

    def _take(self, parts: list[Any]) -> None:
        identity, kind = bytes(parts[0]), bytes(parts[1])
        if kind == MESSAGE:
            local_id, message = unpack_message(parts[1:])
            if self.holding:
                self.held.append((identity, local_id, message))
            else:
                self._publish(identity, local_id, message)
        elif kind == HELLO:
            self._hello(identity, pickle.loads(parts[2]))
        elif kind == BATCH:
            self._batch(pickle.loads(parts[2]))

    def _release_held(self) -> None:
        if not self.holding or self.publisher.subscribers < self.config.publisher.wait_subscribers:
            return
        self.holding = False
        for info in self.publisher.infos.values():
            self.publisher.publish(info)
        while self.held:
            self._publish(*self.held.popleft())

    # ------------------------------------------------------------------ the loop

    def _done(self) -> bool:
        if self.finish.is_set():  # the supervisor: every worker has exited
            return True
        return len(self.streams.ended) == len(self.streams.ids) and not self.held

    def main(self) -> None:
        self.event("ready", endpoint=self.config.publisher.endpoint)
        while not self._done():
            ready = dict(self.poller.poll(100))
            if self.workers_in in ready:
                self._take_waiting(256)  # what is waiting, then a look at the subscribers
            self.publisher.poll_subscriptions()
            self._release_held()
            self._flush_acks()
            self._progress()
        # every worker has exited: what they sent last (their end-of-stream) may still wait unread
        self._take_waiting(None)
        self._release_held()
        self._flush_acks()
        self._end_the_rest()
        self._progress(force=True)

    def _end_the_rest(self) -> None:
        """The run ends (stopped, or its workers gone) before some streams did: their subscribers still get
        an end-of-stream (spec §3.5), rather than waiting for one until their own timeout."""
        if self.holding:
            return  # nobody to tell: the subscribers awaited never came
        for sid in self.streams.ids:
            if sid not in self.streams.ended:
                out = self.streams.admit(EndOfStream(sid, 0, "stopped", "the run ended before this stream did"))
                if out is not None:
                    self.publisher.publish(out)

    def _take_waiting(self, limit: int | None) -> None:
        taken = 0
        while limit is None or taken < limit:
            try:
                parts = recv_parts(self.workers_in, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._take(parts)
            taken += 1

    def close(self) -> None:
        stopped = self.stop.is_set()
        self.publisher.close(drain_s=_STOPPED_DRAIN_S if stopped else _ENDED_DRAIN_S)
        self.event("done", bytes_sent=self.publisher.bytes_sent, packets=dict(self.streams.packets))
        if self.metrics_server is not None:  # served until the end, lossless drain included
            self.metrics_server.close()
        self.workers_in.close(0)
        self.events_out.close()
        self.ctx.term()


def hub_main(config: Config, run: RunContext, stop: Event, finish: Event, log_level: int = logging.WARNING) -> None:
    """Entry point of the hub process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    set_process_name("frametok-hub")
    logging.basicConfig(level=log_level, format="%(levelname)s hub %(message)s")
    try:
        hub = Hub(config, run, stop, finish)
    except FrametokError as exc:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(run.events_endpoint)
        sock.send_pyobj(EventNotice("hub", "failed", {"error": str(exc), "kind": type(exc).__name__}))
        sock.close()
        ctx.term()
        raise SystemExit(3) from None
    try:
        hub.main()
    finally:
        hub.close()
