"""fp16 graphs: an fp32 ``.onnx`` converted to float16 beside it, checked against it on real images.

The conversion is onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``: weights and
arithmetic in fp16, graph input and output still float32 (the runtime's pre- and post-processing do
not change). Three things keep converted graphs loadable and runnable:

* the graph is first constant-folded by onnxruntime's *basic* optimisations (provider-independent,
  standard ONNX ops only). Exported ViTs carry shape arithmetic for position-embedding interpolation
  (``Shape -> ... -> Resize(cubic)``) and float-to-float ``Cast`` nodes. Unfolded, the converter drops
  its own input cast together with the model's ``Cast(to=float)`` right after the input, wiring the
  float32 input straight into an fp16 ``Conv`` (onnxruntime refuses the graph: "Type parameter (T) of
  Optype (Conv) bound to different types"); and with the casts kept, onnxruntime's transpose optimiser
  moves the ``Resize`` into an invalid layout at run time. For a fixed input size all of that is a
  constant, and folding it away leaves nothing to get wrong.
* ``Cast(to=float)`` nodes that remain (shape arithmetic on a dynamic batch) are made to cast to
  float16, as the converter already typed their outputs (:func:`_retype_float_casts`);
* the converter's "truncated to 1e-07" warnings (tiny weights rounded to fp16's smallest normal
  value) are collected and counted instead of printed.

:func:`add_fp16` converts, checks parity (detector: the same detections after NMS; encoder: token
cosine similarity) and headroom (the fp32 graph's largest activation on the samples against
float16's range: the CPU provider computes many fp16 nodes in fp32, so parity there would not show
an overflow on a GPU) and records the graph, its sha256 and those figures in the manifest's
``fp16`` entry. Needs ``onnx`` and ``onnxconverter-common`` (the ``export`` extra); no torch.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ExportError
from ..models.detector import Detector, LetterboxInfo
from ..models.encoder import Encoder
from ..models.manifest import DetectorManifest, EncoderManifest, Fp16Variant, file_sha256, write_manifest
from ..models.session import ModelFiles, locate_model
from ..packet import Detections
from ._common import PARITY_THREADS, box_iou, cpu_session, read_rgb, remove_quietly
from ._deps import package_versions, require_modules

__all__ = [
    "DET_MAX_SCORE_DIFF",
    "DET_MIN_IOU",
    "ENC_MIN_COSINE",
    "FP16_SUFFIX",
    "add_fp16",
    "convert_to_fp16",
    "default_samples",
    "detector_parity",
    "encoder_parity",
    "fp16_path_for",
]

FP16_SUFFIX = ".fp16.onnx"
DET_MIN_IOU = 0.9  # an fp32 detection and its fp16 twin: same class, boxes at least this close ...
DET_MAX_SCORE_DIFF = 0.02  # ... scores at most this far apart
ENC_MIN_COSINE = 0.99  # every token of every sample image
FP16_MAX = 65504.0
HEADROOM = 0.5  # the fp32 graph's activations on the samples must stay below this share of FP16_MAX


def fp16_path_for(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` (same folder)."""
    path = Path(onnx_path)
    return path.with_name(path.stem + FP16_SUFFIX)


def _fold_constants(src: Path, dst: Path) -> None:
    """onnxruntime's basic (provider-independent) optimisations, constant folding included, saved to ``dst``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3  # its "cannot constant fold" notes are not ours to fix
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own untyped errors
        raise ExportError(f"onnxruntime cannot load {src} to fold its constants: {exc}") from exc


def _prune_opsets(model: Any) -> None:
    """Drop the opset imports no node uses (onnxruntime lists all of its own domains when it saves)."""
    used = {node.domain for node in model.graph.node} | {""}
    keep = [op for op in model.opset_import if op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _retype_float_casts(model: Any) -> int:
    """``Cast(to=float)`` nodes whose output the converter typed float16: make them cast to float16.

    The converter rewrites tensors' types but not ``Cast`` targets; a graph with a dynamic batch keeps
    such casts after constant folding (shape arithmetic: a grid size or a head dimension cast to float,
    as in YOLO's anchors and timm's attention scale), and onnxruntime then refuses the graph ("Type
    (tensor(float16)) of output arg ... of node ... Cast does not match expected type (tensor(float))").
    """
    from onnx import TensorProto

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output)}
    retyped = 0
    for node in graph.node:
        if node.op_type != "Cast" or types.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
                retyped += 1
    return retyped


def convert_to_fp16(src: str | Path, dst: str | Path) -> dict[str, str]:
    """Write the fp16 version of the fp32 graph ``src`` to ``dst``; return how it was made (for the manifest)."""
    require_modules(("onnx", "onnxconverter_common"), "making an fp16 graph")
    import onnx
    from onnxconverter_common import float16

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="frametok-fp16-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        _fold_constants(src, folded)
        model = onnx.load(str(folded))
    _prune_opsets(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model16 = float16.convert_float_to_float16(model, keep_io_types=True)
        except Exception as exc:  # the converter raises ValueError and whatever onnx raises
            raise ExportError(f"converting {src} to fp16 failed: {type(exc).__name__}: {exc}") from exc
    truncated = sum("truncated" in str(w.message) for w in caught)
    retyped = _retype_float_casts(model16)
    try:
        onnx.save(model16, str(dst))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot write the fp16 graph {dst}: {exc}") from exc
    return {
        **package_versions(["onnxconverter-common", "onnx", "onnxruntime"]),
        "recipe": "onnxruntime basic constant folding, then convert_float_to_float16(keep_io_types=True)",
        "fp32_sha256": file_sha256(src),
        "truncation_warnings": str(truncated),
        "casts_retyped": str(retyped),
    }


# --------------------------------------------------------------------------- parity


def default_samples() -> list[Path]:
    """Photos to check an fp16 graph on when none are given: Ultralytics' bundled assets (bus, zidane)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.origin is not None:
        found = sorted((Path(spec.origin).parent / "assets").glob("*.jpg"))
        if found:
            return found
    raise ExportError(
        "checking an fp16 graph needs sample images (photos of the kind the model will see): "
        "pass them with --sample IMAGE (repeatable)"
    )


def activation_peak(fp32: Path, input_name: str, batches: Sequence[NDArray[np.float32]]) -> tuple[float, str]:
    """The largest ``|value|`` of any float tensor the fp32 graph computes on ``batches``, and its name.

    On the CPU provider onnxruntime runs many fp16 nodes in fp32 (it inserts casts where it has no
    fp16 kernel), so the parity check there cannot see an activation that overflows float16 on a GPU;
    this looks for one directly.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32)))
    graph = model.graph
    produced = {out for node in graph.node if node.op_type != "Constant" for out in node.output}
    listed = {o.name for o in graph.output}
    graph.output.extend(vi for vi in graph.value_info
                        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                        and vi.name in produced and vi.name not in listed)
    options = ort.SessionOptions()
    options.intra_op_num_threads = PARITY_THREADS
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as written
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    peak, where = 0.0, ""
    for batch in batches:
        for name, value in zip(names, session.run(None, {input_name: batch}), strict=True):
            top = float(np.abs(value).max()) if value.size and value.dtype.kind == "f" else 0.0
            if top > peak:
                peak, where = top, name
    return peak, where


def _check_headroom(fp32: Path, fp16: Path, input_name: str, batches: Sequence[NDArray[np.float32]],
                    record: dict[str, Any]) -> None:
    peak, where = activation_peak(fp32, input_name, batches)
    record["fp32_peak_activation"] = round(peak, 1)
    record["fp32_peak_tensor"] = where
    if peak > HEADROOM * FP16_MAX:
        raise ExportError(
            f"{fp16}: the fp32 graph reaches {peak:.4g} in {where!r} on the samples, too close to float16's "
            f"largest value ({FP16_MAX:g}): the fp16 graph could overflow on a GPU; keep this model in fp32"
        )


def _anchors_xyxy(raw: NDArray[np.float32], info: LetterboxInfo) -> NDArray[np.float32]:
    """Every anchor's box of one image's raw output ``(4 + C, A)``, in source-frame pixels."""
    cx, cy, w, h = raw[:4].astype(np.float32)
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    xyxy[:, [0, 2]] -= info.pad_xy[0]
    xyxy[:, [1, 3]] -= info.pad_xy[1]
    return np.asarray(xyxy / info.gain, np.float32)


def _compare(a: Detections, b: Detections, b_raw: NDArray[np.float32], info: LetterboxInfo, floor: float,
             names: tuple[str, str], image: str) -> tuple[list[str], list[float], list[float], int]:
    """Detections of ``a`` scoring ``>= floor`` that ``b`` does not reproduce; the IoUs and score gaps of the
    twins found; and how many ``a`` detections had no twin only through a near tie in ``b``."""
    problems, ious, gaps, ties = [], [], [], 0
    iou = box_iou(a.xyxy, b.xyxy)
    b_anchors: NDArray[np.float32] | None = None
    for i in np.argsort(-a.score, kind="stable"):
        same = b.class_id == a.class_id[i]
        j = int(np.argmax(np.where(same, iou[i], -1.0))) if same.any() else -1
        best = float(iou[i, j]) if j >= 0 else 0.0
        gap = abs(float(a.score[i]) - float(b.score[j])) if j >= 0 else 1.0
        if best >= DET_MIN_IOU and gap <= DET_MAX_SCORE_DIFF:
            ious.append(best)
            gaps.append(gap)
            continue
        if a.score[i] < floor:
            continue  # a box this close to the threshold may fall either side of it
        # A near tie: ``b`` scores this class on this box as ``a`` does, raw, but another class won that
        # anchor (argmax) or NMS dropped the box for a stronger one it overlaps by about its IoU threshold.
        b_anchors = _anchors_xyxy(b_raw, info) if b_anchors is None else b_anchors
        on_box = box_iou(a.xyxy[i], b_anchors)[0] >= DET_MIN_IOU
        class_score = float(b_raw[4 + int(a.class_id[i]), on_box].max()) if on_box.any() else 0.0
        if abs(class_score - float(a.score[i])) <= DET_MAX_SCORE_DIFF:
            ties += 1
            continue
        problems.append(
            f"{image}: {names[0]} class {int(a.class_id[i])} score {float(a.score[i]):.3f} box "
            f"{np.round(a.xyxy[i], 1).tolist()}: best {names[1]} twin IoU {best:.3f}, score gap {gap:.3f}"
        )
    return problems, ious, gaps, ties


def detector_parity(manifest: DetectorManifest, fp32: Path, fp16: Path, images: Sequence[Path]) -> dict[str, Any]:
    """Run both graphs on ``images`` (CPU) and compare detections after NMS; raise ExportError when they differ.

    Every detection of either graph scoring at least the threshold + :data:`DET_MAX_SCORE_DIFF` must
    have a twin in the other: same class, IoU >= :data:`DET_MIN_IOU`, score within
    :data:`DET_MAX_SCORE_DIFF` (one nearer the threshold may fall either side of it). A detection is
    also let through when the other graph gives its class the same score (within the tolerance) on
    the same box, raw, before NMS: a near tie between two classes that rounding tips either way
    (counted as ``near_ties``); so is one whose box NMS dropped in the other graph for
    overlapping a stronger one by about its IoU threshold.
    """
    det32, det16 = Detector(manifest, cpu_session(fp32)), Detector(manifest, cpu_session(fp16, "fp16 graph"))
    floor = det32.conf_threshold + DET_MAX_SCORE_DIFF
    problems: list[str] = []
    ious: list[float] = []
    gaps: list[float] = []
    counts = [0, 0]
    ties = 0
    raw_diff = 0.0
    batches = []
    for path in images:
        frame = read_rgb(path)
        h, w = det32.input_hw
        batch = np.empty((1, 3, h, w), np.float32)
        info = det32.preprocess(frame, batch[0])
        batches.append(batch)
        raw32, raw16 = np.asarray(det32.infer(batch)[0]), np.asarray(det16.infer(batch)[0])  # yolov8: no masks
        raw_diff = max(raw_diff, float(np.abs(raw32.astype(np.float64) - raw16).max()))
        d32, d16 = det32.postprocess(raw32, info), det16.postprocess(raw16, info)
        counts[0] += len(d32.score)
        counts[1] += len(d16.score)
        p1, i1, g1, t1 = _compare(d32, d16, raw16, info, floor, ("fp32", "fp16"), path.name)
        p2, _, _, t2 = _compare(d16, d32, raw32, info, floor, ("fp16", "fp32"), path.name)
        problems += p1 + p2
        ious += i1
        gaps += g1
        ties += t1 + t2
    record: dict[str, Any] = {
        "samples": [p.name for p in images],
        "boxes_fp32": counts[0],
        "boxes_fp16": counts[1],
        "matched": len(ious),
        "near_ties": ties,
        "min_iou": round(min(ious), 4) if ious else None,
        "max_score_diff": round(max(gaps), 4) if gaps else None,
        "raw_max_abs_diff": round(raw_diff, 4),
        "rule": f"score >= {floor:.2f}: same class, IoU >= {DET_MIN_IOU}, score within {DET_MAX_SCORE_DIFF}",
    }
    _check_headroom(fp32, fp16, manifest.input_name, batches, record)
    if problems:
        raise ExportError(f"{fp16}: the fp16 graph does not reproduce the fp32 detections: {'; '.join(problems)}; "
                          f"parity {record}")
    return record


def encoder_parity(manifest: EncoderManifest, fp32: Path, fp16: Path, images: Sequence[Path]) -> dict[str, Any]:
    """Run both graphs on ``images`` (CPU) and compare every token; raise ExportError below :data:`ENC_MIN_COSINE`."""
    enc32, enc16 = Encoder(manifest, cpu_session(fp32)), Encoder(manifest, cpu_session(fp16, "fp16 graph"))
    batch = np.empty((len(images), 3, *enc32.input_hw), np.float32)
    for i, path in enumerate(images):
        enc32.preprocess(read_rgb(path), batch[i])
    a, b = enc32.infer(batch).astype(np.float64), enc16.infer(batch).astype(np.float64)
    cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    record: dict[str, Any] = {
        "samples": [p.name for p in images],
        "tokens_shape": list(a.shape),
        "min_cosine": round(float(cosine.min()), 6),
        "mean_cosine": round(float(cosine.mean()), 6),
        "max_abs_diff": round(float(np.abs(a - b).max()), 4),
        "finite": bool(np.isfinite(b).all()),
    }
    _check_headroom(fp32, fp16, manifest.input_name, [batch[i : i + 1] for i in range(len(batch))], record)
    if not record["finite"] or record["min_cosine"] < ENC_MIN_COSINE:
        raise ExportError(f"{fp16}: the fp16 tokens differ from the fp32 ones (min cosine {record['min_cosine']} "
                          f"< {ENC_MIN_COSINE}, or not finite); parity {record}")
    return record


# --------------------------------------------------------------------------- manifest


def add_fp16(files: ModelFiles, samples: Sequence[str | Path] | None = None) -> ModelFiles:
    """Convert ``files``' graph to fp16 (``<name>.fp16.onnx`` beside it), check it on ``samples`` and add it
    to the manifest (``fp16``: file, sha256, converter, parity). Leaves the model as it was when a step fails."""
    if files.manifest_path is None:
        raise ExportError(f"{files.onnx_path}: an fp16 graph is recorded in the manifest file; this model has none")
    images = [Path(s).expanduser() for s in samples] if samples else default_samples()
    target = fp16_path_for(files.onnx_path)
    staging = target.with_name(f".{target.name}.partial")
    try:
        converter = convert_to_fp16(files.onnx_path, staging)
        man = files.manifest
        if isinstance(man, DetectorManifest):
            parity = detector_parity(man, files.onnx_path, staging, images)
        else:
            parity = encoder_parity(man, files.onnx_path, staging, images)
        variant = Fp16Variant(
            onnx_file=os.path.relpath(target.resolve(), files.manifest_path.resolve().parent),
            onnx_sha256=file_sha256(staging),
            converter=converter,
            parity=parity,
        )
        os.replace(staging, target)
    except OSError as exc:
        raise ExportError(f"cannot write the fp16 graph {target}: {exc}") from exc
    finally:
        remove_quietly(staging)
    try:
        write_manifest(man.model_copy(update={"fp16": variant}), files.manifest_path)
    except OSError as exc:
        remove_quietly(target)
        raise ExportError(f"cannot rewrite the manifest {files.manifest_path}: {exc}") from exc
    return locate_model(files.manifest_path)
