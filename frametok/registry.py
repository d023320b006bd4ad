"""Named models and where to find them: a models folder, the local cache, or an online export.

A config names a model either by path (``.onnx`` with its manifest beside it, or the manifest
``.json``) or by a registry name such as ``yolov8n`` or ``dinov2_vits14``. A name is resolved, in
order, from the models folders (``--models``, ``models_dir`` in config, ``FRAMETOK_MODELS``), from
the cache (``FRAMETOK_CACHE``, default ``~/.cache/frametok``), and where the ``export`` extra is
installed and the machine is online, by downloading the official weights and exporting them once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ModelError
from .models.describe import IMAGENET_MEAN, IMAGENET_STD, describe_encoder_onnx, describe_ultralytics_onnx
from .models.manifest import DetectorManifest, EncoderManifest, file_sha256, manifest_path_for, write_manifest
from .models.session import ModelFiles, locate_model

__all__ = ["REGISTRY", "RegistryEntry", "cache_dir", "describe_registry", "model_files_in", "models_dirs",
           "resolve_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryEntry:
    """A model frametok knows by name, and the files it may come from."""

    name: str
    kind: Literal["detector", "encoder"]
    onnx_files: tuple[str, ...] = ()
    checkpoint_files: tuple[str, ...] = ()
    online: str | None = None
    encoder_spec: dict[str, object] = field(default_factory=dict)
    note: str = ""


REGISTRY: dict[str, RegistryEntry] = {
    entry.name: entry
    for entry in (
        RegistryEntry(
            name="yolov8n",
            kind="detector",
            onnx_files=("yolov8n.onnx", "yolov8n_coco.onnx"),
            checkpoint_files=("yolov8n.pt", "yolov8n_coco.pt"),
            online="yolov8n.pt",
            note="Ultralytics YOLOv8n, COCO 80 classes",
        ),
        RegistryEntry(
            name="yolo11n",
            kind="detector",
            onnx_files=("yolo11n.onnx",),
            checkpoint_files=("yolo11n.pt",),
            online="yolo11n.pt",
            note="Ultralytics YOLO11n, COCO 80 classes",
        ),
        RegistryEntry(
            name="dinov2_vits14",
            kind="encoder",
            onnx_files=("dinov2_vits14.onnx",),
            online="vit_small_patch14_dinov2.lvd142m",
            encoder_spec={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "prefix_tokens": 1, "context": "cls"},
            note="DINOv2 ViT-S/14 at 224x224: CLS + 16x16 patch tokens of 384",
        ),
        RegistryEntry(
            name="vit_small_patch16_224",
            kind="encoder",
            onnx_files=("vit_small_patch16_224.onnx",),
            online="vit_small_patch16_224.augreg_in21k_ft_in1k",
            encoder_spec={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "prefix_tokens": 1, "context": "cls"},
            note="ViT-S/16 (timm, augreg): CLS + 14x14 patch tokens of 384",
        ),
    )
}


def cache_dir() -> Path:
    """Where frametok keeps exported models and the demo clip (``FRAMETOK_CACHE``)."""
    return Path(os.environ.get("FRAMETOK_CACHE") or Path.home() / ".cache" / "frametok").expanduser()


def models_dirs(extra: Sequence[str | os.PathLike[str] | None] = ()) -> list[Path]:
    """The models folders to search: the given ones, then ``FRAMETOK_MODELS`` (``os.pathsep``-separated)."""
    dirs = [Path(d).expanduser() for d in extra if d]
    env = os.environ.get("FRAMETOK_MODELS", "")
    dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return dirs


def _is_path(ref: str) -> bool:
    return ref.endswith((".onnx", ".json")) or os.sep in ref or "/" in ref


def _described(entry: RegistryEntry, onnx: Path, cache: Path) -> ModelFiles:
    """A manifest for an ``.onnx`` without one, made once and kept in the cache."""
    target = cache / "described" / f"{entry.name}.json"
    onnx = onnx.resolve()
    if target.exists() and target.stat().st_mtime >= onnx.stat().st_mtime:
        try:
            files = locate_model(target)
            if files.onnx_path == onnx:
                return files
        except ModelError:
            pass
    manifest: DetectorManifest | EncoderManifest
    if entry.kind == "detector":
        manifest = describe_ultralytics_onnx(onnx, name=entry.name)
    else:
        manifest = describe_encoder_onnx(onnx, name=entry.name, **entry.encoder_spec)  # type: ignore[arg-type]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, target)
    log.info("%s: using %s (manifest written to %s)", entry.name, onnx, target)
    return ModelFiles(manifest, onnx, target)


def _exported(entry: RegistryEntry, weights: Path, cache: Path) -> ModelFiles:
    """An Ultralytics checkpoint exported to ONNX once; re-exported when the checkpoint changes."""
    target = cache / f"{entry.name}.json"
    if target.exists():
        try:
            files = locate_model(target)
            if files.manifest.source.sha256 == file_sha256(weights):
                return files
        except ModelError:
            pass
    from .exporters import export_yolo  # needs the export extra

    log.info("%s: exporting %s to ONNX in %s", entry.name, weights, cache)
    return export_yolo(weights, cache, name=entry.name)


def _from_models_dir(entry: RegistryEntry, folder: Path, cache: Path) -> ModelFiles | None:
    for fname in entry.onnx_files:
        onnx = folder / fname
        if onnx.exists():
            return locate_model(onnx) if manifest_path_for(onnx).exists() else _described(entry, onnx, cache)
    for fname in entry.checkpoint_files:
        weights = folder / fname
        if weights.exists() and entry.kind == "detector":
            return _exported(entry, weights, cache)
    return None


def _from_stem(ref: str, kind: Literal["detector", "encoder"], dirs: Sequence[Path], cache: Path) -> ModelFiles | None:
    """A model asked for by the stem of its file in a models folder (``yolov8n_coco`` ->
    ``DIR/yolov8n_coco.onnx``): with its manifest beside it, or, without one, described as the registry
    entry that knows that file name would be (a detector: from the Ultralytics metadata in the ONNX)."""
    for folder in dirs:
        onnx = folder / f"{ref}.onnx"
        if not onnx.is_file():
            continue
        if manifest_path_for(onnx).exists():
            return locate_model(onnx)
        entry = next((e for e in REGISTRY.values() if e.kind == kind and onnx.name in e.onnx_files), None)
        if entry is None and kind == "detector":
            entry = RegistryEntry(name=ref, kind="detector", note=f"{onnx.name} (Ultralytics ONNX)")
        if entry is None:
            raise ModelError(
                f"{onnx} has no manifest ({manifest_path_for(onnx)}): describe it once with `frametok export "
                f"encoder {onnx} --out {folder} --mean R,G,B --std R,G,B`"
            )
        return _described(entry, onnx, cache)
    return None


def model_files_in(folder: str | os.PathLike[str]) -> list[str]:
    """What a models folder holds (for ``frametok models --models DIR``): one line per ``.onnx`` or ``.pt``
    file, with the name to ask for it by and its manifest's kind and name when it has one."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelError(f"models folder {path} does not exist (or is not a folder)")
    lines = []
    for item in sorted(path.iterdir()):
        if item.suffix not in (".onnx", ".pt") or not item.is_file() or item.name.endswith(".fp16.onnx"):
            continue
        known = [e.name for e in REGISTRY.values() if item.name in e.onnx_files + e.checkpoint_files]
        what = "checkpoint (exported on first use)" if item.suffix == ".pt" else "no manifest (described on first use)"
        if item.suffix == ".onnx" and manifest_path_for(item).exists():
            try:
                manifest = locate_model(item).manifest
                what = f"{manifest.kind} {manifest.name}"
            except ModelError as exc:
                what = f"bad manifest: {exc}"
        names = ", ".join(dict.fromkeys([*known, item.stem])) if item.suffix == ".onnx" else ", ".join(known) or "-"
        lines.append(f"{item.name:28s} {what}; ask for it as: {names}")
    return lines or [f"no .onnx or .pt files in {path}"]


def _download_ultralytics(asset: str, folder: Path) -> Path:
    """Download an official Ultralytics checkpoint (needs the export extra and a network)."""
    try:
        from ultralytics.utils.downloads import attempt_download_asset
    except ImportError as exc:
        raise ModelError(f"the export extra (ultralytics) is not installed: {exc}") from exc
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(attempt_download_asset(str(folder / asset)))
    except Exception as exc:  # network errors of every kind
        raise ModelError(f"downloading {asset} failed: {exc}") from exc
    if not path.is_file():
        raise ModelError(f"downloading {asset} failed (offline?)")
    return path


def _online_export(entry: RegistryEntry, cache: Path) -> ModelFiles:
    if entry.online is None:
        raise ModelError(f"{entry.name}: no online source known")
    from .exporters import export_timm_encoder, export_yolo

    if entry.kind == "detector":
        return export_yolo(_download_ultralytics(entry.online, cache / "downloads"), cache, name=entry.name)
    return export_timm_encoder(entry.online, cache, name=entry.name)


def _missing(entry: RegistryEntry, dirs: Sequence[Path], why: str) -> ModelError:
    wanted = " or ".join(entry.onnx_files + entry.checkpoint_files)
    searched = ", ".join(str(d) for d in dirs) or "none given"
    return ModelError(
        f"{entry.kind} model {entry.name!r} ({entry.note}) not found. Looked in models folders: {searched}; "
        f"cache: {cache_dir()}. Provide it one of these ways: put {wanted} in a folder and pass "
        f"--models FOLDER (or set FRAMETOK_MODELS); give a path to an .onnx with its manifest; or install "
        f"`frametok[export]` on a machine that is online so frametok can download {entry.online} and export it "
        f"({why})."
    )


def resolve_model(
    ref: str,
    kind: Literal["detector", "encoder"],
    search: Sequence[str | os.PathLike[str] | None] = (),
    allow_online: bool = True,
) -> ModelFiles:
    """Find the ``.onnx`` and manifest for ``ref`` (a path or a registry name), exporting if needed."""
    if _is_path(ref):
        files = locate_model(ref)
    else:
        entry = REGISTRY.get(ref)
        if entry is None:
            dirs = models_dirs(search)
            found = _from_stem(ref, kind, dirs, cache_dir() / "models")
            if found is None:
                known = ", ".join(sorted(n for n, e in REGISTRY.items() if e.kind == kind))
                searched = ", ".join(str(d) for d in dirs) or "none given"
                raise ModelError(f"unknown {kind} model {ref!r}: give a path to an .onnx, one of: {known}, or "
                                 f"the name of an .onnx in a models folder (searched: {searched})")
            files = found
            if files.manifest.kind != kind:
                raise ModelError(f"model {ref!r} ({files.manifest_path}) is a {files.manifest.kind}, not a {kind}")
            return files
        if entry.kind != kind:
            raise ModelError(f"model {ref!r} is a {entry.kind}, not a {kind}")
        files = _resolve_named(entry, search, allow_online)
    if files.manifest.kind != kind:
        raise ModelError(f"model {ref!r} ({files.manifest_path}) is a {files.manifest.kind}, not a {kind}")
    return files


def _resolve_named(
    entry: RegistryEntry, search: Sequence[str | os.PathLike[str] | None], allow_online: bool
) -> ModelFiles:
    dirs = models_dirs(search)
    cache = cache_dir() / "models"
    for folder in dirs:
        found = _from_models_dir(entry, folder, cache)
        if found is not None:
            return found
    cached = cache / f"{entry.name}.json"
    if cached.exists():
        try:
            return locate_model(cached)
        except ModelError as exc:
            log.warning("ignoring stale cached manifest %s: %s", cached, exc)
    if not allow_online:
        raise _missing(entry, dirs, "online export disabled")
    try:
        return _online_export(entry, cache)
    except ModelError as exc:  # ExportError too: no export extra, offline, ...
        raise _missing(entry, dirs, f"online export failed: {exc}") from exc


def describe_registry() -> list[str]:
    """One line per known model (for ``frametok models``)."""
    return [f"{e.name:24s} {e.kind:9s} {e.note}" for e in REGISTRY.values()]

