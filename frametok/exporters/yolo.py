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
from ..models.detector import Detector, letterbox_into, squash_into
from ..models.manifest import DetectorHead, DetectorManifest, WeightsSource, file_sha256, write_manifest
from ..models.session import ModelFiles, create_session, locate_model
from ..packet import Detections
from ._common import box_iou, remove_quietly
from ._deps import package_versions, require_modules
from .mask_parity import CEILING_SLACK, MASK_IOU, frametok_masks, mask_figures, tiny_mask, ultralytics_masks
from .rewrite import rewrite_file

__all__ = ["BoxMatch", "box_iou", "export_yolo", "match_boxes"]

MATCH_IOU = 0.5  # a frametok box counts as the same detection from this IoU on
STRONG_SCORE = 0.5  # Ultralytics boxes at least this confident must be reproduced ...
STRONG_IOU = 0.9  # ... this closely
DEFAULT_CONF = 0.25  # Ultralytics' (and frametok's) default confidence threshold
# When the reference finds no box scoring >= STRONG_SCORE at DEFAULT_CONF (random-init weights always), the
# threshold is lowered down this ladder until the reference finds LOW_MIN_BOXES boxes; above LOW_MAX_BOXES,
# the threshold becomes the score of the LOW_MAX_BOXES-th reference box (the top-k by score).
LOW_CONF_LADDER = (0.1, 0.05, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
LOW_MIN_BOXES = 5
LOW_MAX_BOXES = 100
DEGENERATE_BOX_PX = 0.5  # boxes of no area (x2 < x1) are twins when their corners agree this closely
LOW_SCORE_RTOL = 0.02  # at a lowered threshold, twins' scores agree within 2 % of the score
TIE_RTOL = 1e-3  # a box of another class, same place, score within 0.1 %: two classes tied on one anchor
_ULTRALYTICS_PREDICT: dict[str, Any] = {"iou": 0.7, "rect": False, "verbose": False, "max_det": 300}


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
    masks: NDArray[np.bool_] | None = None  # (N, H, W) in source pixels, a segmentation model's
    dets: Detections | None = None  # frametok's side: its detections (the masks' cells)


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


def _wake_random_init(model: Any, image_bgr: NDArray[np.uint8], imgsz: int) -> None:
    """Give a random-init model outputs that depend on its input: BatchNorm statistics measured on the sample.

    A model built from a .yaml keeps BatchNorm's initial statistics (mean 0, variance 1) while its random
    convolutions shrink the signal layer after layer: the head sees ~1e-6 and every anchor gets the same box
    shape and the same score, sigmoid(bias), for any image, so no threshold picks boxes worth comparing. Running
    the sample (and its mirror image) through the model in training mode, with cumulative BatchNorm averages,
    sets each layer's statistics to what it really sees (a data-dependent init); the weights stay random.
    """
    import torch

    net = model.model
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    rgb = np.asarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), np.uint8)
    squash = "RTDETR" in type(net.model[-1]).__name__ if hasattr(net, "model") else False
    placed = squash_into(rgb, (imgsz, imgsz))[0] if squash else letterbox_into(rgb, (imgsz, imgsz))[0]
    batch = np.stack([placed, placed[:, ::-1]]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: exactly these images' statistics
    was_training = net.training
    net.train()
    try:
        with torch.no_grad():
            net(torch.from_numpy(np.ascontiguousarray(batch)))
    finally:
        net.train(was_training)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


def _export_onnx(
    weights: Path, work: Path, imgsz: int, opset: int, end2end: bool | None, sample: Path
) -> tuple[Any, Path]:
    """Load ``weights`` (a copy of a .pt, or a .yaml) and export it into ``work``; return (model, onnx).

    ``end2end=True`` exports the one-to-one (NMS-free) head of a model that has one (YOLO26, YOLOv10:
    Ultralytics' ``nms=False``); None or False Ultralytics' default (their one-to-many head). A .yaml model's
    random weights are woken on ``sample`` first (:func:`_wake_random_init`).
    """
    from ultralytics import YOLO  # type: ignore[attr-defined]

    if _is_model_yaml(weights):
        source = str(weights) if weights.exists() else weights.name  # a bare name is one of Ultralytics' own
    else:
        source = str(shutil.copy2(weights, work / weights.name))
    model: Any
    if _is_model_yaml(weights):  # random weights, the same every export (a parity failure can be replayed)
        import torch

        torch.manual_seed(0)
    with _working_dir(work):
        if _is_model_yaml(weights) and "rtdetr" in weights.stem:
            from ultralytics import RTDETR  # type: ignore[attr-defined]

            model = RTDETR(source)
        else:
            model = YOLO(source)  # an RT-DETR checkpoint comes back as ultralytics.RTDETR
        if model.task not in ("detect", "segment"):
            raise ExportError(f"{weights}: an Ultralytics {model.task!r} model, frametok exports detectors (and "
                              "instance segmentation) only")
        net: Any = model.model
        if end2end and getattr(net.model[-1], "one2one_cv2", None) is None:
            raise ExportError(f"{weights}: end2end asked for, but this model has no one-to-one (NMS-free) head")
        if _is_model_yaml(weights):
            _wake_random_init(model, _read_image(sample), imgsz)
        extra: dict[str, Any] = {"nms": False} if end2end else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch's TorchScript exporter, used by Ultralytics
            exported = Path(model.export(format="onnx", imgsz=imgsz, dynamic=True, opset=opset, simplify=False,
                                         **extra))
        return model, (work / exported).resolve()


def _predict_ultralytics(
    model: Any, image_bgr: NDArray[np.uint8], imgsz: int, head: DetectorHead, conf: float, rect: bool = False
) -> _Boxes:
    """Ultralytics' own detections (its exporter works on a deep copy, so ``model`` is as loaded).

    ``rect=False``: Ultralytics letterboxes into the full square input as frametok's square letterbox does;
    ``rect=True`` (its default: minimal padding, 480x640 for a portrait photo) is compared with frametok's rect
    letterbox (a graph of dynamic height and width); each side's input must be the other's, or input
    differences (boxes move by a few percent) would hide real export differences. ``nms=False`` for an end2end
    export (Ultralytics' predict then runs the one-to-one head, else the one-to-many one with NMS); RT-DETR's
    predictor squashes the image (``scale_fill``) and reads its queries without NMS, leaving boxes that cross
    the image's edges unclipped: they are clipped here, as frametok's (and Ultralytics' YOLO) boxes are.
    """
    extra: dict[str, Any] = {"nms": False} if head == "end2end" else {}
    segment = model.task == "segment"
    if segment:  # its masks at the source frame's size, for mask parity (mask_parity.py)
        extra["retina_masks"] = True
    result = model.predict(image_bgr, **{**_ULTRALYTICS_PREDICT, "rect": rect}, conf=conf, imgsz=imgsz, **extra)[0]
    boxes = result.boxes
    xyxy = boxes.xyxy.cpu().numpy().astype(np.float32)
    h, w = image_bgr.shape[:2]
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
    return _Boxes(
        xyxy=xyxy,
        score=boxes.conf.cpu().numpy().astype(np.float32),
        class_id=boxes.cls.cpu().numpy().astype(np.int64),
        masks=ultralytics_masks(result, (h, w)) if segment else None,
    )


def _predict_frametok(manifest_path: Path, image_bgr: NDArray[np.uint8], conf: float, rect: bool = False) -> _Boxes:
    files = locate_model(manifest_path)
    if not isinstance(files.manifest, DetectorManifest):
        raise ExportError(f"{manifest_path}: expected a detector manifest, got {files.manifest.kind!r}")
    session = create_session(files, providers=("cpu",), threads=2)
    frame_rgb = np.asarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), np.uint8)
    dets = Detector(files.manifest, session, conf_threshold=conf, rect=rect)([frame_rgb])[0]
    return _Boxes(
        xyxy=np.asarray(dets.xyxy, np.float32),
        score=np.asarray(dets.score, np.float32),
        class_id=np.asarray(dets.class_id, np.int64),
        masks=None if dets.mask_bits is None else frametok_masks(dets, (frame_rgb.shape[1], frame_rgb.shape[0])),
        dets=dets,
    )


def _select(boxes: _Boxes, keep: NDArray[np.bool_]) -> _Boxes:
    if boxes.dets is not None:
        raise ValueError("only the reference's boxes are selected")
    return _Boxes(boxes.xyxy[keep], boxes.score[keep], boxes.class_id[keep],
                  None if boxes.masks is None else boxes.masks[keep])


def _figures(ref: _Boxes, got: _Boxes, matches: list[BoxMatch]) -> dict[str, Any]:
    ious = [m.iou for m in matches]
    gaps = [abs(float(ref.score[m.ref]) - float(got.score[m.got])) for m in matches]
    rel = [g / max(float(ref.score[m.ref]), 1e-12) for g, m in zip(gaps, matches, strict=True)]
    return {
        "matched": len(matches),
        "min_iou": round(min(ious), 4) if ious else None,
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "max_score_diff": float(f"{max(gaps):.4g}") if gaps else None,
        "max_score_rel_diff": float(f"{max(rel):.4g}") if rel else None,
        **({} if ref.masks is None or got.masks is None or got.dets is None else
           mask_figures(ref.masks, got.masks, [(m.ref, m.got) for m in matches], got.dets)),
    }


def _parity(sample: Path, ref: _Boxes, got: _Boxes) -> tuple[dict[str, Any], list[str]]:
    """At the default threshold: the record and, for each strong Ultralytics box frametok misses, why."""
    matches = match_boxes(ref.xyxy, ref.class_id, ref.score, got.xyxy, got.class_id)
    strong = np.flatnonzero(ref.score >= STRONG_SCORE)
    record: dict[str, Any] = {
        "sample": sample.name,
        "threshold": DEFAULT_CONF,
        "threshold_rule": f"default; every Ultralytics box scoring >= {STRONG_SCORE} needs IoU >= {STRONG_IOU}",
        "ultralytics_boxes": len(ref.score),
        "frametok_boxes": len(got.score),
        "compared": len(strong),
        **_figures(ref, got, matches),
    }
    by_ref = {m.ref: m for m in matches}
    problems = []
    for i in strong:
        match = by_ref.get(int(i))
        if match is None or match.iou < STRONG_IOU:
            iou = "unmatched" if match is None else f"IoU {match.iou:.3f}"
            problems.append(
                f"class {int(ref.class_id[i])} score {float(ref.score[i]):.2f} box {ref.xyxy[i].round(1)}: {iou}"
            )
    return record, problems


def _low_threshold(ref_all: _Boxes) -> tuple[float, str]:
    """The lowered threshold: the first of the ladder at which the reference finds LOW_MIN_BOXES boxes, or the
    LOW_MAX_BOXES-th best reference score when that finds more (the top-k by score)."""
    for conf in LOW_CONF_LADDER:
        found = int((ref_all.score > conf).sum())
        if found >= LOW_MIN_BOXES:
            if found <= LOW_MAX_BOXES:
                return conf, f"lowered: the first of {list(LOW_CONF_LADDER)} with >= {LOW_MIN_BOXES} reference boxes"
            top = float(np.sort(ref_all.score)[::-1][LOW_MAX_BOXES - 1])
            return top, (f"lowered: the top {LOW_MAX_BOXES} reference boxes by score (conf {conf:g} found {found})")
    return 0.0, "lowered: every reference box"


def _degenerate_twin(a: _Boxes, i: int, b: _Boxes, taken: set[int]) -> BoxMatch | None:
    """A box of no area (random weights give some, x2 < x1) has IoU 0 even with itself: its twin in ``b`` is a
    free box of its class with the same corners within DEGENERATE_BOX_PX (reported as IoU 1)."""
    near = np.abs(b.xyxy - a.xyxy[i]).max(axis=1) <= DEGENERATE_BOX_PX if len(b.score) else np.zeros(0, bool)
    for j in np.flatnonzero(near & (b.class_id == a.class_id[i])):
        if int(j) not in taken:
            taken.add(int(j))
            return BoxMatch(i, int(j), 1.0)
    return None


def _class_tie(a: _Boxes, i: int, b: _Boxes, taken: set[int]) -> bool:
    """Random weights score many classes alike: on one anchor two classes can tie to a few 1e-7, and which one
    wins (the box's class) then flips between two graphs by float rounding. A free box of ``b`` at the same
    place (IoU >= STRONG_IOU) with the same score within TIE_RTOL, of another class, is that tie."""
    if not len(b.score):
        return False
    ious = box_iou(a.xyxy[i : i + 1], b.xyxy)[0]
    close = np.abs(b.score - a.score[i]) <= TIE_RTOL * float(a.score[i])
    for j in np.flatnonzero((ious >= STRONG_IOU) & close & (b.class_id != a.class_id[i])):
        if int(j) not in taken:
            taken.add(int(j))
            return True
    return False


def _twins(a: _Boxes, b: _Boxes, floor: float) -> tuple[list[BoxMatch], list[str], int]:
    """Boxes of ``a`` scoring >= ``floor`` and their twins in ``b`` (same class, IoU >= STRONG_IOU, score within
    LOW_SCORE_RTOL); what has none; how many boxes had none but are no problem: of no area, or a class tie
    (:func:`_class_tie`)."""
    matches = match_boxes(a.xyxy, a.class_id, a.score, b.xyxy, b.class_id, min_iou=STRONG_IOU)
    by_a = {m.ref: m for m in matches}
    taken = {m.got for m in matches}
    problems, good, skipped = [], [], []
    for i in np.flatnonzero(a.score >= floor):
        m = by_a.get(int(i))
        if m is None and _class_tie(a, int(i), b, taken):
            skipped.append(int(i))
            continue
        if m is None and tiny_mask(a.masks, a.xyxy, int(i)):  # the other side's mask of it was empty: dropped
            skipped.append(int(i))
            continue
        if m is None and not ((a.xyxy[i, 2:] - a.xyxy[i, :2]) > 0).all():
            m = _degenerate_twin(a, int(i), b, taken)
            if m is None:  # OpenCV's NMS (the yolov8 head) drops boxes of no area, Ultralytics' keeps them
                skipped.append(int(i))
                continue
        gap = abs(float(a.score[i]) - float(b.score[m.got])) if m is not None else None
        if m is None or gap is None or gap > LOW_SCORE_RTOL * float(a.score[i]):
            why = "no twin" if m is None else f"twin IoU {m.iou:.3f} score {float(b.score[m.got]):.4g}"
            problems.append(f"class {int(a.class_id[i])} score {float(a.score[i]):.4g} box "
                            f"{np.round(a.xyxy[i], 1).tolist()}: {why}")
        else:
            good.append(m)
    return good, problems, len(skipped)


def _low_parity(sample: Path, ref_all: _Boxes, manifest_path: Path, image: NDArray[np.uint8], rect: bool = False,
                ) -> tuple[dict[str, Any], list[str]]:
    """At a lowered threshold ``t`` (:func:`_low_threshold`): every reference box scoring >= t needs a frametok
    twin, and every frametok box scoring >= t (1 + rtol) a reference one (IoU >= STRONG_IOU, score within
    LOW_SCORE_RTOL); both sides are read a little below t so that a box at the threshold finds its twin."""
    conf, rule = _low_threshold(ref_all)
    below = conf * (1 - 2 * LOW_SCORE_RTOL)
    ref = _select(ref_all, ref_all.score > below)
    got = _predict_frametok(manifest_path, image, below, rect)
    matches, problems, skipped = _twins(ref, got, conf)
    back, problems_back, skipped_back = _twins(got, ref, conf * (1 + LOW_SCORE_RTOL))
    record: dict[str, Any] = {
        "sample": sample.name,
        "threshold": float(f"{conf:.6g}"),
        "threshold_rule": rule,
        "ultralytics_boxes": int((ref.score >= conf).sum()),
        "frametok_boxes": int((got.score >= conf).sum()),
        "compared": int((ref.score >= conf).sum()) - skipped,
        **_figures(ref, got, matches),
        "frametok_boxes_with_twin": len(back),
        "no_area_or_tied_boxes_without_twin": skipped + skipped_back,
    }
    return record, problems + [f"frametok {p}" for p in problems_back]


def _default_sample() -> Path:
    from ultralytics.utils import ASSETS

    return Path(ASSETS) / "bus.jpg"


def _read_image(path: Path) -> NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"parity sample image {path} is missing or not a readable image")
    return np.asarray(image, np.uint8)


def _check_parity(weights: Path, manifest_path: Path, model: Any, imgsz: int, sample: Path,
                  head: DetectorHead, rect: bool = False) -> dict[str, Any]:
    """Compare Ultralytics' prediction with frametok's on ``sample``; raise ExportError when they differ.
    ``rect``: both at the rect letterbox (Ultralytics' default predict), else both at the square one.

    Never vacuous: at the default threshold (0.25) when Ultralytics finds a box scoring >= STRONG_SCORE there
    (real weights), else at a threshold lowered until it finds boxes (:func:`_low_parity`; random-init weights
    score ~1e-5); the record says which threshold, and an ExportError is raised when no box was compared.
    """
    image = _read_image(sample)
    ref = _predict_ultralytics(model, image, imgsz, head, DEFAULT_CONF, rect)
    if (ref.score >= STRONG_SCORE).any():
        got = _predict_frametok(manifest_path, image, DEFAULT_CONF, rect)
        record, problems = _parity(sample, ref, got)
    else:
        ref_all = _predict_ultralytics(model, image, imgsz, head, 0.0, rect)
        record, problems = _low_parity(sample, ref_all, manifest_path, image, rect)
    predict = f"iou=0.7 rect={rect} max_det=300{' nms=False' if head == 'end2end' else ''}"
    record = {"head": head, "ultralytics_predict": predict, **record}
    if not record["compared"]:
        raise ExportError(f"{weights}: the parity check on {sample.name} compared no boxes (Ultralytics finds "
                          f"none, even at the lowest threshold): no check at all; parity {record}")
    problems += _mask_problems(record)
    if problems:
        raise ExportError(
            f"{weights}: the ONNX export does not reproduce Ultralytics on {sample.name}"
            f"{' (rect letterbox)' if rect else ''} at threshold "
            f"{record['threshold']:g}: {'; '.join(problems[:10])}"
            f"{f' (and {len(problems) - 10} more)' if len(problems) > 10 else ''}; parity {record}"
        )
    return record


def _mask_problems(record: dict[str, Any]) -> list[str]:
    """A segmentation model's mask gate (mask_parity.py): matched boxes' masks compared, a mean cell IoU of at
    least MASK_IOU, and a mean pixel IoU at most CEILING_SLACK short of the grid's ceiling."""
    if "mask_compared" not in record:
        return []
    if not record["mask_compared"]:
        return ["no mask compared (every matched pair's masks are empty on both sides)"]
    problems = []
    if record["mask_cell_mean_iou"] < MASK_IOU:
        problems.append(f"mean mask cell IoU {record['mask_cell_mean_iou']} < {MASK_IOU} over "
                        f"{record['mask_compared']} masks (min {record['mask_cell_min_iou']})")
    if record["mask_pixel_minus_ceiling_mean"] < -CEILING_SLACK:
        problems.append(f"mean mask pixel IoU {record['mask_pixel_mean_iou']} falls short of the grid's ceiling "
                        f"{record['mask_ceiling_mean_iou']} by more than {CEILING_SLACK}")
    return problems


def _manifest(onnx_path: Path, name: str, weights: Path, opset: int, rewrites: Sequence[str] = ()) -> DetectorManifest:
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
        "rewrites": ", ".join(rewrites) or "none",
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
    end2end: bool | None = None,
) -> ModelFiles:
    """Export Ultralytics ``weights`` (.pt, or a model .yaml for random weights) to ``out_dir/<name>.onnx``.

    The ONNX has a dynamic batch axis; its manifest ``<name>.json`` is written beside it once the
    parity check (frametok's Detector against Ultralytics' own prediction) has passed. ``half`` also
    writes ``<name>.fp16.onnx``, checked against the fp32 graph on ``half_samples`` (see :func:`add_fp16`);
    ``int8`` writes ``<name>.int8.onnx``, calibrated and gated on frames of ``int8_calibrate`` (videos or
    images, see :func:`add_int8`).

    The manifest's head (``output_format``) is read from the exported graph (:func:`describe_ultralytics_onnx`):
    ``yolov8``, ``end2end`` (``end2end=True``: the one-to-one, NMS-free head of YOLO26/YOLOv10, Ultralytics'
    ``nms=False``; by default Ultralytics exports their one-to-many head) or ``rtdetr``. The parity check
    runs Ultralytics' predict the same way (:func:`_check_parity`); a .yaml's random weights are woken on the
    sample first (:func:`_wake_random_init`). ``half``/``int8`` need the ``yolov8`` head.
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
            sample = Path(sample_image).expanduser() if sample_image is not None else _default_sample()
            model, exported = _export_onnx(weights, work, imgsz, opset, end2end, sample)
            onnx_tmp = exported.rename(work / f"{name}.onnx") if exported.name != f"{name}.onnx" else exported
            rewrites = rewrite_file(onnx_tmp)  # same outputs, cheaper: checked by the parity below
            manifest = _manifest(onnx_tmp, name, weights, opset, rewrites)
            if (half or int8) and manifest.output_format != "yolov8":
                raise ExportError(f"{weights}: --half/--int8 check the yolov8 head only; this export has the "
                                  f"{manifest.output_format} head (export it without them)")
            if (half or int8) and manifest.masks is not None:
                raise ExportError(f"{weights}: --half/--int8 check detection heads only, not a segmentation "
                                  "model's masks (export it without them)")
            if check:
                write_manifest(manifest, work / f"{name}.json")
                parity = _check_parity(weights, work / f"{name}.json", model, imgsz, sample, manifest.output_format)
                if manifest.dynamic_hw and manifest.resize == "letterbox":  # Ultralytics' default predict too
                    parity["rect"] = _check_parity(weights, work / f"{name}.json", model, imgsz, sample,
                                                   manifest.output_format, rect=True)
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
