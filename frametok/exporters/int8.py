"""int8 graphs: an fp32 ``.onnx`` quantised with onnxruntime beside it, gated on frames it was not calibrated on.

* **Detector**: static QDQ quantisation (``quantize_static``), int8 weights per output channel, uint8
  activations whose ranges are calibrated on real frames (percentile 99.999 of each tensor's histogram:
  MinMax lets rare outliers widen the ranges, and on YOLOv8n took the twins on 60 held-out vtest frames
  from 97% to 93.5%). Some ops stay in float (:func:`float_nodes`): quantising the head's final ops
  wrecks the class scores (one uint8 scale for an output that holds box coordinates up to 640 and
  scores in 0..1: no detection survives). The ``fast`` rule keeps the first conv, each head branch's last
  conv and the decoding in float; when that graph fails its gate, the ``careful`` rule (also the second
  conv and the head's class branch in float: 17.8 against 15.6 ms a 640x480 frame on 2 cores) is tried.
  The graph quantised is the fp32 one with the :mod:`.rewrite` rewrites (the DFL softmax): the gate
  compares it with the fp32 graph as it is.
* **Encoder**: dynamic quantisation of its MatMuls (``quantize_dynamic``, int8 weights per channel,
  activations quantised per batch at run time): no calibration frames needed.

Before it reports success the int8 graph is run beside the fp32 one (CPU provider) on **held-out**
frames, frames not used for calibration, and must pass its gate: detector - at least
:attr:`DetectorGate.min_matched` of the fp32 detections have an int8 twin (same class, IoU >=
:attr:`DetectorGate.min_iou`, score within :attr:`DetectorGate.max_score_diff`) and the other way round,
on frames where the fp32 graph finds enough boxes to mean something; encoder - per-token cosine to the
fp32 tokens, minimum and median. A graph that fails is refused with the failing figures; one that
passes goes into the manifest's ``int8`` entry with those figures. Needs onnxruntime and onnx; no torch.

Frames come from ``--calibrate`` sources (videos, images or folders of images): spread evenly over each
video, then dealt alternately to calibration and held-out sets, so both cover every source.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ExportError
from ..models.detector import Detector
from ..models.encoder import Encoder
from ..models.manifest import DetectorManifest, EncoderManifest, Int8Variant, file_sha256, write_manifest
from ..models.session import ModelFiles, locate_model
from ._common import box_iou, cpu_session, read_rgb, remove_quietly
from ._deps import package_versions, require_modules

__all__ = [
    "CALIBRATION_FRAMES",
    "FLOAT_RULES",
    "HELDOUT_FRAMES",
    "INT8_SUFFIX",
    "DetectorGate",
    "EncoderGate",
    "Frame",
    "add_int8",
    "detector_int8_parity",
    "encoder_int8_parity",
    "float_nodes",
    "int8_path_for",
    "quantize_detector",
    "quantize_encoder",
    "sample_frames",
    "split_frames",
]

INT8_SUFFIX = ".int8.onnx"
CALIBRATION_FRAMES = 16
HELDOUT_FRAMES = 16
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
ENCODER_BATCH = 4
CALIBRATION_PERCENTILE = 99.999  # of each activation's histogram over the calibration frames


@dataclass(frozen=True)
class DetectorGate:
    """What an int8 detector must reproduce of the fp32 one on the held-out frames."""

    min_matched: float = 0.95  # share of detections (either graph's) with a twin in the other
    min_iou: float = 0.9  # a twin: same class, boxes at least this close ...
    max_score_diff: float = 0.05  # ... scores at most this far apart
    min_reference_boxes: int = 10  # fewer fp32 detections than this on the held-out frames prove nothing


@dataclass(frozen=True)
class EncoderGate:
    """What an int8 encoder's tokens must keep of the fp32 ones on the held-out frames (cosine per token)."""

    min_cosine: float = 0.98
    median_cosine: float = 0.995


@dataclass(frozen=True)
class Frame:
    """One RGB frame taken for calibration or parity, with where it came from (``vtest.avi#120``)."""

    label: str
    rgb: NDArray[np.uint8]


def int8_path_for(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (same folder)."""
    path = Path(onnx_path)
    return path.with_name(path.stem + INT8_SUFFIX)


# --------------------------------------------------------------------------- frames


def _expand(sources: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Images and videos among ``sources`` (a folder stands for the images in it)."""
    images: list[Path] = []
    videos: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ExportError(f"calibration folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            images += found
        elif not path.is_file():
            raise ExportError(f"calibration source {path} does not exist")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            videos.append(path)
    return images, videos


def _video_frames(path: Path, count: int) -> list[Frame]:
    """``count`` frames spread evenly over the video ``path`` (its first and last frame included)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            total = stream.frames
        if total <= 0:  # the container does not say: count them
            with av.open(str(path)) as container:
                total = sum(1 for _ in container.decode(video=0))
        want = sorted(set(np.linspace(0, max(total - 1, 0), count).round().astype(int).tolist()))
        taken: list[Frame] = []
        with av.open(str(path)) as container:
            container.streams.video[0].thread_type = "AUTO"
            for index, frame in enumerate(container.decode(video=0)):
                if index in want:
                    taken.append(Frame(f"{path.name}#{index}", np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)))
                if index >= want[-1]:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise ExportError(f"calibration source {path} is not a readable video or image: {exc}") from exc
    if not taken:
        raise ExportError(f"calibration video {path} has no decodable frames")
    return taken


def sample_frames(sources: Sequence[str | Path], count: int) -> list[Frame]:
    """About ``count`` frames from ``sources``: every image given, the rest spread evenly over each video."""
    if not sources:
        raise ExportError("an int8 graph needs real frames to calibrate and check it on: give --calibrate VIDEO|IMAGE "
                          "(repeatable; a folder stands for its images)")
    images, videos = _expand(sources)
    frames = [Frame(p.name, read_rgb(p)) for p in images]
    if videos:
        per_video = max(2, -(-(count - len(frames)) // len(videos)))
        for video in videos:
            frames += _video_frames(video, per_video)
    return frames


def split_frames(frames: Sequence[Frame], calibration: int) -> tuple[list[Frame], list[Frame]]:
    """Deal ``frames`` evenly into ``calibration`` calibration frames and the held-out rest (never both)."""
    calibration = min(calibration, len(frames) - 1)
    calib: list[Frame] = []
    held: list[Frame] = []
    for i, frame in enumerate(frames):  # Bresenham: calibration frames spread evenly among the held-out ones
        (calib if (i + 1) * calibration // len(frames) > i * calibration // len(frames) else held).append(frame)
    return calib, held


# --------------------------------------------------------------------------- quantisation


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger ("consider pre-processing") and prints its
    calibration steps on stdout: neither is ours to act on, and stdout is the CLI's."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


_ULTRALYTICS_NODE = re.compile(r"^/model\.(\d+)/")
_BOX_BRANCH_STEM = re.compile(r"/cv2\.\d+/cv2\.\d+\.[01]/")  # Detect.cv2[i][0..1]: the box branch's 3x3 convs
_BRANCH_STEMS = re.compile(r"/cv[23]\.\d+/cv[23]\.\d+\.[01]/")  # ... and the class branch's (cv3[i][0..1])
FLOAT_RULES = ("fast", "careful")  # tried in this order until a graph passes its gate


def float_nodes(model: Any, rule: str = "fast") -> tuple[list[str], str]:
    """The detector nodes kept in float by ``rule`` (:data:`FLOAT_RULES`), and how the rule picked them.

    An Ultralytics export (nodes named ``/model.N/...``; the last module is the Detect head): ``fast`` keeps
    the first conv (module 0) and the head except its branches' 3x3 convs (``cv2.i.0-1``, ``cv3.i.0-1``):
    the last conv of each branch, DFL, box decoding, sigmoid, concat; ``careful`` also module 1 and the
    class branch (``cv3.i.0-1``). Another graph: the nodes from the graph's output back to (and including)
    the last Conv on each path, and the first one (``fast``) or two (``careful``) Convs.
    """
    if rule not in FLOAT_RULES:
        raise ValueError(f"float rule: expected one of {FLOAT_RULES}, got {rule!r}")
    fast = rule == "fast"
    nodes = list(model.graph.node)
    modules = [int(m.group(1)) for n in nodes if (m := _ULTRALYTICS_NODE.match(n.name))]
    if modules and len(modules) >= len(nodes) // 2:
        head = f"/model.{max(modules)}/"
        stem = ("/model.0/",) if fast else ("/model.0/", "/model.1/")
        quantised = _BRANCH_STEMS if fast else _BOX_BRANCH_STEM
        keep = [n.name for n in nodes
                if n.name.startswith(stem) or (n.name.startswith(head) and not quantised.search(n.name))]
        if fast:
            return keep, f"ultralytics fast: stem /model.0/ and head {head} except its branches' cv2/cv3.i.0-1 convs"
        return keep, f"ultralytics careful: stem /model.0-1/ and head {head} except the box branch's cv2.i.0-1 convs"
    producer = {out: n for n in nodes for out in n.output}
    keep_set: set[str] = set()
    todo = [producer[o.name] for o in model.graph.output if o.name in producer]
    while todo:
        node = todo.pop()
        if node.name in keep_set:
            continue
        keep_set.add(node.name)
        if node.op_type != "Conv":
            todo += [producer[i] for i in node.input if i in producer]
    first = 1 if fast else 2
    keep_set |= {n.name for n in [n for n in nodes if n.op_type == "Conv"][:first]}
    return ([n.name for n in nodes if n.name in keep_set],
            f"generic {rule}: output back to the last Convs, first {'Conv' if fast else 'two Convs'}")


class _Batches:
    """onnxruntime's CalibrationDataReader protocol (``get_next``, all its calibrators call) over preprocessed
    ``(1, 3, H, W)`` batches."""

    def __init__(self, input_name: str, batches: Sequence[NDArray[np.float32]]) -> None:
        self.input_name, self.batches, self.next = input_name, list(batches), 0

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        if self.next >= len(self.batches):
            return None
        self.next += 1
        return {self.input_name: self.batches[self.next - 1]}

    def rewind(self) -> None:
        self.next = 0


def quantize_detector(src: Path, dst: Path, input_name: str, batches: Sequence[NDArray[np.float32]],
                      keep_float: bool = True, rule: str = "fast") -> dict[str, str]:
    """Static QDQ int8 of the detector ``src`` (rewritten first, :mod:`.rewrite`) into ``dst``, calibrated on
    ``batches``, float nodes picked by ``rule``; how it was made.

    ``keep_float=False`` quantises every node, head included (it fails the gate on YOLOv8n: kept for tests
    and for comparing).
    """
    require_modules(("onnx", "onnxruntime.quantization"), "making an int8 graph")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .rewrite import rewrite_graph

    model = onnx.load(str(src))
    rewrites = rewrite_graph(model)
    rewritten = dst.with_name(f".{dst.stem}.rewritten.onnx") if rewrites else src
    if rewrites:
        onnx.save(model, str(rewritten))
    excluded, how = float_nodes(model, rule) if keep_float else ([], "none: every node quantised")
    try:
        with _quiet_quantizer():
            quantize_static(str(rewritten), str(dst), _Batches(input_name, batches),  # type: ignore[arg-type]
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE})
    except Exception as exc:  # onnxruntime.quantization raises whatever onnx and numpy raise
        raise ExportError(f"quantising {src} to int8 failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if rewrites:
            remove_quietly(rewritten)
    return {
        **package_versions(["onnxruntime", "onnx"]),
        "method": "quantize_static QDQ, weights int8 per channel, activations uint8, calibration percentile "
                  f"{CALIBRATION_PERCENTILE}",
        "rewrites": ", ".join(rewrites) or "none",
        "float_nodes": str(len(excluded)),
        "float_rule": how,
        "fp32_sha256": file_sha256(src),
    }


def quantize_encoder(src: Path, dst: Path) -> dict[str, str]:
    """Dynamic int8 of the encoder ``src``'s MatMuls (weights per channel) into ``dst``; how it was made."""
    require_modules(("onnx", "onnxruntime.quantization"), "making an int8 graph")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet_quantizer():
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8)
    except Exception as exc:  # onnxruntime.quantization raises whatever onnx and numpy raise
        raise ExportError(f"quantising {src} to int8 failed: {type(exc).__name__}: {exc}") from exc
    return {
        **package_versions(["onnxruntime", "onnx"]),
        "method": "quantize_dynamic on MatMul, weights int8 per channel, activations quantised at run time",
        "fp32_sha256": file_sha256(src),
    }


# --------------------------------------------------------------------------- parity gates


def _twins(a: Any, b: Any, gate: DetectorGate, floor: float) -> tuple[int, int, list[float], list[float]]:
    """Detections of ``a`` scoring ``>= floor``, how many have a twin in ``b`` (one ``b`` box per twin), and
    the IoUs and score gaps of those twins."""
    iou = box_iou(a.xyxy, b.xyxy)
    free = np.ones(len(b.score), bool)
    counted = twins = 0
    ious: list[float] = []
    gaps: list[float] = []
    for i in np.argsort(-a.score, kind="stable"):
        if a.score[i] < floor:
            continue  # one this near the threshold may fall either side of it within the score tolerance
        counted += 1
        ok = free & (b.class_id == a.class_id[i]) & (iou[i] >= gate.min_iou) \
            & (np.abs(b.score - a.score[i]) <= gate.max_score_diff)
        if ok.any():
            j = int(np.argmax(np.where(ok, iou[i], -1.0)))
            free[j] = False
            twins += 1
            ious.append(float(iou[i, j]))
            gaps.append(abs(float(a.score[i]) - float(b.score[j])))
    return counted, twins, ious, gaps


def detector_int8_parity(manifest: DetectorManifest, fp32: Path, int8: Path, frames: Sequence[Frame],
                         gate: DetectorGate | None = None) -> dict[str, Any]:
    """Run both graphs on ``frames`` (CPU) and compare detections after NMS; raise ExportError when the gate fails.

    Detections scoring at least the threshold + ``max_score_diff`` count (one nearer the threshold may
    fall either side of it and still be within the tolerance); of those, ``matched_fp32`` is the share
    of fp32 detections with an int8 twin and ``matched_int8`` the share of int8 detections with an fp32
    twin. Both must reach ``min_matched``, on frames where the fp32 graph finds ``min_reference_boxes``.
    Frames go in as the worker gives them by default: at the rect letterbox of their own aspect when the
    graph takes any height and width (``input``: ``rect``), else at the square input.
    """
    record, failed = _detector_figures(manifest, fp32, int8, frames, gate or DetectorGate())
    _judge(int8, "detector", record, failed, len(frames))
    return record


def _detector_figures(manifest: DetectorManifest, fp32: Path, int8: Path, frames: Sequence[Frame],
                      gate: DetectorGate) -> tuple[dict[str, Any], list[str]]:
    """:func:`detector_int8_parity`'s figures, and the gate's failures (empty: it passed)."""
    rect = manifest.dynamic_hw and manifest.resize == "letterbox"  # the worker's default (detector.rect null)
    det32 = Detector(manifest, cpu_session(fp32), rect=rect)
    det8 = Detector(manifest, cpu_session(int8, "int8 graph"), rect=rect)
    floor = det32.conf_threshold + gate.max_score_diff
    counts = {"fp32": 0, "int8": 0, "fp32_twins": 0, "int8_twins": 0}
    ious: list[float] = []
    gaps: list[float] = []
    raw_diff = 0.0
    inputs: set[tuple[int, int]] = set()
    for frame in frames:
        input_hw = det32.input_hw_for((frame.rgb.shape[0], frame.rgb.shape[1]))
        inputs.add(input_hw)
        batch = np.empty((1, 3, *input_hw), np.float32)
        info = det32.preprocess(frame.rgb, batch[0])
        raw32, raw8 = np.asarray(det32.infer(batch)[0]), np.asarray(det8.infer(batch)[0])  # yolov8: no masks
        raw_diff = max(raw_diff, float(np.abs(raw32[4:].astype(np.float64) - raw8[4:]).max()))
        d32, d8 = det32.postprocess(raw32, info), det8.postprocess(raw8, info)
        n32, t32, i32, g32 = _twins(d32, d8, gate, floor)
        n8, t8, _, _ = _twins(d8, d32, gate, floor)
        counts["fp32"] += n32
        counts["int8"] += n8
        counts["fp32_twins"] += t32
        counts["int8_twins"] += t8
        ious += i32
        gaps += g32
    matched32 = counts["fp32_twins"] / counts["fp32"] if counts["fp32"] else 0.0
    matched8 = counts["int8_twins"] / counts["int8"] if counts["int8"] else 0.0
    record: dict[str, Any] = {
        "heldout_samples": [f.label for f in frames],
        "input": ("rect " if rect else "square ") + ", ".join(f"{w}x{h}" for h, w in sorted(inputs)),
        "boxes_fp32": counts["fp32"],
        "boxes_int8": counts["int8"],
        "matched_fp32": round(matched32, 4),
        "matched_int8": round(matched8, 4),
        "min_iou": round(min(ious), 4) if ious else None,
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "max_score_diff": round(max(gaps), 4) if gaps else None,
        "max_class_score_diff_raw": round(raw_diff, 4),
        "rule": f"detections scoring >= {floor:.2f}: a twin has the same class, IoU >= {gate.min_iou}, "
                f"score within {gate.max_score_diff}",
        "gate": asdict(gate),
    }
    failed = []
    if counts["fp32"] < gate.min_reference_boxes:
        failed.append(f"boxes_fp32 {counts['fp32']} < {gate.min_reference_boxes} (the held-out frames show too "
                      "few objects to judge by: calibrate on frames the model finds things in)")
    for key, value in (("matched_fp32", matched32), ("matched_int8", matched8)):
        if value < gate.min_matched:
            failed.append(f"{key} {value:.3f} < {gate.min_matched}")
    return record, failed


def encoder_int8_parity(manifest: EncoderManifest, fp32: Path, int8: Path, frames: Sequence[Frame],
                        gate: EncoderGate | None = None) -> dict[str, Any]:
    """Run both graphs on ``frames`` (CPU) and compare every token (cosine); raise ExportError when the gate fails."""
    gate = gate or EncoderGate()
    enc32, enc8 = Encoder(manifest, cpu_session(fp32)), Encoder(manifest, cpu_session(int8, "int8 graph"))
    cosines: list[NDArray[np.float64]] = []
    finite, tokens_per_frame = True, 0
    for start in range(0, len(frames), ENCODER_BATCH):
        chunk = frames[start : start + ENCODER_BATCH]
        batch = np.empty((len(chunk), 3, *enc32.input_hw), np.float32)
        for i, frame in enumerate(chunk):
            enc32.preprocess(frame.rgb, batch[i])
        a, b = enc32.infer(batch).astype(np.float64), enc8.infer(batch).astype(np.float64)
        finite = finite and bool(np.isfinite(b).all())
        norms = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
        cosines.append(((a * b).sum(-1) / norms).ravel())
        tokens_per_frame = a.shape[1]
    cos = np.concatenate(cosines)
    record: dict[str, Any] = {
        "heldout_samples": [f.label for f in frames],
        "tokens": int(cos.size),
        "tokens_per_frame": int(tokens_per_frame),
        "min_cosine": round(float(cos.min()), 6),
        "median_cosine": round(float(np.median(cos)), 6),
        "mean_cosine": round(float(cos.mean()), 6),
        "finite": finite,
        "gate": asdict(gate),
    }
    failed = []
    if not finite:
        failed.append("finite false (the int8 tokens hold NaN or inf)")
    if record["min_cosine"] < gate.min_cosine:
        failed.append(f"min_cosine {record['min_cosine']} < {gate.min_cosine}")
    if record["median_cosine"] < gate.median_cosine:
        failed.append(f"median_cosine {record['median_cosine']} < {gate.median_cosine}")
    _judge(int8, "encoder", record, failed, len(frames))
    return record


def _quantize_detector_gated(src: Path, dst: Path, man: DetectorManifest, batches: Sequence[NDArray[np.float32]],
                             held: Sequence[Frame], gate: DetectorGate | None,
                             keep_float: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """Quantise with each float rule in turn (:data:`FLOAT_RULES`) until a graph passes its gate; the last
    failure is raised with its figures, the earlier ones are recorded in the parity as ``tried``."""
    tried: list[str] = []
    for rule in FLOAT_RULES if keep_float else FLOAT_RULES[:1]:
        quantizer = quantize_detector(src, dst, man.input_name, batches, keep_float, rule)
        parity, failed = _detector_figures(man, src, dst, held, gate or DetectorGate())
        if not failed:
            break
        tried.append(f"{rule}: {'; '.join(failed)}")
    if tried and not failed:
        parity["tried"] = tried
    _judge(dst, "detector", parity, failed, len(held))  # the last rule's failure, with its figures
    return quantizer, parity


def _judge(int8: Path, kind: str, record: dict[str, Any], failed: list[str], frames: int) -> None:
    record["passed"] = not failed
    if failed:
        raise ExportError(f"{int8}: the int8 {kind} fails its parity gate against the fp32 graph on {frames} held-out "
                          f"frame(s): {'; '.join(failed)}; the int8 graph is not kept; parity {record}")


# --------------------------------------------------------------------------- manifest


def add_int8(files: ModelFiles, calibrate: Sequence[str | Path], *, calibration_frames: int = CALIBRATION_FRAMES,
             heldout_frames: int = HELDOUT_FRAMES, detector_gate: DetectorGate | None = None,
             encoder_gate: EncoderGate | None = None, keep_float: bool = True) -> ModelFiles:
    """Quantise ``files``' graph to int8 (``<name>.int8.onnx`` beside it), gate it on held-out frames from
    ``calibrate`` and add it to the manifest (``int8``: file, sha256, quantiser, frame counts, parity).

    A detector takes ``calibration_frames`` frames for calibration and ``heldout_frames`` others for its
    gate; an encoder (dynamic quantisation) needs no calibration and is gated on ``heldout_frames``.
    Leaves the model as it was when a step fails (a graph failing its gate is not kept).
    """
    if files.manifest_path is None:
        raise ExportError(f"{files.onnx_path}: an int8 graph is recorded in the manifest file; this model has none")
    if calibration_frames < 1 or heldout_frames < 1:
        raise ExportError(f"int8: calibration and held-out frames must be >= 1, got {calibration_frames} and "
                          f"{heldout_frames}")
    man = files.manifest
    detector = isinstance(man, DetectorManifest)
    frames = sample_frames(calibrate, calibration_frames + heldout_frames if detector else heldout_frames)
    calib, held = split_frames(frames, calibration_frames) if detector else ([], list(frames))
    if detector and (not calib or not held):
        raise ExportError(f"int8: {len(frames)} frame(s) from {', '.join(map(str, calibrate))} cannot be split into "
                          "calibration and held-out frames; give a video or more images")
    target = int8_path_for(files.onnx_path)
    staging = target.with_name(f".{target.stem}.partial.onnx")
    try:
        if isinstance(man, DetectorManifest):
            det = Detector(man, cpu_session(files.onnx_path))
            batches = []
            for frame in calib:
                batch = np.empty((1, 3, *det.input_hw), np.float32)
                det.preprocess(frame.rgb, batch[0])
                batches.append(batch)
            quantizer, parity = _quantize_detector_gated(files.onnx_path, staging, man, batches, held,
                                                         detector_gate, keep_float)
        else:
            quantizer = quantize_encoder(files.onnx_path, staging)
            parity = encoder_int8_parity(man, files.onnx_path, staging, held, encoder_gate)
        parity["calibration_samples"] = [f.label for f in calib]
        variant = Int8Variant(
            onnx_file=os.path.relpath(target.resolve(), files.manifest_path.resolve().parent),
            onnx_sha256=file_sha256(staging),
            quantizer=quantizer,
            calibration_frames=len(calib),
            heldout_frames=len(held),
            parity=parity,
        )
        os.replace(staging, target)
    except OSError as exc:
        raise ExportError(f"cannot write the int8 graph {target}: {exc}") from exc
    finally:
        remove_quietly(staging)
    try:
        write_manifest(man.model_copy(update={"int8": variant}), files.manifest_path)
    except OSError as exc:
        remove_quietly(target)
        raise ExportError(f"cannot rewrite the manifest {files.manifest_path}: {exc}") from exc
    return locate_model(files.manifest_path)
