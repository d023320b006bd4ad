"""Start a run's processes, follow their progress, stop them cleanly, and summarise."""

from __future__ import annotations

import contextlib
import glob
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import zmq

from ...config import Config, SourceConfig
from ...errors import ConfigError, PipelineError
from ..delivery.endpoints import check_endpoints_free
from ..ipc.notices import EventNotice, RunContext
from ..source.decode import IMAGE_SUFFIXES, check_camera, image_files, probe_source
from ..worker.models import Models, prepare_models
from .health import HealthServer, HealthState
from .sweep import RunLock, sweep_dead_runs
from .watch import RunWatch

__all__ = ["RunSummary", "check_endpoints", "prepare_models", "prepare_sources", "run_pipeline"]

log = logging.getLogger(__name__)

_STOP_GRACE_S = 5.0


@dataclass
class RunSummary:
    """What a run did: frames decoded and packets published per stream, time, and failures."""

    frames: int = 0
    packets: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    damaged: dict[str, int] = field(default_factory=dict)  # stream -> damaged parts skipped (files)
    restarts: dict[str, int] = field(default_factory=dict)  # process (stream id or "worker") -> restarts
    seconds: float = 0.0
    stopped: bool = False
    bytes_sent: int = 0
    model_time_s: float = 0.0
    active_s: float = 0.0  # the worker's time from its first frame to its last packet
    batches: int = 0
    workers: int = 0  # worker processes that reported their work (their model time is summed)
    worker_frames: dict[str, int] = field(default_factory=dict)  # worker -> frames it ran through the models
    detector_inputs: dict[str, int] = field(default_factory=dict)  # "WxH" of the detector's input -> frames
    mixed_shape_batches: int = 0  # batches that ran the detector at more than one input shape (rect)
    in_flight: int = 1  # the most batches a worker ran at once (worker.in_flight)

    @property
    def model_busy(self) -> float:
        """Share of the workers' active time spent in the models, of every batch place (1.0: the models never
        waited)."""
        span = self.active_s * max(1, self.workers) * self.in_flight
        return min(1.0, self.model_time_s / span) if span > 0 else 0.0

    @property
    def total_packets(self) -> int:
        return sum(self.packets.values())

    @property
    def fps(self) -> float:
        return self.total_packets / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (
            f"frametok: {self.frames} frames from {len(self.packets)} stream(s) -> {self.total_packets} packets "
            f"in {self.seconds:.1f} s ({self.fps:.2f} fps); dropped {sum(self.dropped.values())}"
        )
        if self.batches:
            text += f"; models busy {100 * self.model_busy:.0f}% (mean batch {self.total_packets / self.batches:.1f}"
            text += f", {self.in_flight} in flight)" if self.in_flight > 1 else ")"
        if self.detector_inputs:
            text += "; detector input " + ", ".join(f"{wh} x{n}" for wh, n in sorted(self.detector_inputs.items()))
            if self.mixed_shape_batches:
                text += f" ({self.mixed_shape_batches} mixed batches)"
        if len(self.worker_frames) > 1:
            text += "; workers: " + ", ".join(f"{w} {n}" for w, n in sorted(self.worker_frames.items()))
        if self.stopped:
            text += "; stopped early"
        if self.restarts:
            text += "; restarted: " + ", ".join(f"{key} x{n}" for key, n in self.restarts.items())
        if self.damaged:
            text += "; damaged input: " + ", ".join(f"{sid} ({n} part(s) skipped)" for sid, n in self.damaged.items())
        if self.errors:
            text += "; failed: " + ", ".join(f"{sid} ({err})" for sid, err in self.errors.items())
        return text


def prepare_sources(config: Config) -> dict[str, str]:
    """Check every source before anything starts; returns stream id -> URI to open (demo resolved)."""
    uris: dict[str, str] = {}
    problems = []
    for src in config.sources:
        try:
            uris[src.id] = _prepare_source(src)
        except PipelineError as exc:
            problems.append(f"source {src.id!r}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
    return uris


def _prepare_source(src: SourceConfig) -> str:
    """What the producer opens for ``src``; raises PipelineError when it cannot work at all.

    Files are probed (a frame decodes), image folders and globs must hold images, and a camera device
    must exist; network streams are not opened here (a live source that is down is retried by its
    producer, with backoff).
    """
    from ...errors import SourceError

    kind = src.kind
    try:
        if kind == "demo":
            from ...demo import ensure_demo_clip

            return str(ensure_demo_clip())
        if kind == "file":
            probe_source(src.uri, src.open_timeout_s)
        elif kind == "images":
            files = image_files(src.uri)
            if not files:
                raise SourceError(f"no images in {src.uri}" + (
                    f" (images are files ending in {', '.join(sorted(IMAGE_SUFFIXES))})"
                    if os.path.isdir(src.uri) else " (the pattern matches no file)"))
        elif kind == "camera":
            check_camera(src.uri)
        elif kind == "network":
            _check_host(src.uri)
    except SourceError as exc:
        raise PipelineError(str(exc)) from exc
    return src.uri


def check_endpoints(config: Config) -> None:
    """Every endpoint the run listens on must be free: one ConfigError naming each one in use."""
    pc = config.publisher
    wanted: list[tuple[str, str | None]] = [("publisher.endpoint", pc.endpoint),
                                            ("publisher.lossless_endpoint", pc.lossless_endpoint)]
    for name in ("metrics", "health"):
        section = getattr(config, name, None)
        if section is not None and section.enabled:
            host = f"[{section.host}]" if ":" in section.host else section.host
            wanted.append((f"{name} (host:port)", f"tcp://{host}:{section.port}"))
    check_endpoints_free(wanted)


def _check_host(uri: str) -> None:
    """A network source whose host name is not known at all (a typo) is refused; a host that is down, or a
    name server that does not answer yet, is not (its producer retries)."""
    from urllib.parse import urlsplit

    from ...errors import SourceError
    from ..source.decode import redact_uri

    host = urlsplit(uri).hostname
    if not host:
        raise SourceError(f"{redact_uri(uri)}: no host in the URL")
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            raise SourceError(f"{redact_uri(uri)}: unknown host {host!r} ({exc.strerror})") from exc


@contextlib.contextmanager
def _run_context() -> Iterator[RunContext]:
    run_id = uuid.uuid4().hex[:8]
    rundir = tempfile.mkdtemp(prefix=f"frametok-{run_id}-")
    shm_prefix = f"frametok-{run_id}-"
    lock = RunLock(rundir)  # held until we are gone: a later run sweeps what we leave should we be killed
    sweep_dead_runs()
    try:
        yield RunContext(run_id, f"ipc://{rundir}/frames", f"ipc://{rundir}/events", shm_prefix,
                         hub_endpoint=f"ipc://{rundir}/hub")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        for leftover in glob.glob(f"/dev/shm/{shm_prefix}*"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        lock.close()


@contextlib.contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.warning("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread; the caller stops us then
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _shutdown(processes: list[BaseProcess], stop: Any) -> None:
    """Set the stop flag, give every process a grace period, then terminate (and kill) stragglers."""
    stop.set()
    deadline = time.monotonic() + _STOP_GRACE_S
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in processes:
        if proc.is_alive():
            log.warning("process %s did not stop in %.0f s; terminating it", proc.name, _STOP_GRACE_S)
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(2.0)


def run_pipeline(
    config: Config,
    *,
    models: Models | None = None,
    models_dirs: tuple[str, ...] = (),
    on_event: Callable[[EventNotice], None] | None = None,
    log_level: int = logging.WARNING,
) -> RunSummary:
    """Run the whole pipeline until every source ended (or SIGINT/SIGTERM); returns its summary.

    Everything a user can get wrong (config, sources, models) is checked before a process starts.
    ``on_event`` sees every progress/status event (the CLI draws its progress bar from them).
    """
    check_endpoints(config)
    uris = prepare_sources(config)
    models = models or prepare_models(config, models_dirs)
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    summary = RunSummary(packets={s.id: 0 for s in config.sources})
    processes: list[BaseProcess] = []
    health = HealthState([s.id for s in config.sources])

    def on_any(ev: EventNotice) -> None:
        _apply(ev, summary)
        if on_event:
            on_event(ev)

    server = None
    if config.health.enabled:
        try:
            server = HealthServer(health, config.health.host, config.health.port)
        except OSError as exc:
            raise ConfigError(f"health: cannot serve on {config.health.host}:{config.health.port}: {exc}") from exc
    with _run_context() as run, _stop_on_signals(stop):
        zctx = zmq.Context()
        events = zctx.socket(zmq.PULL)
        events.bind(run.events_endpoint)
        t0 = time.monotonic()
        watch = RunWatch(config, uris, models, run, stop, zctx, events, processes, health, on_any, log_level)
        try:
            watch.start()
            watch.follow()
            if not stop.is_set():
                watch.finish_hub()  # every stream ended: the hub gives lossless subscribers what is left
        finally:
            summary.stopped = stop.is_set()  # set by a signal, not (yet) by our own shutdown
            summary.restarts = dict(watch.restarts)
            watch.close()
            hub = [p for p in processes if p is watch.hub]
            _shutdown([p for p in processes if p is not watch.hub], stop)  # workers and producers first
            watch.finish_hub(_STOP_GRACE_S)  # then the hub, which has what they sent
            _shutdown(hub, stop)
            _drain(events, summary, on_event)
            events.close(0)
            zctx.term()
            if server is not None:
                server.close()
            summary.seconds = time.monotonic() - t0
    return summary


def _apply(ev: EventNotice, summary: RunSummary) -> None:
    data = ev.data
    if ev.event in ("producer_end", "producer_lost"):  # lost: a producer that died, what it had published
        summary.frames += int(data.get("frames", 0))
    if ev.event == "producer_end":
        summary.dropped[ev.source] = int(data.get("dropped", 0))
        if data.get("reason") == "error":
            summary.errors[ev.source] = str(data.get("detail", "error"))
        if int(data.get("damaged", 0)):
            summary.damaged[ev.source] = int(data["damaged"])
    elif ev.event == "done" and ev.source == "hub":  # what was published, counted where it was
        summary.packets.update({k: int(v) for k, v in data.get("packets", {}).items()})
        summary.bytes_sent = int(data.get("bytes_sent", 0))
    elif ev.event == "done":  # a worker: its share of the model time
        for sid, dropped in data.get("dropped", {}).items():  # what the worker last heard, for producers
            summary.dropped[sid] = max(summary.dropped.get(sid, 0), int(dropped))  # that could not report
        summary.model_time_s += float(data.get("model_time_s", 0.0))
        summary.active_s = max(summary.active_s, float(data.get("active_s", 0.0)))
        summary.batches += int(data.get("batches", 0))
        summary.workers += 1
        summary.worker_frames[ev.source] = summary.worker_frames.get(ev.source, 0) + int(data.get("frames", 0))
        for wh, n in data.get("detector_inputs", {}).items():
            summary.detector_inputs[wh] = summary.detector_inputs.get(wh, 0) + int(n)
        summary.mixed_shape_batches += int(data.get("mixed_shape_batches", 0))
        summary.in_flight = max(summary.in_flight, int(data.get("in_flight", 1)))
    elif ev.event == "progress" and ev.source == "hub":
        summary.packets.update({k: int(v) for k, v in data.get("streams", {}).items()})


def _drain(events: Any, summary: RunSummary, on_event: Callable[[EventNotice], None] | None) -> None:
    while events.poll(50):
        ev: EventNotice = events.recv_pyobj()
        _apply(ev, summary)
        if on_event:
            on_event(ev)
