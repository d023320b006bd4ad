"""fp16 graphs end to end: `frametok export ... --half` on the real YOLOv8n and DINOv2 ONNX, the models run
in fp16 against fp32 on real photos (CPU provider), and a real `frametok run --precision fp16`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest

from frametok import EndOfStream, StreamInfo, TokenPacket
from frametok.errors import ExportError, ModelError
from frametok.exporters.half import detector_parity
from frametok.exporters.yolo import box_iou
from frametok.models.detector import Detector
from frametok.models.encoder import Encoder
from frametok.models.manifest import DetectorManifest, EncoderManifest, file_sha256
from frametok.models.session import (
    ModelFiles,
    check_precision,
    choose_precision,
    create_session,
    locate_model,
    session_precision,
)

from .conftest import free_endpoint, run_cli
from .streamer.test_pipeline import run_and_collect

SAMPLES = ("bus.jpg", "zidane.jpg", "astronaut.png", "chelsea.png", "coffee.png", "fruits.jpg", "grace_hopper.jpg")
MIN_IOU, MAX_SCORE_DIFF, MIN_COSINE = 0.9, 0.02, 0.99
SURE = 0.25 + MAX_SCORE_DIFF  # detections this confident must have a twin; nearer the threshold may flip


@pytest.fixture(scope="module")
def half_dir(shared_models: Path, shared_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both shared models exported with --half into one folder, through the real CLI (no torch needed)."""
    out = tmp_path_factory.mktemp("half")
    samples = [a for name in SAMPLES for a in ("--sample", str(shared_media / name))]
    det = run_cli("export", "yolo", str(shared_models / "yolov8n_coco.onnx"), "--out", str(out), "--half", *samples)
    assert det.returncode == 0, det.stderr
    enc = run_cli("export", "encoder", str(shared_models / "dinov2_vits14.onnx"), "--out", str(out),
                  "--prefix-tokens", "1", "--context", "cls", "--half", *samples)
    assert enc.returncode == 0, enc.stderr
    return out


def _images(media: Path) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(media / name)), cv2.COLOR_BGR2RGB) for name in SAMPLES]


def _twins_missing(a: Any, b: Any, ties: list[str] | None = None) -> list[str]:
    """Detections of ``a`` scoring >= SURE without a twin in ``b`` (same class, IoU >= 0.9, score within 0.02).

    With ``ties``, one on which ``b`` has a detection (IoU >= 0.6, any class) goes there instead: a near
    tie that rounding tips either way, two classes scored alike on one anchor or two boxes overlapping
    by about NMS's IoU threshold (0.7) (the exporter checks those on the raw output; packets have none).
    """
    iou = box_iou(a.xyxy, b.xyxy)
    missing = []
    for i in np.flatnonzero(a.score >= SURE):
        ok = (b.class_id == a.class_id[i]) & (iou[i] >= MIN_IOU) & (np.abs(b.score - a.score[i]) <= MAX_SCORE_DIFF)
        if ok.any():
            continue
        what = f"class {a.class_id[i]} score {a.score[i]:.3f} box {np.round(a.xyxy[i], 1).tolist()}"
        if ties is not None and (iou[i] >= 0.6).any():
            ties.append(what)
        else:
            missing.append(what)
    return missing


def test_export_half_writes_both_graphs_and_records_them(half_dir: Path, shared_models: Path) -> None:
    assert sorted(p.name for p in half_dir.iterdir()) == [
        "dinov2_vits14.fp16.onnx", "dinov2_vits14.json", "dinov2_vits14.onnx",
        "yolov8n_coco.fp16.onnx", "yolov8n_coco.json", "yolov8n_coco.onnx",
    ]
    for stem in ("yolov8n_coco", "dinov2_vits14"):
        files = locate_model(half_dir / f"{stem}.json")
        man, fp16 = files.manifest, files.manifest.fp16
        assert fp16 is not None and fp16.onnx_file == f"{stem}.fp16.onnx"
        assert files.fp16_onnx_path == (half_dir / f"{stem}.fp16.onnx").resolve()
        assert fp16.onnx_sha256 == file_sha256(half_dir / f"{stem}.fp16.onnx")
        assert man.onnx_sha256 == file_sha256(shared_models / f"{stem}.onnx")  # the fp32 graph is the original
        assert fp16.converter["fp32_sha256"] == man.onnx_sha256 and "onnxconverter-common" in fp16.converter
        assert fp16.parity is not None and fp16.parity["samples"] == list(SAMPLES)
        assert 10 < fp16.parity["fp32_peak_activation"] < 0.5 * 65504  # measured: YOLO 643.5, DINOv2 959.5
        # float16 weights and arithmetic, float32 at the edges (the runtime's pre/post-processing is unchanged)
        graph = onnx.load(str(half_dir / fp16.onnx_file)).graph
        assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.FLOAT]
        assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.FLOAT]
        big = [t for t in graph.initializer if np.prod(t.dims) >= 1024]
        assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
        assert (half_dir / fp16.onnx_file).stat().st_size < 0.55 * (half_dir / man.onnx_file).stat().st_size
    det = locate_model(half_dir / "yolov8n_coco.json").manifest.fp16
    assert det is not None and det.parity is not None
    assert det.parity["boxes_fp32"] == det.parity["boxes_fp16"] == det.parity["matched"] >= 15
    assert det.parity["min_iou"] >= MIN_IOU and det.parity["max_score_diff"] <= MAX_SCORE_DIFF
    enc = locate_model(half_dir / "dinov2_vits14.json").manifest.fp16
    assert enc is not None and enc.parity is not None
    assert enc.parity["tokens_shape"] == [len(SAMPLES), 257, 384] and enc.parity["min_cosine"] >= MIN_COSINE


def test_half_on_an_onnx_with_a_manifest_keeps_that_manifest(half_dir: Path, shared_media: Path,
                                                              tmp_path: Path) -> None:
    for name in ("yolov8n_coco.onnx", "yolov8n_coco.json"):
        shutil.copy(half_dir / name, tmp_path / name)
    before = locate_model(tmp_path / "yolov8n_coco.json").manifest
    done = run_cli("export", "yolo", str(tmp_path / "yolov8n_coco.onnx"), "--half",
                   "--sample", str(shared_media / "bus.jpg"))
    assert done.returncode == 0, done.stderr
    after = locate_model(tmp_path / "yolov8n_coco.json").manifest
    assert after.model_copy(update={"fp16": None}) == before.model_copy(update={"fp16": None})
    assert after.fp16 is not None and after.fp16.parity is not None and after.fp16.parity["samples"] == ["bus.jpg"]
    assert after.fp16.onnx_sha256 == file_sha256(tmp_path / "yolov8n_coco.fp16.onnx")


def test_detector_fp16_gives_the_same_detections_as_fp32(half_dir: Path, shared_media: Path) -> None:
    files = locate_model(half_dir / "yolov8n_coco.json")
    assert isinstance(files.manifest, DetectorManifest)
    s32 = create_session(files, ("cpu",), 2, precision="fp32")
    s16 = create_session(files, ("cpu",), 2, precision="fp16")
    assert (session_precision(s32), session_precision(s16)) == ("fp32", "fp16")
    det32, det16 = Detector(files.manifest, s32), Detector(files.manifest, s16)
    assert (det32.precision, det16.precision) == ("fp32", "fp16")
    frames = _images(shared_media)
    total = 0
    for name, a, b in zip(SAMPLES, det32(frames), det16(frames), strict=True):
        assert not _twins_missing(a, b) and not _twins_missing(b, a), name
        total += len(a.score)
    assert total >= 15


def test_encoder_fp16_tokens_match_fp32(half_dir: Path, shared_media: Path) -> None:
    files = locate_model(half_dir / "dinov2_vits14.json")
    assert isinstance(files.manifest, EncoderManifest)
    enc32 = Encoder(files.manifest, create_session(files, ("cpu",), 2, precision="fp32"))
    enc16 = Encoder(files.manifest, create_session(files, ("cpu",), 2, precision="fp16"))
    batch = np.empty((len(SAMPLES), 3, 224, 224), np.float32)
    for i, frame in enumerate(_images(shared_media)):
        enc32.preprocess(frame, batch[i])
    a, b = enc32.infer(batch).astype(np.float64), enc16.infer(batch).astype(np.float64)
    assert a.shape == b.shape == (len(SAMPLES), 257, 384)
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cosine.min() >= MIN_COSINE
    # the fp16 graph is not the fp32 one run again: its tokens differ, a little
    assert np.abs(a - b).max() > 1e-4


def test_precision_choice(half_dir: Path, shared_models: Path) -> None:
    with_fp16 = locate_model(half_dir / "yolov8n_coco.json")
    without = ModelFiles(with_fp16.manifest.model_copy(update={"fp16": None}), with_fp16.onnx_path,
                         with_fp16.manifest_path)
    gpu, cpu = ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]
    trt = ["TensorrtExecutionProvider", *gpu]
    assert [choose_precision(with_fp16, "auto", p) for p in (trt, gpu, cpu)] == ["fp16", "fp16", "fp32"]
    assert [choose_precision(with_fp16, "fp32", p) for p in (gpu, cpu)] == ["fp32", "fp32"]
    assert [choose_precision(with_fp16, "fp16", p) for p in (gpu, cpu)] == ["fp16", "fp16"]
    assert choose_precision(without, "auto", gpu) == "fp32"
    check_precision(with_fp16, "fp16")
    check_precision(without, "fp32")
    with pytest.raises(ModelError, match=r"detector 'yolov8n_coco' has no fp16 graph.*yolov8n_coco\.json"):
        check_precision(without, "fp16")
    # auto on this machine's CPU provider: the fp32 graph
    assert session_precision(create_session(with_fp16, ("cuda", "cpu"), 2, precision="auto")) == "fp32"


def test_a_changed_fp16_graph_is_refused(half_dir: Path, tmp_path: Path) -> None:
    for name in ("yolov8n_coco.onnx", "yolov8n_coco.json", "yolov8n_coco.fp16.onnx"):
        shutil.copy(half_dir / name, tmp_path / name)
    (tmp_path / "yolov8n_coco.fp16.onnx").chmod(0o644)
    with open(tmp_path / "yolov8n_coco.fp16.onnx", "ab") as fh:
        fh.write(b"\0")
    files = locate_model(tmp_path / "yolov8n_coco.json")
    assert session_precision(create_session(files, ("cpu",), 2, precision="fp32")) == "fp32"  # fp32 still fine
    with pytest.raises(ModelError, match=r"yolov8n_coco\.fp16\.onnx: sha256"):
        create_session(files, ("cpu",), 2, precision="fp16")
    (tmp_path / "yolov8n_coco.fp16.onnx").unlink()
    with pytest.raises(ModelError, match="does not exist"):
        check_precision(locate_model(tmp_path / "yolov8n_coco.json"), "fp16")


def test_parity_check_refuses_an_fp16_graph_that_detects_otherwise(half_dir: Path, shared_media: Path,
                                                                    tmp_path: Path) -> None:
    """The fp16 graph with its class head's last convs scaled by 0.8: scores move, parity refuses it."""
    model = onnx.load(str(half_dir / "yolov8n_coco.fp16.onnx"))
    weights = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and "cv3" in n.name and n.name.endswith("2/Conv")]
    assert len(convs) == 3, "the class head's three last convs"
    for conv in convs:
        w = weights[conv.input[1]]
        scaled = (onnx.numpy_helper.to_array(w).astype(np.float32) * 0.8).astype(np.float16)
        w.CopyFrom(onnx.numpy_helper.from_array(scaled, w.name))
    onnx.save(model, str(tmp_path / "bad.fp16.onnx"))
    files = locate_model(half_dir / "yolov8n_coco.json")
    assert isinstance(files.manifest, DetectorManifest)
    with pytest.raises(ExportError, match="does not reproduce the fp32 detections"):
        detector_parity(files.manifest, files.onnx_path, tmp_path / "bad.fp16.onnx", [shared_media / "bus.jpg"])


def test_parity_lets_near_ties_through(half_dir: Path, shared_media: Path, tmp_path: Path) -> None:
    """Frames 11 and 26 of the small clip: a car/truck tie on one anchor (fp32 truck 0.448 car 0.446, fp16 the
    other way round) and a person box overlapping a stronger one by about NMS's IoU threshold. Neither graph
    is wrong there; the raw scores on the same box agree, and the parity check counts them as near ties."""
    import av

    with av.open(str(shared_media / "vtest_small_3s.mp4")) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    paths = []
    for i in (11, 26):
        paths.append(tmp_path / f"frame{i}.png")
        cv2.imwrite(str(paths[-1]), frames[i])
    files = locate_model(half_dir / "yolov8n_coco.json")
    assert isinstance(files.manifest, DetectorManifest) and files.fp16_onnx_path is not None
    record = detector_parity(files.manifest, files.onnx_path, files.fp16_onnx_path, paths)
    # measured (onnxruntime 1.32): 16 boxes each, 15 twins, 2 near ties (one each way)
    assert record["near_ties"] >= 1, record  # without the raw-score check this would be refused
    assert record["matched"] + record["near_ties"] >= record["boxes_fp32"] >= 14, record
    assert record["max_score_diff"] <= MAX_SCORE_DIFF and record["min_iou"] >= MIN_IOU


def test_activation_headroom_refuses_a_graph_that_would_overflow_fp16(tmp_path: Path) -> None:
    """A graph whose fp32 activations pass fp16's range: its fp16 twin could give inf on a GPU (the CPU provider
    computes many fp16 nodes in fp32, so parity alone would not show it)."""
    from onnx import TensorProto, helper

    from frametok.exporters.half import _check_headroom, activation_peak

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4, 4])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1e5])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["big"], name="scale_up"),
                               helper.make_node("Mul", ["big", "scale"], ["y"], name="scale_again")],
                              "g", [x], [y], [scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "big.onnx"))
    batch = np.full((1, 3, 4, 4), 1e-6, np.float32)
    peak, where = activation_peak(tmp_path / "big.onnx", "x", [batch])
    assert (where, round(peak, 3)) == ("y", 10000.0)  # 1e-6 * 1e5 * 1e5: within the headroom ("big" is 0.1)
    batch[0, 0, 0, 0] = 1.0
    record: dict[str, Any] = {}
    with pytest.raises(ExportError, match=r"reaches 1e\+10 in 'y'.*could overflow"):
        _check_headroom(tmp_path / "big.onnx", tmp_path / "big.fp16.onnx", "x", [batch], record)
    assert record["fp32_peak_tensor"] == "y"


# --------------------------------------------------------------------------- frametok run


def test_run_precision_fp16_reports_it_and_detects_as_fp32(half_dir: Path, shared_media: Path) -> None:
    """`frametok run --precision fp16` against the fp32 graphs run here on the same decoded frames."""
    from frametok.streamer.source.decode import decode_frames

    clip = shared_media / "vtest_small_3s.mp4"
    args = ["--source", f"clip={clip}", "--detector", str(half_dir / "yolov8n_coco.onnx"),
            "--encoder", str(half_dir / "dinov2_vits14.json"), "--no-track", "--precision", "fp16"]
    messages, output, code = run_and_collect(args, free_endpoint(), timeout_s=300)
    assert code == 0, output
    assert isinstance(messages[-1], EndOfStream) and messages[-1].frames == 30
    models = next(m for m in messages if isinstance(m, StreamInfo)).models
    det_files, enc_files = locate_model(half_dir / "yolov8n_coco.json"), locate_model(half_dir / "dinov2_vits14.json")
    for role, files in (("detector", det_files), ("encoder", enc_files)):
        assert models[role]["precision"] == "fp16" and models[role]["providers"] == ["CPUExecutionProvider"]
        assert models[role]["id"] == files.manifest.model_id  # the weights' id: the same in fp16
    fp16 = [m for m in messages if isinstance(m, TokenPacket)]
    assert [p.frame_index for p in fp16] == list(range(30))

    frames = [f.frame_rgb for f in decode_frames(str(clip))]
    assert len(frames) == 30
    assert isinstance(det_files.manifest, DetectorManifest) and isinstance(enc_files.manifest, EncoderManifest)
    det32 = Detector(det_files.manifest, create_session(det_files, ("cpu",), 2, precision="fp32"))
    enc32 = Encoder(enc_files.manifest, create_session(enc_files, ("cpu",), 2, precision="fp32"))
    boxes, ties = 0, []
    for frame, b in zip(frames, fp16, strict=True):
        a = det32([frame])[0]
        assert b.detections is not None
        assert not _twins_missing(a, b.detections, ties), b.frame_index
        assert not _twins_missing(b.detections, a, ties), b.frame_index
        boxes += len(a.score)
        batch = np.empty((1, 3, 224, 224), np.float32)
        enc32.preprocess(frame, batch[0])
        ca = enc32.infer(batch)[0, 0].astype(np.float64)  # CLS, the context token
        assert b.context_token is not None  # float16 on the wire
        cb = b.context_token.astype(np.float64)
        assert ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb)) >= MIN_COSINE, b.frame_index
    assert boxes >= 150  # pedestrians and cars in every frame
    assert len(ties) <= 3, ties  # measured: 2 (a car/truck tie on a parked van, a person box at NMS's IoU)


def test_run_precision_fp16_without_an_fp16_graph_is_refused(shared_models: Path, shared_media: Path) -> None:
    done = run_cli("run", "--source", str(shared_media / "vtest_small_3s.mp4"), "--models", str(shared_models),
                   "--encoder", "none", "--precision", "fp16", "--no-progress", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "precision fp16: detector 'yolov8n' has no fp16 graph" in done.stderr
    assert "--half" in done.stderr and "yolov8n.json" in done.stderr


def test_precision_config_is_checked() -> None:
    from frametok.config import load_config
    from frametok.errors import ConfigError

    source = {"sources": [{"id": "a", "uri": "clip.mp4"}]}
    assert load_config(None, source).worker.precision == "auto"
    assert load_config(None, {**source, "worker": {"precision": "fp16"}}).worker.precision == "fp16"
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, {**source, "worker": {"precision": "bf16"}})


def test_the_converter_is_imported_only_to_convert() -> None:
    code = (
        "import sys, frametok.cli, frametok.streamer.worker.process, frametok.exporters as e; e.add_fp16; "
        "bad = {'onnxconverter_common', 'onnx', 'torch', 'ultralytics', 'timm'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
