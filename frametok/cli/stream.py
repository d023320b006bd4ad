"""``frametok run``, ``subscribe`` and ``view``: the pipeline, and what reads its streams."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .common import EXIT_FAILED, EXIT_OK, floats3, quiet_stdout

if TYPE_CHECKING:
    from .common import Commands

__all__ = ["add_stream_commands", "cmd_run", "cmd_subscribe", "cmd_view"]


def _source_entries(values: Sequence[str], policy: str | None) -> list[dict[str, Any]]:
    entries = []
    for i, value in enumerate(values):
        sid, sep, uri = value.partition("=")
        if not sep or "://" in sid or "/" in sid:
            sid, uri = f"s{i}", value
        entry: dict[str, Any] = {"id": sid, "uri": uri}
        if policy:
            entry["policy"] = policy
        entries.append(entry)
    return entries


def _described_encoder(args: argparse.Namespace) -> str | None:
    """An encoder .onnx without a manifest, described by --encoder-mean/--encoder-std flags."""
    if args.encoder_mean is None and args.encoder_std is None:
        return None
    if args.encoder is None or not args.encoder.endswith(".onnx"):
        raise ConfigError("--encoder-mean/--encoder-std describe an encoder .onnx given with --encoder FILE.onnx")
    from ..models.describe import IMAGENET_MEAN, IMAGENET_STD, describe_encoder_onnx
    from ..models.manifest import write_manifest
    from ..registry import cache_dir

    manifest = describe_encoder_onnx(
        args.encoder, mean=args.encoder_mean or IMAGENET_MEAN, std=args.encoder_std or IMAGENET_STD,
        prefix_tokens=args.encoder_prefix_tokens,
    )
    folder = cache_dir() / "described"
    folder.mkdir(parents=True, exist_ok=True)
    return str(write_manifest(manifest, folder / f"{manifest.name}-{manifest.onnx_sha256[:12]}.json"))


def _in_flight(text: str) -> str:
    """``--in-flight``: a count, or auto (range checks are the config's)."""
    if text != "auto" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of batches or 'auto', got {text!r}")
    return text


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if args.source:
        over["sources"] = _source_entries(args.source, args.policy)
    if args.publish:
        over["publisher"] = {"endpoint": args.publish}
    if args.wait_subscribers is not None:
        over.setdefault("publisher", {})["wait_subscribers"] = args.wait_subscribers
    if args.lossless_endpoint:
        over.setdefault("publisher", {})["lossless_endpoint"] = args.lossless_endpoint
    if args.hwm is not None:
        over.setdefault("publisher", {})["hwm"] = args.hwm
    if args.preview:
        over["preview"] = {"enabled": True}
    if args.metrics_port is not None:
        over["metrics"] = {"enabled": True, "port": args.metrics_port}
    if args.health_port is not None:
        over["health"] = {"enabled": True, "port": args.health_port}
    for role in ("detector", "encoder"):
        value = getattr(args, role)
        if value is not None:
            over[role] = None if value.lower() == "none" else {"model": value}
    if args.no_track and over.get("detector", {}) is not None:
        over.setdefault("detector", {})["tracker"] = {"enabled": False}
    described = _described_encoder(args)
    if described:
        over["encoder"] = {"model": described}
    worker: dict[str, Any] = {}
    if args.max_batch is not None:
        worker["max_batch"] = args.max_batch
    if args.threads is not None:
        worker["threads"] = args.threads
    if args.providers:
        worker["providers"] = args.providers.split(",")
    if args.precision:
        worker["precision"] = args.precision
    if args.workers is not None:
        worker["count"] = args.workers
    if args.in_flight is not None:
        worker["in_flight"] = args.in_flight if args.in_flight == "auto" else int(args.in_flight)
    if worker:
        over["worker"] = worker
    return over


def _echo_thread(endpoint: str, as_json: bool, done: threading.Event) -> threading.Thread:
    from ..sdk.render import message_json, message_line
    from ..sdk.subscriber import Subscriber

    def loop() -> None:
        with Subscriber(endpoint, timeout_s=0.2) as sub:
            ready.set()
            while not done.is_set() or sub.socket.poll(0):
                msg = sub.recv(0.2)
                if msg is None:
                    continue
                names = sub.class_names(msg.stream_id)
                try:
                    print(message_json(msg, names) if as_json else message_line(msg, names), flush=True)
                except BrokenPipeError:  # `run --echo | head`: the reader is gone; the run goes on
                    quiet_stdout()
                    return

    ready = threading.Event()
    thread = threading.Thread(target=loop, name="frametok-echo", daemon=True)
    thread.start()
    ready.wait(5)
    return thread


def cmd_run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..streamer.supervision.progress import ProgressView
    from ..streamer.supervision.supervisor import check_endpoints, prepare_models, prepare_sources, run_pipeline

    overrides = _run_overrides(args)
    if args.config is None and "sources" not in overrides:
        raise ConfigError("nothing to run: give a CONFIG file or --source URI")
    if args.echo:
        overrides.setdefault("publisher", {})
        current = overrides["publisher"].get("wait_subscribers", 0)
        overrides["publisher"]["wait_subscribers"] = max(1, current)
    config = load_config(args.config, overrides)
    check_endpoints(config)  # fail fast, before models are exported or loaded
    prepare_sources(config)
    models = prepare_models(config, tuple(args.models or ()))
    if config.encoder is not None and config.encoder.codebook and models.encoder is not None:
        from ..models.codebook import load_codebook

        load_codebook(config.encoder.codebook).check_encoder(models.encoder.manifest)  # type: ignore[arg-type]
    level = logging.INFO if args.verbose else logging.WARNING
    done = threading.Event()
    echo = _echo_thread(config.publisher.endpoint, args.json, done) if args.echo else None
    view = ProgressView(config, enabled=not args.echo and not args.no_progress)
    try:
        summary = run_pipeline(config, models=models, on_event=view.on_event, log_level=level)
    finally:
        view.close()
        done.set()
        if echo is not None:
            echo.join(5)
    print(summary.line(), file=sys.stderr if args.echo else sys.stdout, flush=True)
    return EXIT_OK if not summary.errors or summary.total_packets else EXIT_FAILED


def cmd_subscribe(args: argparse.Namespace) -> int:
    from ..packet import TokenPacket
    from ..sdk.render import message_json, message_line
    from ..sdk.subscriber import Subscriber

    packets = 0
    if (args.curve_key is None) != (args.server_key is None):
        raise ConfigError("CURVE needs both --curve-key (your .key_secret) and --server-key (the publisher's .key)")
    with Subscriber(args.endpoint, streams=args.stream or None, strict=args.strict, timeout_s=args.timeout,
                    mode="lossless" if args.lossless else "live", credit=args.credit,
                    curve_secret_key=args.curve_key, curve_server_key=args.server_key) as sub:
        for msg in sub:
            names = sub.class_names(msg.stream_id)
            print(message_json(msg, names) if args.json else message_line(msg, names), flush=True)
            if isinstance(msg, TokenPacket):
                packets += 1
                if args.count and packets >= args.count:
                    break
        gaps = {sid: g.missing for sid, g in sub.gaps.items() if g.missing}
        if gaps or sub.malformed:
            print(f"frametok subscribe: {packets} packets; gaps {gaps or 'none'}; malformed {sub.malformed}",
                  file=sys.stderr)
    return EXIT_OK


def cmd_view(args: argparse.Namespace) -> int:
    from ..viewer import ViewerServer

    with ViewerServer(args.endpoint, host=args.host, port=args.port, streams=args.stream or None) as viewer:
        print(f"frametok view: {viewer.url} shows {', '.join(args.endpoint)} (Ctrl-C to stop)", flush=True)
        viewer.wait()
    return EXIT_OK


def add_stream_commands(sub: Commands) -> None:
    """The ``run``, ``subscribe`` and ``view`` commands and their flags."""
    run = sub.add_parser("run", help="run the pipeline (config file and/or flags)")
    run.add_argument("config", nargs="?", help="YAML config (see configs/)")
    run.add_argument("--source", action="append", metavar="[ID=]URI", help="a source; repeat for several")
    run.add_argument("--policy", choices=["file", "live"], help="delivery policy of the --source entries")
    run.add_argument("--publish", metavar="ENDPOINT", help="ZeroMQ endpoint to publish on, e.g. tcp://127.0.0.1:5555")
    run.add_argument("--detector", metavar="MODEL", help="detector: registry name, .onnx path, or 'none'")
    run.add_argument("--no-track", action="store_true", help="no track ids (ByteTrack runs on detections by default)")
    run.add_argument("--encoder", metavar="MODEL", help="encoder: registry name, .onnx path, or 'none'")
    run.add_argument("--encoder-mean", type=floats3, metavar="R,G,B", help="describe a manifest-less encoder .onnx")
    run.add_argument("--encoder-std", type=floats3, metavar="R,G,B")
    run.add_argument("--encoder-prefix-tokens", type=int, metavar="N", help="tokens before the patch grid")
    run.add_argument("--models", action="append", metavar="DIR", help="folder of model files (also FRAMETOK_MODELS)")
    run.add_argument("--max-batch", type=int)
    run.add_argument("--threads", type=int, help="onnxruntime intra-op threads (split between workers)")
    run.add_argument("--workers", type=int, metavar="N",
                     help="worker processes (worker.count); streams go to workers by stream id")
    run.add_argument("--providers", help="execution providers in order, e.g. tensorrt,cuda,cpu")
    run.add_argument("--in-flight", metavar="N|auto", type=_in_flight,
                     help="batches the models run at once, each on its share of the threads (worker.in_flight; "
                          "auto: 2 on the CPU provider when every source is a file, else 1)")
    run.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"],
                     help="model graphs: auto (default) runs a model's fp16 graph (from `export --half`) on "
                          "CUDA/TensorRT, its int8 graph (from `export --int8`) on the CPU provider, fp32 otherwise; "
                          "fp16 / int8 on any provider (models need one); fp32 always")
    run.add_argument("--wait-subscribers", type=int, metavar="N", help="hold packets until N subscribers")
    run.add_argument("--lossless-endpoint", metavar="ENDPOINT", help="also serve lossless subscribers here")
    run.add_argument("--hwm", type=int, help="live: messages queued per subscriber before a slow one loses them")
    run.add_argument("--preview", action="store_true", help="put a small JPEG of the frame in every packet")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on this port (http://HOST:PORT/metrics; HOST: metrics.host)")
    run.add_argument("--health-port", type=int, metavar="PORT",
                     help="serve liveness and stream state on this port (GET /healthz, /streams; HOST: health.host)")
    run.add_argument("--echo", action="store_true", help="also print every packet (a built-in subscriber)")
    run.add_argument("--json", action="store_true", help="with --echo: JSON lines")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    subp = sub.add_parser("subscribe", help="print the packets of a publisher")
    subp.add_argument("endpoint", nargs="+", help="e.g. tcp://127.0.0.1:5555; several: one stream set from many "
                      "publishers (stream ids unique across them)")
    subp.add_argument("--stream", action="append", metavar="ID", help="only these streams (repeatable)")
    subp.add_argument("--json", action="store_true", help="one JSON object per message")
    subp.add_argument("--count", type=int, default=0, metavar="N", help="exit after N frame packets")
    subp.add_argument("--timeout", type=float, default=None, metavar="S", help="exit after S seconds of silence")
    subp.add_argument("--strict", action="store_true", help="stop on a malformed message instead of skipping it")
    subp.add_argument("--lossless", action="store_true",
                      help="ENDPOINT is a lossless endpoint: receive everything, slowing the publisher if needed")
    subp.add_argument("--credit", type=int, default=64, help="lossless: messages the publisher may send ahead")
    subp.add_argument("--curve-key", metavar="FILE", help="CURVE: this subscriber's .key_secret file")
    subp.add_argument("--server-key", metavar="FILE", help="CURVE: the publisher's public .key file")
    subp.set_defaults(func=cmd_subscribe)

    view = sub.add_parser("view", help="a live web page of a publisher's streams (frames, boxes, charts)")
    view.add_argument("endpoint", nargs="+", help="the publisher's live endpoint, e.g. tcp://127.0.0.1:5555 "
                      "(several: every stream of each)")
    view.add_argument("--host", default="127.0.0.1", help="address of the web page (default: this machine only)")
    view.add_argument("--port", type=int, default=8765, help="port of the web page (0: any free port)")
    view.add_argument("--stream", action="append", metavar="ID", help="only these streams (repeatable)")
    view.set_defaults(func=cmd_view)
