"""Export an Ultralytics YOLO detector to ONNX with a frametok manifest, checked against Ultralytics itself.

torch and ultralytics are imported inside :func:`export_yolo` only (the ``export`` extra); the rest of
this module needs numpy and OpenCV, as the runtime does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import ExportError, FrametokError
from ..models.describe import describe_ultralytics_onnx
from ..models.detector import Detector
from ..models.manifest import DetectorManifest, WeightsSource, file_sha256, write_manifest
from ..models.session import ModelFiles, create_session, locate_model
from ._common import box_iou, remove_quietly
from ._deps import package_versions, require_modules

__all__ = ["BoxMatch", "box_iou", "export_yolo", "match_boxes"]

MATCH_IOU = 0.5  # a frametok box counts as the same detection from this IoU on
STRONG_SCORE = 0.5  # Ultralytics boxes at least this confident must be reproduced ...
STRONG_IOU = 0.9  # ... this closely
RANDOM_INIT_COUNT_SLACK = 2  # random weights: box counts may differ by this much (or 10 %)
_ULTRALYTICS_PREDICT: dict[str, Any] = {"conf": 0.25, "iou": 0.7, "rect": False, "verbose": False}


@dataclass(frozen=True)
class BoxMatch:
    """One Ultralytics box (``ref``) paired with one frametok box (``got``)."""

    ref: int
    got: int
    iou: float


@dataclass(frozen=True)
class _Boxes:
    xyxy: NDArray[np.float32]
    score: NDArray[np.float32]
    class_id: NDArray[np.int64]


def match_boxes(
    ref_xyxy: NDArray[np.floating[Any]],
    ref_class: NDArray[np.integer[Any]],
    ref_score: NDArray[np.floating[Any]],
    got_xyxy: NDArray[np.floating[Any]],
    got_class: NDArray[np.integer[Any]],
    min_iou: float = MATCH_IOU,
) -> list[BoxMatch]:
    """Greedily pair each reference box (most confident first) with the best free box of its class."""
    iou = box_iou(ref_xyxy, got_xyxy)
    free = np.ones(len(got_class), dtype=bool)
    matches = []
    for i in np.argsort(-np.asarray(ref_score), kind="stable"):
        candidates = free & (np.asarray(got_class) == ref_class[i])
        if not candidates.any():
            continue
        j = int(np.argmax(np.where(candidates, iou[i], -1.0)))
        if iou[i, j] >= min_iou:
            free[j] = False
            matches.append(BoxMatch(int(i), j, float(iou[i, j])))
    return matches


def _offline_ultralytics_env() -> None:
    """Keep Ultralytics from downloading or pip-installing anything (read when it is first imported)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if not os.environ.get("YOLO_CONFIG_DIR"):
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
        config_dir = Path(tempfile.gettempdir()) / f"frametok-ultralytics-{user}"
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Run in ``path`` (Ultralytics writes a ``.yaml`` model's export into the current folder)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _is_model_yaml(weights: Path) -> bool:
    return weights.suffix in {".yaml", ".yml"}


def _export_onnx(weights: Path, work: Path, imgsz: int, opset: int) -> tuple[Any, Path]:
    """Load ``weights`` (a copy of a .pt, or a .yaml) and export it into ``work``; return (model, onnx)."""
    from ultralytics import YOLO  # type: ignore[attr-defined]

    if _is_model_yaml(weights):
        source = str(weights) if weights.exists() else weights.name  # a bare name is one of Ultralytics' own
    else:
        source = str(shutil.copy2(weights, work / weights.name))
    with _working_dir(work):
        model = YOLO(source)
        if model.task != "detect":
            raise ExportError(f"{weights}: an Ultralytics {model.task!r} model, frametok exports detectors only")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch's TorchScript exporter, used by Ultralytics
            exported = Path(model.export(format="onnx", imgsz=imgsz, dynamic=True, opset=opset, simplify=False))
        return model, (work / exported).resolve()


def _predict_ultralytics(model: Any, image_bgr: NDArray[np.uint8], imgsz: int) -> _Boxes:
    """Ultralytics' own detections (its exporter works on a deep copy, so ``model`` is as loaded).

    ``rect=False``: Ultralytics letterboxes into the full square input as frametok does; its default
    (minimal padding, 640x480 for a portrait photo) changes the model's input and moves boxes by a few
    percent, which would hide real export differences behind input ones.
    """
    result = model.predict(image_bgr, **_ULTRALYTICS_PREDICT, imgsz=imgsz)[0]
    boxes = result.boxes
    return _Boxes(
        xyxy=boxes.xyxy.cpu().numpy().astype(np.float32),
        score=boxes.conf.cpu().numpy().astype(np.float32),
        class_id=boxes.cls.cpu().numpy().astype(np.int64),
    )


def _predict_frametok(manifest_path: Path, image_bgr: NDArray[np.uint8]) -> _Boxes:
    files = locate_model(manifest_path)
    if not isinstance(files.manifest, DetectorManifest):
        raise ExportError(f"{manifest_path}: expected a detector manifest, got {files.manifest.kind!r}")
    session = create_session(files, providers=("cpu",), threads=2)
    frame_rgb = np.asarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), np.uint8)
    dets = Detector(files.manifest, session)([frame_rgb])[0]
    return _Boxes(
        xyxy=np.asarray(dets.xyxy, np.float32),
        score=np.asarray(dets.score, np.float32),
        class_id=np.asarray(dets.class_id, np.int64),
    )


def _parity(sample: Path, ref: _Boxes, got: _Boxes) -> tuple[dict[str, Any], list[str]]:
    """The parity record and, for each strong Ultralytics box frametok does not reproduce, why."""
    matches = match_boxes(ref.xyxy, ref.class_id, ref.score, got.xyxy, got.class_id)
    ious = [m.iou for m in matches]
    record: dict[str, Any] = {
        "sample": sample.name,
        "ultralytics_predict": "conf=0.25 iou=0.7 rect=False",
        "ultralytics_boxes": len(ref.score),
        "frametok_boxes": len(got.score),
        "matched": len(matches),
        "min_iou": round(min(ious), 4) if ious else None,
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "max_score_diff": (
            round(max(abs(float(ref.score[m.ref]) - float(got.score[m.got])) for m in matches), 4) if matches else None
        ),
    }
    by_ref = {m.ref: m for m in matches}
    problems = []
    for i in np.flatnonzero(ref.score >= STRONG_SCORE):
        match = by_ref.get(int(i))
        if match is None or match.iou < STRONG_IOU:
            iou = "unmatched" if match is None else f"IoU {match.iou:.3f}"
            problems.append(
                f"class {int(ref.class_id[i])} score {float(ref.score[i]):.2f} box {ref.xyxy[i].round(1)}: {iou}"
            )
    return record, problems


def _random_init_agrees(record: dict[str, Any]) -> bool:
    n, m = record["ultralytics_boxes"], record["frametok_boxes"]
    return bool(abs(n - m) <= max(RANDOM_INIT_COUNT_SLACK, 0.1 * max(n, m)))


def _default_sample() -> Path:
    from ultralytics.utils import ASSETS

    return Path(ASSETS) / "bus.jpg"


def _read_image(path: Path) -> NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"parity sample image {path} is missing or not a readable image")
    return np.asarray(image, np.uint8)


def _check_parity(weights: Path, manifest_path: Path, model: Any, imgsz: int, sample: Path) -> dict[str, Any]:
    """Compare Ultralytics' prediction with frametok's on ``sample``; raise ExportError when they differ."""
    image = _read_image(sample)
    ref = _predict_ultralytics(model, image, imgsz)
    got = _predict_frametok(manifest_path, image)
    record, problems = _parity(sample, ref, got)
    if _is_model_yaml(weights):
        if not _random_init_agrees(record):
            raise ExportError(f"{weights}: random-init parity on {sample.name} failed, box counts differ: {record}")
    elif problems:
        raise ExportError(
            f"{weights}: the ONNX export does not reproduce Ultralytics on {sample.name} "
            f"(every box with score >= {STRONG_SCORE} needs IoU >= {STRONG_IOU}): {'; '.join(problems)}; "
            f"parity {record}"
        )
    return record


def _manifest(onnx_path: Path, name: str, weights: Path, opset: int) -> DetectorManifest:
    base = describe_ultralytics_onnx(onnx_path, name=name)
    random_init = _is_model_yaml(weights)
    source = WeightsSource(
        weights=str(weights.resolve()) if weights.exists() else weights.name,
        sha256=None if random_init else file_sha256(weights),
        framework=f"ultralytics {package_versions(['ultralytics'])['ultralytics']}",
        random_init=random_init,
    )
    exporter = {
        "frametok": package_versions(["frametok"])["frametok"],
        **package_versions(["ultralytics", "torch", "onnx", "onnxruntime"]),
        "opset": str(opset),
    }
    return base.model_copy(update={"onnx_file": onnx_path.name, "source": source, "exporter": exporter})


def _publish(onnx_tmp: Path, manifest: DetectorManifest, out_dir: Path, name: str) -> ModelFiles:
    """Move the checked ONNX into ``out_dir`` and write its manifest; leave no half-written pair."""
    onnx_out, manifest_out = out_dir / f"{name}.onnx", out_dir / f"{name}.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output folder {out_dir}: {exc}") from exc
    try:
        shutil.move(str(onnx_tmp), onnx_out)
        write_manifest(manifest, manifest_out)
    except OSError as exc:
        remove_quietly(onnx_out, manifest_out)
        raise ExportError(f"cannot write the exported model {onnx_out} and {manifest_out.name}: {exc}") from exc
    return locate_model(manifest_out)


def export_yolo(
    weights: str | Path,
    out_dir: str | Path,
    *,
    imgsz: int = 640,
    opset: int = 17,
    name: str | None = None,
    sample_image: str | Path | None = None,
    check: bool = True,
    half: bool = False,
    half_samples: Sequence[str | Path] | None = None,
    int8: bool = False,
    int8_calibrate: Sequence[str | Path] | None = None,
) -> ModelFiles:
    """Export Ultralytics ``weights`` (.pt, or a model .yaml for random weights) to ``out_dir/<name>.onnx``.

    The ONNX has a dynamic batch axis; its manifest ``<name>.json`` is written beside it once the
    parity check (frametok's Detector against Ultralytics' own prediction) has passed. ``half`` also
    writes ``<name>.fp16.onnx``, checked against the fp32 graph on ``half_samples`` (see :func:`add_fp16`);
    ``int8`` writes ``<name>.int8.onnx``, calibrated and gated on frames of ``int8_calibrate`` (videos or
    images, see :func:`add_int8`).
    """
    weights = Path(weights).expanduser()
    weights = weights.resolve() if weights.exists() else weights  # the export runs in another folder
    name = name or weights.stem
    if not _is_model_yaml(weights) and not weights.is_file():
        raise ExportError(f"YOLO weights not found: {weights}")
    _offline_ultralytics_env()
    require_modules(("torch", "ultralytics", "onnx"), "exporting YOLO weights")
    with tempfile.TemporaryDirectory(prefix="frametok-yolo-") as tmp:
        work = Path(tmp)
        try:
            model, exported = _export_onnx(weights, work, imgsz, opset)
            onnx_tmp = exported.rename(work / f"{name}.onnx") if exported.name != f"{name}.onnx" else exported
            manifest = _manifest(onnx_tmp, name, weights, opset)
            if check:
                write_manifest(manifest, work / f"{name}.json")
                sample = Path(sample_image).expanduser() if sample_image is not None else _default_sample()
                parity = _check_parity(weights, work / f"{name}.json", model, imgsz, sample)
                manifest = manifest.model_copy(update={"parity": parity})
        except FrametokError:
            raise
        except Exception as exc:  # ultralytics / torch / onnx raise many unrelated types
            raise ExportError(f"exporting YOLO weights {weights} to ONNX failed: {type(exc).__name__}: {exc}") from exc
        files = _publish(onnx_tmp, manifest, Path(out_dir).expanduser(), name)
    if half:
        from .half import add_fp16

        files = add_fp16(files, half_samples or [sample_image or _default_sample()])
    if int8:
        from .int8 import add_int8

        files = add_int8(files, int8_calibrate or [])
    return files
