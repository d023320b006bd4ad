"""``frametok export``, ``codebook``, ``keys`` and ``models``: the commands that write model, codebook and key
files, and list the models frametok knows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .common import EXIT_OK, floats3

if TYPE_CHECKING:
    from ..models.session import ModelFiles
    from .common import Commands

__all__ = ["add_file_commands", "cmd_codebook_fit", "cmd_export_encoder", "cmd_export_yolo", "cmd_keys", "cmd_models"]


def _manifest_kept(onnx: Path, out: str | None, name: str | None) -> ModelFiles | None:
    """For ``--half`` on an ``.onnx`` whose manifest is already where the export would write it (same graph,
    by sha256): that manifest's model, to add the fp16 graph to (keeping its source and parity records)."""
    from ..errors import ModelError
    from ..models.manifest import file_sha256
    from ..models.session import locate_model

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
    from ..exporters import add_fp16

    files = add_fp16(files, args.sample)
    parity = files.manifest.fp16.parity if files.manifest.fp16 is not None else None
    print(f"wrote {files.fp16_onnx_path} (fp16); parity: {parity}")
    return files


def _add_variants(files: ModelFiles, args: argparse.Namespace) -> ModelFiles:
    """The fp16 graph (``--half``), then the int8 one (``--int8``), each checked and added to the manifest."""
    files = _add_half(files, args)
    if not args.int8:
        return files
    from ..exporters import add_int8

    files = add_int8(files, args.calibrate or [], calibration_frames=args.calibration_frames,
                     heldout_frames=args.heldout_frames)
    variant = files.manifest.int8
    assert variant is not None  # add_int8 wrote it
    figures = {k: v for k, v in variant.parity.items() if not k.endswith("_samples")}
    print(f"wrote {files.int8_onnx_path} (int8; {variant.calibration_frames} calibration, "
          f"{variant.heldout_frames} held-out frames); parity: {figures}")
    return files


def cmd_export_yolo(args: argparse.Namespace) -> int:
    from ..exporters import export_yolo

    weights = Path(args.weights)
    if args.neck and (args.half or args.int8):
        raise ConfigError("export yolo: --neck adds an output to the fp32 graph only; export it without --half/--int8")
    if weights.suffix == ".onnx":
        from ..models.describe import describe_ultralytics_onnx
        from ..models.manifest import write_manifest
        from ..models.session import locate_model

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
    from ..exporters.neck import add_neck

    files = add_neck(files, args.neck, weights=weights if weights is not None and weights.exists() else None)
    neck = files.manifest.neck
    print(f"added the neck output {neck.output_name} ({neck.level}: {neck.channels} channels, stride {neck.stride}) "
          f"to {files.onnx_path}; parity: {files.manifest.parity['neck']}")
    return files


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from ..exporters import describe_encoder, export_timm_encoder

    describing = (args.mean, args.std, args.prefix_tokens, args.context) != (None, None, None, None)
    kept = (_manifest_kept(Path(args.model), args.out, args.name)
            if (args.half or args.int8) and args.model.endswith(".onnx") and not describing else None)
    if kept is not None:
        _add_variants(kept, args)
        return EXIT_OK
    if args.model.endswith(".onnx"):
        from ..models.describe import IMAGENET_MEAN, IMAGENET_STD

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
    from ..keys import make_keypair

    public, secret = make_keypair(args.folder, args.name)
    print(f"public key: {public} (give it out)\nsecret key: {secret} (keep it private)")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from ..registry import describe_registry, model_files_in

    lines = describe_registry()
    for folder in args.models or ():
        lines += ["", f"in {folder}:", *(f"  {line}" for line in model_files_in(folder))]
    print("\n".join(lines))
    return EXIT_OK


def _sample_frames(video: str, count: int) -> list[Any]:
    """Up to ``count`` RGB frames spread evenly over ``video`` (decoded twice: to count them, then to keep the
    picks alone in memory)."""
    from ..streamer.source.decode import decode_frames

    total = sum(1 for _ in decode_frames(video))
    if not total:
        raise ConfigError(f"codebook fit: no frames in {video}")
    picks = {round(i * (total - 1) / max(count - 1, 1)) for i in range(min(count, total))}
    return [f.frame_rgb for i, f in enumerate(decode_frames(video)) if i in picks]


def cmd_codebook_fit(args: argparse.Namespace) -> int:
    from ..index.encode import load_encoder
    from ..models.codebook import fit_codebook

    encoder = load_encoder(args.encoder, tuple(args.models or ()))
    samples = {video: _sample_frames(video, args.frames) for video in args.videos}
    book = fit_codebook(samples, encoder, args.out, k=args.k, seed=args.seed)
    m = book.manifest
    print(f"wrote {book.path} and {m.codes_file}: {m.k} codes x {m.embed_dim} for encoder {m.encoder}, fitted on "
          f"{m.fit['tokens']} patch tokens of {m.fit['frames']} frames ({m.fit['codes_used']} codes used)")
    return EXIT_OK


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


def add_file_commands(sub: Commands) -> None:
    """The ``export``, ``codebook``, ``keys`` and ``models`` commands and their flags."""
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
    enc.add_argument("--mean", type=floats3, metavar="R,G,B")
    enc.add_argument("--std", type=floats3, metavar="R,G,B")
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
