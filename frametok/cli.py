"""The ``frametok`` command line: run, subscribe, view, export, models."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, FrametokError, PipelineError

if TYPE_CHECKING:
    from .models.session import ModelFiles

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _floats3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- run


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
    from .models.describe import IMAGENET_MEAN, IMAGENET_STD, describe_encoder_onnx
    from .models.manifest import write_manifest
    from .registry import cache_dir

    manifest = describe_encoder_onnx(
        args.encoder, mean=args.encoder_mean or IMAGENET_MEAN, std=args.encoder_std or IMAGENET_STD,
        prefix_tokens=args.encoder_prefix_tokens,
    )
    folder = cache_dir() / "described"
    folder.mkdir(parents=True, exist_ok=True)
    return str(write_manifest(manifest, folder / f"{manifest.name}-{manifest.onnx_sha256[:12]}.json"))


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
    if worker:
        over["worker"] = worker
    return over


def _echo_thread(endpoint: str, as_json: bool, done: threading.Event) -> threading.Thread:
    from .sdk.render import message_json, message_line
    from .sdk.subscriber import Subscriber

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
                    _quiet_stdout()
                    return

    ready = threading.Event()
    thread = threading.Thread(target=loop, name="frametok-echo", daemon=True)
    thread.start()
    ready.wait(5)
    return thread


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .streamer.supervision.progress import ProgressView
    from .streamer.supervision.supervisor import check_endpoints, prepare_models, prepare_sources, run_pipeline

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
        from .models.codebook import load_codebook

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


# --------------------------------------------------------------------------- subscribe


def cmd_subscribe(args: argparse.Namespace) -> int:
    from .packet import TokenPacket
    from .sdk.render import message_json, message_line
    from .sdk.subscriber import Subscriber

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


# --------------------------------------------------------------------------- view


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer import ViewerServer

    with ViewerServer(args.endpoint, host=args.host, port=args.port, streams=args.stream or None) as viewer:
        print(f"frametok view: {viewer.url} shows {', '.join(args.endpoint)} (Ctrl-C to stop)", flush=True)
        viewer.wait()
    return EXIT_OK


# --------------------------------------------------------------------------- export


def _manifest_kept(onnx: Path, out: str | None, name: str | None) -> ModelFiles | None:
    """For ``--half`` on an ``.onnx`` whose manifest is already where the export would write it (same graph,
    by sha256): that manifest's model, to add the fp16 graph to (keeping its source and parity records)."""
    from .errors import ModelError
    from .models.manifest import file_sha256
    from .models.session import locate_model

    manifest_path = Path(out or onnx.parent) / f"{name or onnx.stem}.json"
    if not manifest_path.exists():
        return None
    try:
        files = locate_model(manifest_path)
    except ModelError:
        return None
    return files if file_sha256(onnx) == files.manifest.onnx_sha256 else None


def _add_half(files: ModelFiles, args: argparse.Namespace) -> ModelFiles:
    if not args.half:
        return files
    from .exporters import add_fp16

    files = add_fp16(files, args.sample)
    parity = files.manifest.fp16.parity if files.manifest.fp16 is not None else None
    print(f"wrote {files.fp16_onnx_path} (fp16); parity: {parity}")
    return files


def _add_variants(files: ModelFiles, args: argparse.Namespace) -> ModelFiles:
    """The fp16 graph (``--half``), then the int8 one (``--int8``), each checked and added to the manifest."""
    files = _add_half(files, args)
    if not args.int8:
        return files
    from .exporters import add_int8

    files = add_int8(files, args.calibrate or [], calibration_frames=args.calibration_frames,
                     heldout_frames=args.heldout_frames)
    variant = files.manifest.int8
    assert variant is not None  # add_int8 wrote it
    figures = {k: v for k, v in variant.parity.items() if not k.endswith("_samples")}
    print(f"wrote {files.int8_onnx_path} (int8; {variant.calibration_frames} calibration, "
          f"{variant.heldout_frames} held-out frames); parity: {figures}")
    return files


def cmd_export_yolo(args: argparse.Namespace) -> int:
    from .exporters import export_yolo

    weights = Path(args.weights)
    if args.neck and (args.half or args.int8):
        raise ConfigError("export yolo: --neck adds an output to the fp32 graph only; export it without --half/--int8")
    if weights.suffix == ".onnx":
        from .models.describe import describe_ultralytics_onnx
        from .models.manifest import write_manifest
        from .models.session import locate_model

        kept = _manifest_kept(weights, args.out, args.name) if args.half or args.int8 else None
        if kept is not None:
            _add_variants(kept, args)
            return EXIT_OK
        out = Path(args.out or weights.parent)
        out.mkdir(parents=True, exist_ok=True)
        manifest = describe_ultralytics_onnx(weights, name=args.name)
        target = out / f"{manifest.name}.onnx"
        if target.resolve() != weights.resolve():
            import shutil

            shutil.copy2(weights, target)
        manifest = manifest.model_copy(update={"onnx_file": target.name})
        try:
            path = write_manifest(manifest, target.with_suffix(".json"))
        except OSError as exc:
            raise ConfigError(f"cannot write the manifest beside {target} ({exc}); give --out DIR") from exc
        print(f"wrote {path} for {target}")
        _add_variants(_with_neck(locate_model(path), args, None), args)
        return EXIT_OK
    files = export_yolo(weights if weights.exists() else args.weights, Path(args.out), imgsz=args.imgsz,
                        name=args.name, check=not args.no_check, end2end=True if args.end2end else None)
    print(f"wrote {files.onnx_path} and {files.manifest_path}; parity: {files.manifest.parity}")
    _add_variants(_with_neck(files, args, weights), args)
    return EXIT_OK


def _with_neck(files: Any, args: argparse.Namespace, weights: Path | None) -> Any:
    """``--neck LEVEL``: the neck feature map added as a graph output (checked against PyTorch given a .pt)."""
    if not args.neck:
        return files
    from .exporters.neck import add_neck

    files = add_neck(files, args.neck, weights=weights if weights is not None and weights.exists() else None)
    neck = files.manifest.neck
    print(f"added the neck output {neck.output_name} ({neck.level}: {neck.channels} channels, stride {neck.stride}) "
          f"to {files.onnx_path}; parity: {files.manifest.parity['neck']}")
    return files


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from .exporters import describe_encoder, export_timm_encoder

    describing = (args.mean, args.std, args.prefix_tokens, args.context) != (None, None, None, None)
    kept = (_manifest_kept(Path(args.model), args.out, args.name)
            if (args.half or args.int8) and args.model.endswith(".onnx") and not describing else None)
    if kept is not None:
        _add_variants(kept, args)
        return EXIT_OK
    if args.model.endswith(".onnx"):
        from .models.describe import IMAGENET_MEAN, IMAGENET_STD

        files = describe_encoder(args.model, args.out, mean=args.mean or IMAGENET_MEAN, std=args.std or IMAGENET_STD,
                                 prefix_tokens=args.prefix_tokens, context=args.context, name=args.name)
    else:
        if args.out is None:
            raise ConfigError("--out DIR is required when exporting a timm model")
        files = export_timm_encoder(args.model, args.out, img_size=args.img_size, random_init=args.random_init,
                                    stage=args.stage, name=args.name, check=not args.no_check)
    m = files.manifest
    print(f"wrote {files.onnx_path} and {files.manifest_path}: grid {m.grid_hw} x {m.embed_dim}, "  # type: ignore[union-attr]
          f"{m.output_layout} output, {m.prefix_tokens} prefix tokens, context {m.context}"  # type: ignore[union-attr]
          + (" (RANDOM weights: for plumbing only)" if m.source.random_init else ""))
    _add_variants(files, args)
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from .keys import make_keypair

    public, secret = make_keypair(args.folder, args.name)
    print(f"public key: {public} (give it out)\nsecret key: {secret} (keep it private)")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import describe_registry, model_files_in

    lines = describe_registry()
    for folder in args.models or ():
        lines += ["", f"in {folder}:", *(f"  {line}" for line in model_files_in(folder))]
    print("\n".join(lines))
    return EXIT_OK


def _sample_frames(video: str, count: int) -> list[Any]:
    """Up to ``count`` RGB frames spread evenly over ``video`` (decoded twice: to count them, then to keep the
    picks alone in memory)."""
    from .streamer.source.decode import decode_frames

    total = sum(1 for _ in decode_frames(video))
    if not total:
        raise ConfigError(f"codebook fit: no frames in {video}")
    picks = {round(i * (total - 1) / max(count - 1, 1)) for i in range(min(count, total))}
    return [f.frame_rgb for i, f in enumerate(decode_frames(video)) if i in picks]


def cmd_codebook_fit(args: argparse.Namespace) -> int:
    from .index.encode import load_encoder
    from .models.codebook import fit_codebook

    encoder = load_encoder(args.encoder, tuple(args.models or ()))
    samples = {video: _sample_frames(video, args.frames) for video in args.videos}
    book = fit_codebook(samples, encoder, args.out, k=args.k, seed=args.seed)
    m = book.manifest
    print(f"wrote {book.path} and {m.codes_file}: {m.k} codes x {m.embed_dim} for encoder {m.encoder}, fitted on "
          f"{m.fit['tokens']} patch tokens of {m.fit['frames']} frames ({m.fit['codes_used']} codes used)")
    return EXIT_OK


# --------------------------------------------------------------------------- index, record, search


def cmd_index(args: argparse.Namespace) -> int:
    from .index import Indexer, IndexOptions

    options = IndexOptions(detector=args.detector, encoder=args.encoder, models_dirs=tuple(args.models or ()),
                           config=args.config, every=args.every, progress=not args.no_progress,
                           batch_rows=args.flush_every,
                           log_level=logging.INFO if args.verbose else logging.WARNING)
    if args.ray:
        from .index.cluster import RayIndexer

        report = RayIndexer(args.db, options, args.ray).run(args.inputs)
    else:
        report = Indexer(args.db, options).run(args.inputs)
    print(report.line(), flush=True)
    return EXIT_OK if report.indexed or report.unchanged or not report.failed else EXIT_FAILED


def cmd_record(args: argparse.Namespace) -> int:
    from .index import record

    report = record(args.endpoint, args.db, streams=args.stream or None, lossless=args.lossless,
                    count=args.count, timeout_s=args.timeout)
    print(report.line(), flush=True)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    import json

    from .index import open_index, write_thumbs

    crop = None
    if args.crop:
        try:
            crop = tuple(int(v) for v in args.crop.split(","))
        except ValueError:
            crop = ()
        if len(crop) != 4:
            raise ConfigError(f"--crop: expected x1,y1,x2,y2 in pixels, got {args.crop!r}")
    index = open_index(args.db, models_dirs=tuple(args.models or ()))
    hits = index.search(args.filters, image=args.image, crop_xyxy=crop, t_from=args.t_from, t_to=args.t_to,
                        video=args.video, limit=args.limit or None, like_codes=args.like_codes)
    if args.thumbs:
        write_thumbs(hits, args.thumbs)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits]))
    else:
        print(f"{'video':40} {'frame':>7} {'time_s':>9} {'score':>7}  match")
        for h in hits:
            counts = " ".join(f"{k}={v}" for k, v in h.counts.items())
            print(f"{Path(h.video).name[:40]:40} {h.frame:7d} {h.t_s:9.2f} {h.score:7.3f}  {h.match} {counts}".rstrip())
        print(f"{len(hits)} hit(s)", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _half_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--half", action="store_true",
                        help="also write NAME.fp16.onnx (float16 weights and arithmetic, float32 in and out), "
                             "checked against the fp32 graph on sample images and recorded in the manifest; "
                             "with an .onnx whose manifest exists, adds it to that manifest")
    parser.add_argument("--sample", action="append", metavar="IMAGE",
                        help="--half: an image to check the fp16 graph on (repeatable; default: Ultralytics' "
                             "bundled photos)")
    parser.add_argument("--int8", action="store_true",
                        help="also write NAME.int8.onnx (onnxruntime quantisation, float32 in and out), gated "
                             "against the fp32 graph on --calibrate frames not used for calibration and recorded in "
                             "the manifest; with an .onnx whose manifest exists, adds it to that manifest")
    parser.add_argument("--calibrate", action="append", metavar="VIDEO|IMAGE",
                        help="--int8: a video, image or folder of images of the kind the model will see "
                             "(repeatable); its frames are split into calibration and held-out frames")
    parser.add_argument("--calibration-frames", type=int, default=16, metavar="N",
                        help="--int8: frames to calibrate the detector's activation ranges on (default 16)")
    parser.add_argument("--heldout-frames", type=int, default=16, metavar="N",
                        help="--int8: other frames the parity gate is checked on (default 16)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frametok", description="Videos and cameras in, token streams out.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what every process does")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (config file and/or flags)")
    run.add_argument("config", nargs="?", help="YAML config (see configs/)")
    run.add_argument("--source", action="append", metavar="[ID=]URI", help="a source; repeat for several")
    run.add_argument("--policy", choices=["file", "live"], help="delivery policy of the --source entries")
    run.add_argument("--publish", metavar="ENDPOINT", help="ZeroMQ endpoint to publish on, e.g. tcp://127.0.0.1:5555")
    run.add_argument("--detector", metavar="MODEL", help="detector: registry name, .onnx path, or 'none'")
    run.add_argument("--no-track", action="store_true", help="no track ids (ByteTrack runs on detections by default)")
    run.add_argument("--encoder", metavar="MODEL", help="encoder: registry name, .onnx path, or 'none'")
    run.add_argument("--encoder-mean", type=_floats3, metavar="R,G,B", help="describe a manifest-less encoder .onnx")
    run.add_argument("--encoder-std", type=_floats3, metavar="R,G,B")
    run.add_argument("--encoder-prefix-tokens", type=int, metavar="N", help="tokens before the patch grid")
    run.add_argument("--models", action="append", metavar="DIR", help="folder of model files (also FRAMETOK_MODELS)")
    run.add_argument("--max-batch", type=int)
    run.add_argument("--threads", type=int, help="onnxruntime intra-op threads (split between workers)")
    run.add_argument("--workers", type=int, metavar="N",
                     help="worker processes (worker.count); streams go to workers by stream id")
    run.add_argument("--providers", help="execution providers in order, e.g. tensorrt,cuda,cpu")
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

    exp = sub.add_parser("export", help="export a model to ONNX with its manifest")
    exp_sub = exp.add_subparsers(dest="what", required=True)
    yolo = exp_sub.add_parser("yolo", help="Ultralytics YOLO checkpoint (.pt), model .yaml, or its .onnx")
    yolo.add_argument("weights")
    yolo.add_argument("--out", metavar="DIR", required=False, default=None)
    yolo.add_argument("--imgsz", type=int, default=640)
    yolo.add_argument("--name")
    yolo.add_argument("--no-check", action="store_true", help="skip the parity check against ultralytics")
    yolo.add_argument("--end2end", action="store_true",
                      help="export the NMS-free one-to-one head (YOLO26, YOLOv10: output (N, 300, 6)) instead of "
                      "Ultralytics' default one-to-many head")
    yolo.add_argument("--neck", metavar="LEVEL", choices=("P3", "P4", "P5"),
                      help="also output the neck feature map that feeds the head at LEVEL (P3/P4/P5: stride 8/16/32), "
                      "for `encoder: {model: detector}` (soft tokens from the detector's own pass)")
    _half_flags(yolo)
    yolo.set_defaults(func=cmd_export_yolo)
    enc = exp_sub.add_parser("encoder", help="timm model name, or an encoder .onnx that needs a manifest")
    enc.add_argument("model")
    enc.add_argument("--out", metavar="DIR")
    enc.add_argument("--random-init", action="store_true", help="random weights (offline plumbing)")
    enc.add_argument("--img-size", type=int, default=224)
    enc.add_argument("--stage", type=int, metavar="I",
                     help="a timm CNN's features_only stage to export as the patch grid (a feature_info index; "
                          "-1, the default for a CNN: the last)")
    enc.add_argument("--mean", type=_floats3, metavar="R,G,B")
    enc.add_argument("--std", type=_floats3, metavar="R,G,B")
    enc.add_argument("--prefix-tokens", type=int, metavar="N", help="tokens before the grid (CLS, registers)")
    enc.add_argument("--context", choices=["cls", "mean"])
    enc.add_argument("--name")
    enc.add_argument("--no-check", action="store_true")
    _half_flags(enc)
    enc.set_defaults(func=cmd_export_encoder)

    book = sub.add_parser("codebook", help="codebooks: grid hard tokens (a code per patch token)")
    book_sub = book.add_subparsers(dest="what", required=True)
    fit = book_sub.add_parser("fit", help="k-means over an encoder's patch tokens of frames of videos (needs the "
                              "codebook extra: scikit-learn)")
    fit.add_argument("videos", nargs="+", metavar="VIDEO")
    fit.add_argument("--encoder", required=True, metavar="MODEL", help="encoder: registry name or .onnx path")
    fit.add_argument("--out", required=True, metavar="CODEBOOK", help="writes CODEBOOK.npy and CODEBOOK.json")
    fit.add_argument("--k", type=int, default=256, help="codes (2 to 32768; default 256)")
    fit.add_argument("--frames", type=int, default=64, metavar="N", help="frames per video, evenly spread (default 64)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--models", action="append", metavar="DIR", help="folder of model files")
    fit.set_defaults(func=cmd_codebook_fit)

    keys = sub.add_parser("keys", help="make a CURVE key pair (NAME.key public, NAME.key_secret secret)")
    keys.add_argument("folder")
    keys.add_argument("--name", default="frametok")
    keys.set_defaults(func=cmd_keys)

    models = sub.add_parser("models", help="list the models frametok knows by name (and what --models DIR holds)")
    models.add_argument("--models", action="append", metavar="DIR",
                        help="also list the model files in this folder and the names to ask for them by")
    models.set_defaults(func=cmd_models)

    idx = sub.add_parser("index", help="index videos (every frame, lossless) into a searchable database")
    idx.add_argument("inputs", nargs="+", metavar="VIDEO_OR_GLOB", help="video files or globs ('footage/*.mp4')")
    idx.add_argument("--db", required=True, metavar="DIR", help="the index folder (LanceDB)")
    idx.add_argument("--config", metavar="YAML", help="a run config for the models and worker settings")
    idx.add_argument("--detector", metavar="MODEL", help="detector: registry name, .onnx path, or 'none'")
    idx.add_argument("--encoder", metavar="MODEL", help="encoder: registry name, .onnx path, or 'none'")
    idx.add_argument("--models", action="append", metavar="DIR", help="folder of model files (also FRAMETOK_MODELS)")
    idx.add_argument("--every", type=int, default=1, metavar="N", help="index every Nth frame (default: all)")
    idx.add_argument("--flush-every", type=int, default=256, metavar="N",
                     help="commit to the index every N frames (an interrupted run resumes after the last commit)")
    idx.add_argument("--no-progress", action="store_true", help="no progress bars")
    idx.add_argument("--ray", metavar="ADDRESS", help="index on a Ray cluster: its address (host:port), 'auto' "
                     "(the cluster this machine is in) or 'local' (start Ray here); needs the cluster extra")
    idx.set_defaults(func=cmd_index)

    rec = sub.add_parser("record", help="write a publisher's token stream into an index")
    rec.add_argument("endpoint", nargs="+",
                     help="a publisher's endpoint (its lossless endpoint with --lossless); several: each one's streams")
    rec.add_argument("--db", required=True, metavar="DIR")
    rec.add_argument("--stream", action="append", metavar="ID", help="only these streams (repeatable)")
    rec.add_argument("--lossless", action="store_true", help="ENDPOINT is a lossless endpoint")
    rec.add_argument("--count", type=int, default=0, metavar="N", help="stop after N frames")
    rec.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds of silence")
    rec.set_defaults(func=cmd_record)

    srch = sub.add_parser("search", help="search an index: classes, counts, time, similar images")
    srch.add_argument("filters", nargs="*", metavar="FILTER", help="'truck', 'person >= 5', 'car == 0' (all must hold)")
    srch.add_argument("--db", required=True, metavar="DIR")
    srch.add_argument("--image", metavar="FILE", help="rank frames by similarity to this image")
    srch.add_argument("--like-codes", metavar="VIDEO:FRAME",
                      help="rank frames by how like this frame their codebook codes are (histogram intersection; "
                      "VIDEO: a video id or part of its path; an index made with encoder.codebook)")
    srch.add_argument("--crop", metavar="X1,Y1,X2,Y2", help="use this part of --image (pixels)")
    srch.add_argument("--from", dest="t_from", type=float, metavar="S", help="from this time (seconds)")
    srch.add_argument("--to", dest="t_to", type=float, metavar="S", help="up to this time (seconds)")
    srch.add_argument("--video", metavar="TEXT", help="only videos whose path contains TEXT")
    srch.add_argument("--limit", type=int, default=20, metavar="N", help="at most N hits (0: all; default 20)")
    srch.add_argument("--json", action="store_true", help="hits as a JSON list")
    srch.add_argument("--thumbs", metavar="DIR", help="write a thumbnail per hit into DIR")
    srch.add_argument("--models", action="append", metavar="DIR", help="where the encoder is (image search)")
    srch.set_defaults(func=cmd_search)
    return parser


def _quiet_stdout() -> None:
    """stdout's reader went away (``frametok ... | head``): send what is still written there to /dev/null,
    so that neither this nor the interpreter's last flush raises again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (tests capturing it)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a command whose output is piped into a reader that stops early (``| head``)
    exits quietly with code 0."""
    try:
        return _main(argv)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "what", None) == "yolo" and args.out is None and not args.weights.endswith(".onnx"):
        parser.error("export yolo: --out DIR is required")
    try:
        return int(args.func(args))
    except PipelineError as exc:
        print(f"frametok: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FrametokError as exc:
        print(f"frametok: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("frametok: interrupted", file=sys.stderr)
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
