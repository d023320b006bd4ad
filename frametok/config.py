"""Typed, frozen run configuration, loaded from YAML; unknown keys and bad values are errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .packet import validate_stream_id

__all__ = [
    "DETECTOR_AS_ENCODER",
    "Config",
    "CurveConfig",
    "DetectorConfig",
    "EncoderConfig",
    "HealthConfig",
    "MetricsConfig",
    "PreviewConfig",
    "PublisherConfig",
    "QueryConfig",
    "SourceConfig",
    "SupervisorConfig",
    "WorkerConfig",
    "load_config",
    "parse_config",
    "source_kind",
]

SourceKind = Literal["file", "camera", "network", "images", "demo"]
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "tcp://", "udp://", "srt://")


def source_kind(uri: str) -> SourceKind:
    """What kind of source a URI names: a camera index/device, a network stream, an image folder, ..."""
    if uri in ("demo", "demo:") or uri.startswith("demo://"):
        return "demo"
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "camera"
    if uri.lower().startswith(NETWORK_SCHEMES):
        return "network"
    if any(ch in uri for ch in "*?[") or Path(uri).is_dir():
        return "images"
    return "file"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class SourceConfig(_Frozen):
    """One input stream."""

    id: str
    uri: str = Field(min_length=1)
    policy: Literal["file", "live"] | None = Field(
        None, description="file: every frame, back-pressure; live: newest frame wins (default by kind)"
    )
    slots: int | None = Field(
        None, ge=2, le=64,
        description="frames in the source's shared-memory ring (default: 2 x worker.max_batch and at least 4 "
        "for file sources, so the next batch is decoded while the worker runs one; 4 for live sources)",
    )
    fps: float | None = Field(
        None, gt=0.0, le=1000.0,
        description="image folders: the frame rate that gives each image its pts_s (None: no pts); "
        "cameras: the frame rate to ask the camera for",
    )
    stall_timeout_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="cameras and network streams: no frame for this long is a stall"
    )
    open_timeout_s: float = Field(10.0, gt=0.0, le=3600.0, description="how long opening a source may take")
    reconnect: bool | None = Field(
        None, description="reopen a camera or network stream that fails, stalls or ends, with capped exponential "
        "backoff (default: yes for cameras and network streams; files and images never reconnect)",
    )
    reconnect_initial_s: float = Field(0.5, gt=0.0, le=3600.0, description="first wait before reopening")
    reconnect_max_s: float = Field(10.0, gt=0.0, le=3600.0, description="the wait doubles up to this")
    reconnect_attempts: int = Field(
        0, ge=0, description="give up (status offline, end of stream) after this many failed attempts in a row "
        "(0: never give up)",
    )
    end_on_eof: bool = Field(
        False, description="network streams: the server closing the stream ends it (end-of-stream) instead of "
        "being a stall to reconnect from",
    )
    sequence: bool = Field(
        False, description="image folders: the images are frames of one scene, in order (tracks continue from "
        "image to image); false: unrelated photos, every image its own scene (no track crosses images; a track "
        "id is still never handed out twice)",
    )
    options: dict[str, str] = Field(
        default_factory=dict, description="network streams: FFmpeg options, e.g. {rtsp_transport: tcp}"
    )
    start_frame: int = Field(
        0, ge=0, description="files: start at this frame (seek near it, decode to it; frame indices stay absolute)"
    )
    every: int = Field(1, ge=1, description="files: keep every Nth frame from start_frame (1: all)")
    motion_threshold: float | None = Field(
        None, ge=0.0, le=1.0,
        description="motion gating: a frame in which no region of a small grey thumbnail changed by more than "
        "this (0..1 of full scale) since the last frame the models ran on is still: the detector and the encoder "
        "are not run on it and its packet re-sends the last tokens, marked reused (0: off; default: off for "
        "file sources, frametok.models.soft_tokens.MOTION_THRESHOLD for live ones)",
    )

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_stream_id(value)

    @field_validator("uri", mode="before")
    @classmethod
    def _camera_index(cls, value: Any) -> Any:
        """``uri: 0`` in YAML is the camera index 0, not an error."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _live_options(self) -> SourceConfig:
        kind = self.kind
        if self.reconnect and kind not in ("camera", "network"):
            raise ValueError(f"source {self.id!r}: reconnect applies to cameras and network streams, not {kind}")
        if (self.start_frame or self.every > 1) and kind != "file":
            raise ValueError(f"source {self.id!r}: start_frame and every apply to video files, not {kind}")
        if self.sequence and kind != "images":
            raise ValueError(f"source {self.id!r}: sequence applies to image folders, not {kind}")
        if self.end_on_eof and kind != "network":
            raise ValueError(f"source {self.id!r}: end_on_eof applies to network streams, not {kind}")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"source {self.id!r}: reconnect_max_s ({self.reconnect_max_s}) is below reconnect_initial_s "
                f"({self.reconnect_initial_s})"
            )
        return self

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.uri)

    @property
    def effective_policy(self) -> Literal["file", "live"]:
        if self.policy is not None:
            return self.policy
        return "live" if self.kind in ("camera", "network") else "file"

    @property
    def effective_motion_threshold(self) -> float:
        """The motion gating threshold in force (0: off)."""
        if self.motion_threshold is not None:
            return self.motion_threshold
        from .models.soft_tokens import MOTION_THRESHOLD

        return MOTION_THRESHOLD if self.effective_policy == "live" else 0.0

    @property
    def effective_reconnect(self) -> bool:
        """Whether the source is reopened when it fails, stalls or (network, unless end_on_eof) ends."""
        if self.reconnect is not None:
            return self.reconnect
        return self.kind in ("camera", "network")


class TrackerConfig(_Frozen):
    """ByteTrack over each stream's detections: ``track_id`` in every packet (-1: not tracked yet)."""

    enabled: bool = True
    activation_threshold: float = Field(0.25, gt=0.0, le=1.0, description="score that starts a track")
    lost_track_buffer: int = Field(60, ge=0, le=100000, description="frames (at 30 fps) a lost track is kept")
    matching_threshold: float = Field(0.9, gt=0.0, le=1.0)
    min_consecutive_frames: int = Field(1, ge=1, le=1000)


class DetectorConfig(_Frozen):
    model: str = Field("yolov8n", min_length=1, description="registry name, or path to .onnx / manifest .json")
    conf_threshold: float = Field(0.25, gt=0.0, lt=1.0)
    iou_threshold: float = Field(0.7, gt=0.0, le=1.0)
    max_det: int = Field(300, ge=1, le=10000)
    rect: bool | None = Field(
        None, description="rect letterbox: each frame runs at the smallest input of its aspect, padded to a multiple "
        "of the stride (768x576 at 640x480), as Ultralytics' default predict; needs a graph of dynamic height and "
        "width (`frametok export yolo`). null: on when the graph has them; false: the square input_size_hw",
    )
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)


class QueryConfig(_Frozen):
    """Something to watch for: an exemplar image (whole or a crop) or a vector from a .npy file."""

    name: str = Field(min_length=1, max_length=64)
    image: str | None = Field(None, description="exemplar image, encoded with the stream's encoder")
    crop_xyxy: tuple[int, int, int, int] | None = Field(None, description="crop of the image, in pixels")
    vector: str | None = Field(None, description=".npy file with one (D,) vector in the encoder's token space")

    @model_validator(mode="after")
    def _one_source(self) -> QueryConfig:
        if (self.image is None) == (self.vector is None):
            raise ValueError(f"query {self.name!r}: give exactly one of image or vector")
        if self.crop_xyxy is not None:
            x1, y1, x2, y2 = self.crop_xyxy
            if self.image is None or x2 <= x1 or y2 <= y1 or min(x1, y1) < 0:
                raise ValueError(
                    f"query {self.name!r}: crop_xyxy needs an image and x1 < x2, y1 < y2, got {self.crop_xyxy}"
                )
        return self


DETECTOR_AS_ENCODER = "detector"  # encoder.model: the detector's neck feature map is the patch grid


class EncoderConfig(_Frozen):
    model: str = Field(
        "dinov2_vits14", min_length=1,
        description="the encoder (a name or .onnx path); 'detector': the detector's own neck feature map (its "
        "manifest's neck output, `frametok export yolo WEIGHTS.pt --neck P5`) is the patch grid, cropped to the "
        "cells over the image: hard and soft tokens from one model pass",
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="wire precision of soft tokens")
    patches: bool = Field(True, description="send the patch grid (else context and content tokens only)")
    pool: int = Field(1, ge=0, le=64, description="content tokens: the grid average-pooled to pool x pool (0: off)")
    compress: bool = Field(True, description="send only the patch tokens that changed (cross-frame compression)")
    tau: float = Field(0.05, ge=0.0, lt=1.0, description="a patch token is resent when its cosine distance exceeds tau")
    keyframe_interval: int = Field(100, ge=0, description="a full grid every N frames (0: only when needed)")
    scene_cut_share: float = Field(0.5, gt=0.0, le=1.0, description="a full grid when this share of patches changed")
    skip_threshold: float = Field(
        0.0, ge=0.0, le=1.0,
        description="skip the encoder when the mean absolute pixel change since the last encoded frame is below "
        "this (0..1 of full scale; 0: never skip)",
    )
    queries: tuple[QueryConfig, ...] = ()
    codebook: str | None = Field(
        None, min_length=1,
        description="a codebook (`frametok codebook fit`: NAME.npy + NAME.json) fitted on this encoder: each patch "
        "token also travels as its code, a (gh, gw) int16 code grid (protocol 1.2); needs patches and compress",
    )

    @field_validator("queries")
    @classmethod
    def _unique_names(cls, value: tuple[QueryConfig, ...]) -> tuple[QueryConfig, ...]:
        names = [q.name for q in value]
        if len(set(names)) != len(names):
            raise ValueError(f"query names must be unique, got {names}")
        return value

    @property
    def from_detector(self) -> bool:
        """Whether the soft tokens come from the detector's neck (``model: detector``), not an encoder of their own."""
        return self.model == DETECTOR_AS_ENCODER

    @model_validator(mode="after")
    def _codes_travel_with_the_grid(self) -> EncoderConfig:
        if self.codebook is not None and not (self.patches and self.compress):
            raise ValueError("codebook: the code grid travels with the compressed patch grid: it needs "
                             "patches: true and compress: true")
        return self

    @model_validator(mode="after")
    def _nothing_to_skip_in_the_neck(self) -> EncoderConfig:
        if self.from_detector and self.skip_threshold != 0.0:
            raise ValueError(f"skip_threshold: {self.skip_threshold} has no effect with model 'detector': the soft "
                             "tokens come from the detector's own pass, which runs on every frame anyway (skipping "
                             "saves nothing); leave it at 0 or name an encoder")
        return self


class WorkerConfig(_Frozen):
    max_batch: int = Field(4, ge=1, le=256)
    max_wait_ms: float = Field(10.0, ge=0.0, le=10_000.0)
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    threads: int = Field(0, ge=0, le=256, description="onnxruntime intra-op threads (0: one per core)")
    spin_wait: bool = Field(
        False, description="onnxruntime's threads spin while they wait for work: a little faster for a model "
        "alone on its cores, slower beside decoding and pre-/post-processing (2 CPU cores, 4 streams: 11.4 vs "
        "13.3 frames/s)",
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="auto: a model's fp16 graph (manifest 'fp16', from `export --half`) on CUDA/TensorRT, its "
        "parity-checked int8 graph (manifest 'int8', from `export --int8`) on the CPU provider, fp32 otherwise; "
        "fp16 / int8: those graphs on any provider (refused for a model without one); fp32: always fp32",
    )
    in_flight: int | Literal["auto"] = Field(
        "auto", description="batches the models run at once in a worker, each on its share of the worker's threads "
        "(onnxruntime sessions take concurrent runs): on a CPU a small model keeps the cores busier as several "
        "single-threaded runs than as one multi-threaded run (int8 YOLOv8n at 640x480 on 2 cores: 16.0 ms a frame "
        "on 2 threads, 10.5 as two 1-thread runs), but each batch takes longer. auto: 2 on the CPU provider for a "
        "worker with at least 2 threads whose streams are all files, else 1 (live streams keep their latency)",
    )
    count: int = Field(
        1, ge=1, le=64, description="worker processes (on CPU they split `threads`); streams are assigned to "
        "workers by stream id: sorted, then in turn (stream i of the sorted ids to worker i mod count)",
    )
    devices: tuple[int, ...] | None = Field(
        None, description="one worker per accelerator: worker i runs on device devices[i] (CUDA/TensorRT "
        "device_id); sets count to their number",
    )

    @model_validator(mode="after")
    def _devices_set_count(self) -> WorkerConfig:
        if self.devices is not None:
            if not self.devices:
                raise ValueError("devices: expected at least one device id, got []")
            if len(set(self.devices)) != len(self.devices) or min(self.devices) < 0:
                raise ValueError(f"devices: expected distinct device ids >= 0, got {list(self.devices)}")
            if self.count not in (1, len(self.devices)):
                raise ValueError(f"count {self.count} does not match devices {list(self.devices)}: give one of them")
            object.__setattr__(self, "count", len(self.devices))
        return self

    @field_validator("in_flight")
    @classmethod
    def _in_flight_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 8:
            raise ValueError(f"in_flight: expected 1..8 batches or 'auto', got {value}")
        return value

    def threads_per_worker(self) -> int:
        """onnxruntime threads for each worker: ``threads`` (0: the machine's cores) split between them."""
        total = self.threads or os.cpu_count() or 1
        return max(1, total // self.count) if self.count > 1 else self.threads


class CurveConfig(_Frozen):
    """ZeroMQ CURVE encryption and authentication for the publisher's sockets."""

    secret_key: str = Field(description="the publisher's secret key file (from `frametok keys`)")
    authorized_keys: str = Field(description="folder of public key files of the subscribers allowed in")


class PublisherConfig(_Frozen):
    endpoint: str = "tcp://127.0.0.1:5555"
    lossless_endpoint: str | None = Field(
        None, description="ROUTER endpoint for lossless subscribers (credit-based back-pressure)"
    )
    lossless_timeout_s: float = Field(
        60.0, gt=0.0, description="drop a lossless subscriber that grants no credit for this long"
    )
    lossless_max_subscribers: int = Field(
        16, ge=1, description="lossless subscribers admitted at once (a HELLO beyond them is ignored until one leaves)"
    )
    forced_keyframe_gap: int = Field(
        30, ge=1, description="at most one keyframe forced by live subscribers (joining, resyncing) per stream "
        "per this many frames"
    )
    curve: CurveConfig | None = None
    wait_subscribers: int = Field(
        0, ge=0, description="hold the first packet until this many subscribers are connected"
    )
    hwm: int = Field(
        64, ge=1, description="live: messages queued per subscriber before a slow one loses them (ZeroMQ SNDHWM)"
    )

    @field_validator("endpoint", "lossless_endpoint")
    @classmethod
    def _zmq_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"expected a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH), got {value!r}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> PublisherConfig:
        if self.lossless_endpoint == self.endpoint:
            raise ValueError("lossless_endpoint must differ from endpoint")
        return self


class PreviewConfig(_Frozen):
    """A small JPEG of the frame in every packet, so viewers need no access to the source."""

    enabled: bool = False
    max_side: int = Field(384, ge=32, le=4096, description="longest side of the preview, in pixels")
    quality: int = Field(70, ge=10, le=100, description="JPEG quality")


class MetricsConfig(_Frozen):
    """Prometheus metrics of a run, served over HTTP by the worker process (``/metrics``)."""

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1, description="address to serve on (0.0.0.0: every interface)")
    port: int = Field(9464, ge=1, le=65535, description="TCP port of the metrics endpoint")


class HealthConfig(_Frozen):
    """Liveness and per-stream state over HTTP, served by the supervisor (``/healthz``, ``/streams``)."""

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1, description="address to serve on (0.0.0.0: every interface)")
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the health endpoint")


class SupervisorConfig(_Frozen):
    """How the supervisor restarts a producer or worker that crashed or hung."""

    restart: bool = Field(True, description="restart a crashed or hung process (else its stream, or the run, fails)")
    max_restarts: int = Field(5, ge=0, le=1000, description="give a process up after this many restarts in window_s")
    window_s: float = Field(300.0, gt=0.0, description="restarts older than this no longer count")
    backoff_initial_s: float = Field(0.5, ge=0.0, le=3600.0, description="first wait before a restart")
    backoff_max_s: float = Field(10.0, ge=0.0, le=3600.0, description="the wait doubles up to this")
    heartbeat_timeout_s: float = Field(
        60.0, gt=0.0, le=86400.0, description="a running process that sends nothing for this long is hung: killed "
        "and restarted",
    )


class Config(_Frozen):
    """A whole ``frametok run``."""

    sources: tuple[SourceConfig, ...] = Field(min_length=1)
    detector: DetectorConfig | None = DetectorConfig()
    encoder: EncoderConfig | None = EncoderConfig()
    worker: WorkerConfig = WorkerConfig()
    publisher: PublisherConfig = PublisherConfig()
    preview: PreviewConfig = PreviewConfig()
    health: HealthConfig = HealthConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    metrics: MetricsConfig = MetricsConfig()
    models_dir: str | None = Field(None, description="where named models are looked up (also FRAMETOK_MODELS)")

    @model_validator(mode="after")
    def _check(self) -> Config:
        ids = [s.id for s in self.sources]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate source ids: {dupes}")
        if self.detector is None and self.encoder is None:
            raise ValueError("nothing to compute: both detector and encoder are null")
        if self.encoder is not None and self.encoder.from_detector and self.detector is None:
            raise ValueError("encoder.model: 'detector' takes the soft tokens from the detector's neck, but "
                             "detector is null")
        return self

    def ring_slots(self, source: SourceConfig) -> int:
        """Frames in ``source``'s ring: its ``slots``, else room for the batches of a file source in the
        models (``worker.in_flight``) and the next one decoded and pre-processed meanwhile, 4 for a live one (the newest
        frame wins: a deeper ring would only hold older frames)."""
        if source.slots is not None:
            return source.slots
        if source.effective_policy == "live":
            return 4
        return max(4, (self.most_in_flight() + 1) * self.worker.max_batch)

    def most_in_flight(self) -> int:
        """The most batches a worker may run at once: ``worker.in_flight``; auto: 2 when every source is a
        file (the worker makes it 1 off the CPU provider or with one thread), 1 with a live source."""
        wc = self.worker
        if isinstance(wc.in_flight, int):
            return wc.in_flight
        return 2 if all(s.effective_policy == "file" for s in self.sources) else 1


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    errors = exc.errors()
    for err in errors:
        if err["type"] == "too_short" and any(
            len(other["loc"]) > len(err["loc"]) and other["loc"][: len(err["loc"])] == err["loc"] for other in errors
        ):
            continue  # "sources: Tuple should have at least 1 item": only because an item was refused, said above
        loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"  {loc}: {err['msg']}{shown}")
    return f"invalid config {origin}:\n" + "\n".join(lines)


def parse_config(data: Mapping[str, Any], origin: str = "<dict>") -> Config:
    """Validate a config mapping; raise :class:`ConfigError` listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"invalid config {origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from exc


def load_config(path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML config file (or start empty), apply ``overrides`` (top-level keys), validate."""
    data: dict[str, Any] = {}
    origin = "<flags>"
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            kind = type(loaded).__name__
            raise ConfigError(f"invalid config {path}: expected a mapping at the top level, got {kind}")
        data = loaded
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(data.get(key), Mapping):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, origin)
