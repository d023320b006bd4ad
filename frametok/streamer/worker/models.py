"""The models a worker runs: loaded once per worker process, and described for each stream's info."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ...config import Config
from ...errors import ConfigError
from ...models.detector import Detector
from ...models.encoder import Encoder
from ...models.manifest import DetectorManifest
from ...models.neck import NeckReader
from ...models.session import ModelFiles, check_precision, create_session, resolve_providers
from ...models.soft_tokens import QueryBank
from ...models.tracking import Tracker
from ...registry import resolve_model
from .queries import build_query_bank

__all__ = ["LoadedModels", "Models", "batches_in_flight", "check_neck", "detector_rect", "load_models",
           "prepare_models"]

log = logging.getLogger(__name__)

_DEFAULT_TRACK_FPS = 30.0  # the tracker's frame rate when the source gives none


@dataclass(frozen=True)
class Models:
    """The resolved model files a worker loads."""

    detector: ModelFiles | None
    encoder: ModelFiles | None
    neck: bool = False  # encoder.model: detector: the soft tokens come from the detector's neck output


@dataclass
class LoadedModels:
    """The sessions a worker runs, the query bank, and what stream info says of them (``infos``)."""

    config: Config
    detector: Detector | None = None
    encoder: Encoder | None = None
    neck: NeckReader | None = None  # encoder.model: detector (then ``encoder`` is None)
    queries: QueryBank | None = None
    ids: dict[str, str] = field(default_factory=dict)
    infos: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 1  # batches the models run at once (worker.in_flight, resolved)

    def tracker(self, fps: float | None) -> Tracker | None:
        """A fresh tracker for a stream at ``fps`` (None without a detector or with tracking off)."""
        dc = self.config.detector
        if self.detector is None or dc is None or not dc.tracker.enabled:
            return None
        tc = dc.tracker
        try:
            return Tracker(fps or _DEFAULT_TRACK_FPS, tc.activation_threshold, tc.lost_track_buffer,
                           tc.matching_threshold, tc.min_consecutive_frames)
        except ValueError as exc:
            raise ConfigError(f"detector.tracker: {exc}") from exc


def prepare_models(config: Config, models_dirs: tuple[str, ...] = ()) -> Models:
    """Find the models and check their manifests before any process starts.

    The worker loads them first thing, before any producer starts; a model that onnxruntime cannot
    load, or whose graph does not match its manifest, is reported from there as a ModelError. So is
    ``worker.precision: fp16`` for a model whose manifest has no fp16 graph, here.
    """
    search = (*models_dirs, config.models_dir)
    det = resolve_model(config.detector.model, "detector", search) if config.detector else None
    neck = config.encoder is not None and config.encoder.from_detector
    enc = resolve_model(config.encoder.model, "encoder", search) if config.encoder and not neck else None
    for files in (det, enc):
        if files is not None:
            check_precision(files, config.worker.precision)
    if det is not None and config.detector is not None:
        detector_rect(config.detector.rect, det)
    if neck:
        check_neck(config, det)
    return Models(det, enc, neck)


def check_neck(config: Config, det: ModelFiles | None) -> None:
    """``encoder.model: detector`` needs a detector whose manifest has a neck output; queries (exemplars encoded
    by an encoder) are not taken from it yet. A ConfigError naming the field otherwise."""
    ec = config.encoder
    if ec is None or not ec.from_detector:
        return
    man = det.manifest if det is not None else None
    if not isinstance(man, DetectorManifest) or man.neck is None:
        where = f"detector {man.name} ({det.manifest_path})" if det is not None and man is not None else "no detector"
        raise ConfigError(f"encoder.model: 'detector' takes the soft tokens from the detector's neck output, but "
                          f"{where} has none in its manifest: export it with `frametok export yolo WEIGHTS.pt "
                          "--neck P5 --out DIR`, or name an encoder")
    if ec.queries:
        raise ConfigError("encoder.queries: not available with encoder.model 'detector' (queries are encoded by an "
                          "encoder of their own); remove them or name an encoder")


def detector_rect(rect: bool | None, files: ModelFiles) -> bool:
    """Whether the detector of ``files`` runs at the rect letterbox (``detector.rect``; None: when its graph takes
    any height and width and it letterboxes, as Ultralytics' predict does); ``rect: true`` for a graph of fixed
    input size (or a squash resize) is a ConfigError naming the model."""
    man = files.manifest
    if not isinstance(man, DetectorManifest):
        return False
    fits = man.dynamic_hw and man.resize == "letterbox"
    if rect is None:
        return fits
    if rect and not fits:
        why = (f"it squashes frames (resize {man.resize})" if man.resize != "letterbox" else
               f"its graph {files.onnx_path} has a fixed {man.input_size_hw[0]}x{man.input_size_hw[1]} input "
               "(manifest dynamic_hw false): export it with `frametok export yolo WEIGHTS.pt` (dynamic axes), or "
               "set rect: false")
        raise ConfigError(f"detector.rect: true, but detector {man.name} cannot run at a rect input: {why}")
    return rect


def batches_in_flight(config: Config) -> int:
    """``worker.in_flight`` resolved: auto is 2 when the sessions run on the CPU provider with at least 2
    threads and every stream is a file (live streams keep the latency of one batch at a time), else 1."""
    wc = config.worker
    most = config.most_in_flight()  # auto: 2 when every stream is a file
    if isinstance(wc.in_flight, int) or most == 1:
        return most
    threads = wc.threads or os.cpu_count() or 1
    providers = [p.lower() for p in wc.providers]
    on_cpu = "torch" not in providers and resolve_providers(wc.providers)[:1] == ["CPUExecutionProvider"]
    return most if on_cpu and threads >= 2 else 1


def load_models(config: Config, models: Models, device: int | None = None) -> LoadedModels:
    """Open the sessions of ``models`` as the config's worker section says (providers, threads, precision,
    batches in flight: each takes its share of the threads), on accelerator ``device`` when one is given."""
    wc = config.worker
    loaded = LoadedModels(config)
    loaded.in_flight = batches_in_flight(config)
    threads = wc.threads
    if loaded.in_flight > 1:
        threads = max(1, (wc.threads or os.cpu_count() or 1) // loaded.in_flight)
        log.info("%d batches in flight, %d onnxruntime thread(s) each", loaded.in_flight, threads)
    if models.detector is not None and config.detector is not None:
        dc = config.detector
        session = create_session(models.detector, wc.providers, threads, precision=wc.precision,
                                 spin_wait=wc.spin_wait, device_id=device)
        loaded.detector = Detector(models.detector.manifest, session,  # type: ignore[arg-type]
                                   dc.conf_threshold, dc.iou_threshold, dc.max_det,
                                   rect=detector_rect(dc.rect, models.detector))
        if models.neck:
            loaded.neck = NeckReader(loaded.detector)
    if models.encoder is not None and config.encoder is not None:
        session = create_session(models.encoder, wc.providers, threads, precision=wc.precision,
                                 spin_wait=wc.spin_wait, device_id=device)
        loaded.encoder = Encoder(models.encoder.manifest, session)  # type: ignore[arg-type]
        if config.encoder.queries:
            loaded.queries = build_query_bank(config.encoder.queries, loaded.encoder)
    _describe(loaded)
    return loaded


def _describe(loaded: LoadedModels) -> None:
    config = loaded.config
    if loaded.detector is not None:
        det = loaded.detector
        loaded.ids["detector"] = det.manifest.model_id
        loaded.infos["detector"] = {**det.manifest.info(), "providers": list(det.session.get_providers()),
                                    "precision": det.precision}
    if loaded.encoder is not None:
        enc, ec = loaded.encoder, config.encoder
        assert ec is not None
        loaded.ids["encoder"] = enc.manifest.model_id
        loaded.infos["encoder"] = {
            **enc.manifest.info(), "dtype": ec.dtype, "pool": ec.pool,
            "providers": list(enc.session.get_providers()), "precision": enc.precision,
            "queries": list(loaded.queries.names) if loaded.queries else [],
            "compression": {"tau": ec.tau, "keyframe_interval": ec.keyframe_interval} if ec.compress else None,
        }
    if loaded.neck is not None and config.encoder is not None:
        ec = config.encoder
        loaded.ids["encoder"] = loaded.neck.info()["id"]
        loaded.infos["encoder"] = {
            **loaded.neck.info(), "dtype": ec.dtype, "pool": ec.pool, "precision": loaded.neck.detector.precision,
            "providers": list(loaded.neck.detector.session.get_providers()), "queries": [],
            "compression": {"tau": ec.tau, "keyframe_interval": ec.keyframe_interval} if ec.compress else None,
        }
    if loaded.detector is not None and config.detector is not None and config.detector.tracker.enabled:
        loaded.infos["tracker"] = {"kind": "bytetrack", **config.detector.tracker.model_dump(exclude={"enabled"})}
