"""Prometheus metrics of a run, kept and served by its publisher process (the hub), one endpoint per run.

Per stream: frame packets, messages by kind, bytes and tokens sent (and what they would have been
without cross-frame compression), producer drops, frames discarded, fps, stage latencies from the
packet timestamps, the depth of the source's shared-memory ring, and the source's state. Per
worker (label ``worker``): batch sizes and model times. The publisher reports every message it sent
(:meth:`RunMetrics.on_sent`); each worker reports every batch (:meth:`RunMetrics.on_batch`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, ProcessCollector, start_http_server

from ...config import MetricsConfig
from ...errors import PipelineError
from ...packet import STATUS_STATES, EndOfStream, Message, StatusMessage, StreamInfo, TokenPacket
from ...sdk.costs import packet_cost

__all__ = ["MetricsServer", "RunMetrics", "serve_metrics"]

_FPS_WINDOW_S = 2.0
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MODEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STREAM_STATES: tuple[str, ...] = (*STATUS_STATES, "ended")
_KINDS = {TokenPacket: "frame", StatusMessage: "status", EndOfStream: "eos", StreamInfo: "info"}


class RunMetrics:
    """The metrics of a run, in their own registry."""

    def __init__(self, stream_ids: Iterable[str], max_batch: int = 4, registry: CollectorRegistry | None = None,
                 process_metrics: bool = True) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:
            ProcessCollector(registry=r)
        s = ["stream"]
        self.frames = Counter("frametok_frames", "Frame packets published", s, registry=r)
        self.messages = Counter("frametok_messages", "Messages published, by kind (frame, status, eos, info)",
                                [*s, "kind"], registry=r)
        self.bytes = Counter("frametok_bytes_sent", "Bytes published (topic, header and buffers; live endpoint)",
                             s, registry=r)
        self.preview_bytes = Counter("frametok_preview_bytes_sent", "Bytes of JPEG previews published", s,
                                     registry=r)
        self.tokens = Counter("frametok_tokens_sent", "Tokens sent: hard (detections) and soft (context, content, "
                              "query and patch tokens)", [*s, "kind"], registry=r)
        self.tokens_full = Counter("frametok_tokens_uncompressed", "Tokens the frame packets would have carried "
                                   "without cross-frame compression of the patch grid", s, registry=r)
        self.patch_bytes = Counter("frametok_patch_bytes_sent", "Bytes of patch-grid buffers sent (keyframes, "
                                   "deltas)", s, registry=r)
        self.patch_bytes_full = Counter("frametok_patch_bytes_uncompressed", "Bytes of patch-grid buffers without "
                                        "cross-frame compression (a whole grid per encoded frame)", s, registry=r)
        self.dropped = Counter("frametok_frames_dropped", "Frames the producer dropped (live: the worker was "
                               "behind)", s, registry=r)
        self.discarded = Counter("frametok_frames_discarded", "Frames overwritten while the worker read them",
                                 s, registry=r)
        self.fps = Gauge("frametok_stream_fps", f"Frame packets per second over the last {_FPS_WINDOW_S:.0f} s",
                         s, registry=r)
        self.latency = Histogram(
            "frametok_stage_latency_seconds",
            "Time a frame spent in each stage, from its timestamps: decode (capture to decoded), infer (decoded to "
            "inferred, waiting for a batch included), publish (inferred to published), total (capture to published)",
            [*s, "stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("frametok_queue_depth", "Frames waiting in the source's shared-memory ring", s,
                           registry=r)
        self.state = Enum("frametok_stream_state", "The source's state", s, states=list(STREAM_STATES),
                          registry=r)
        self.batch = Histogram("frametok_worker_batch_size", "Frames per model call", ["worker"],
                               buckets=tuple(float(b) for b in range(1, max(1, max_batch) + 1)), registry=r)
        self.model = Histogram("frametok_worker_model_seconds", "Model time per batch (detector: inference, "
                               "post-processing and tracking; encoder: inference)", ["worker", "model"],
                               buckets=_MODEL_BUCKETS, registry=r)
        self._times: dict[str, deque[float]] = {}
        self._dropped: dict[str, int] = {}
        self._discarded: dict[str, int] = {}
        for sid in stream_ids:  # every series exists (at 0) from the start
            self._init_stream(sid)

    def _init_stream(self, sid: str) -> None:
        self._times[sid] = deque()
        self._dropped.setdefault(sid, 0)
        self._discarded.setdefault(sid, 0)
        for metric in (self.frames, self.bytes, self.preview_bytes, self.tokens_full, self.patch_bytes,
                       self.patch_bytes_full, self.dropped, self.discarded, self.fps, self.queue):
            metric.labels(sid)
        for kind in ("hard", "soft"):
            self.tokens.labels(sid, kind)
        for kind in _KINDS.values():
            self.messages.labels(sid, kind)
        for stage in ("decode", "infer", "publish", "total"):
            self.latency.labels(sid, stage)
        self.state.labels(sid).state("connecting")

    # ------------------------------------------------------------------ hooks

    def on_sent(self, message: Message, nbytes: int, t_publish_ns: int) -> None:
        """The publisher sent ``message`` (``nbytes`` on the wire) at ``t_publish_ns``."""
        sid = message.stream_id
        if sid not in self._times:
            self._init_stream(sid)
        self.messages.labels(sid, _KINDS[type(message)]).inc()
        self.bytes.labels(sid).inc(nbytes)
        if isinstance(message, TokenPacket):
            self._on_packet(message, t_publish_ns)
        elif isinstance(message, StatusMessage):
            self.state.labels(sid).state(message.state)
        elif isinstance(message, EndOfStream):
            self.state.labels(sid).state("ended")
            self.fps.labels(sid).set(0.0)
            self._times[sid].clear()

    def _on_packet(self, packet: TokenPacket, t_publish_ns: int) -> None:
        sid = packet.stream_id
        self.frames.labels(sid).inc()
        cost = packet_cost(packet)
        self.tokens.labels(sid, "hard").inc(cost.hard_tokens)
        self.tokens.labels(sid, "soft").inc(cost.soft_tokens_sent)
        self.tokens_full.labels(sid).inc(cost.tokens_full)
        self.patch_bytes.labels(sid).inc(cost.patch_bytes_sent)
        self.patch_bytes_full.labels(sid).inc(cost.patch_bytes_full)
        self.preview_bytes.labels(sid).inc(cost.preview_bytes)
        last = self._dropped[sid]  # cumulative in the packets; a restarted producer counts from 0 again
        self.dropped.labels(sid).inc(packet.dropped - last if packet.dropped >= last else packet.dropped)
        self._dropped[sid] = packet.dropped
        ts = packet.timestamps
        stages = (("decode", ts.t_capture_ns, ts.t_decode_ns), ("infer", ts.t_decode_ns, ts.t_infer_ns),
                  ("publish", ts.t_infer_ns, t_publish_ns), ("total", ts.t_capture_ns, t_publish_ns))
        for stage, start, end in stages:
            if start and end >= start:
                self.latency.labels(sid, stage).observe((end - start) / 1e9)
        now = time.monotonic()
        times = self._times[sid]
        times.append(now)
        while times and now - times[0] > _FPS_WINDOW_S:
            times.popleft()
        if len(times) >= 2 and times[-1] > times[0]:
            self.fps.labels(sid).set((len(times) - 1) / (times[-1] - times[0]))

    def on_batch(self, worker: int, frames: int, detector_s: float | None, encoder_s: float | None,
                 queues: Mapping[str, int], discarded: Mapping[str, int]) -> None:
        """Worker ``worker`` ran a batch of ``frames``; ``queues``: frames waiting in its streams' rings,
        ``discarded``: frames overwritten while it read them (cumulative, per stream)."""
        w = str(worker)
        if frames:
            self.batch.labels(w).observe(frames)
            if detector_s is not None:
                self.model.labels(w, "detector").observe(detector_s)
            if encoder_s is not None:
                self.model.labels(w, "encoder").observe(encoder_s)
        for sid, depth in queues.items():
            if sid not in self._times:
                self._init_stream(sid)
            self.queue.labels(sid).set(depth)
        for sid, count in discarded.items():
            if sid not in self._times:
                self._init_stream(sid)
            grew = count - self._discarded[sid]
            if grew > 0:
                self.discarded.labels(sid).inc(grew)
            self._discarded[sid] = count


class MetricsServer:
    """The HTTP endpoint (``/metrics``) of a registry, served from a background thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise PipelineError(f"metrics: cannot serve on {host}:{port}: {exc.strerror or exc} "
                                "(port in use? set metrics.port or --metrics-port)") from exc
        self.host, self.port = host, int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


def serve_metrics(config: MetricsConfig, stream_ids: Iterable[str], max_batch: int) -> tuple[RunMetrics,
                                                                                               MetricsServer]:
    """A run's metrics and their endpoint, as configured."""
    metrics = RunMetrics(stream_ids, max_batch)
    return metrics, MetricsServer(metrics.registry, config.host, config.port)

