"""int8 graphs end to end: `frametok export ... --int8 --calibrate` on the real YOLOv8n and DINOv2 ONNX (calibrated
on vtest frames, gated on other vtest frames), graphs that fail their gate refused with the figures, the precision
choice, and a real `frametok run --precision int8`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import onnx
import pytest

from frametok import EndOfStream, StreamInfo, TokenPacket
from frametok.errors import ExportError, ModelError
from frametok.exporters.int8 import DetectorGate, EncoderGate, Frame, add_int8, sample_frames, split_frames
from frametok.models.detector import Detector
from frametok.models.encoder import Encoder
from frametok.models.manifest import DetectorManifest, EncoderManifest, file_sha256, write_manifest
from frametok.models.session import (
    ModelFiles,
    check_precision,
    choose_precision,
    create_session,
    locate_model,
    session_precision,
)

from ..conftest import free_endpoint, run_cli
from ..streamer.test_pipeline import run_and_collect

STEMS = ("yolov8n_coco", "dinov2_vits14")


@pytest.fixture(scope="module")
def int8_dir(shared_models: Path, shared_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both shared models given manifests and int8 graphs through the real CLI (no torch needed): ~20 s."""
    out = tmp_path_factory.mktemp("int8")
    video = str(shared_media / "vtest.avi")
    det = run_cli("export", "yolo", str(shared_models / "yolov8n_coco.onnx"), "--out", str(out), "--int8",
                  "--calibrate", video)
    assert det.returncode == 0, det.stderr
    assert "int8; 16 calibration, 16 held-out frames" in det.stdout and "'passed': True" in det.stdout
    enc = run_cli("export", "encoder", str(shared_models / "dinov2_vits14.onnx"), "--out", str(out),
                  "--prefix-tokens", "1", "--context", "cls", "--int8", "--calibrate", video)
    assert enc.returncode == 0, enc.stderr
    return out


def _copy_model(src: Path, dst: Path, stem: str, int8: bool = False) -> ModelFiles:
    """A copy of ``src``'s model in ``dst``: with its int8 graph, or as it was before ``--int8``."""
    for name in (f"{stem}.onnx", f"{stem}.json", *([f"{stem}.int8.onnx"] if int8 else [])):
        shutil.copy(src / name, dst / name)
        (dst / name).chmod(0o644)
    if not int8:
        write_manifest(locate_model(dst / f"{stem}.json").manifest.model_copy(update={"int8": None}),
                       dst / f"{stem}.json")
    return locate_model(dst / f"{stem}.json")


def test_export_int8_writes_both_graphs_and_records_the_gate(int8_dir: Path, shared_models: Path) -> None:
    assert sorted(p.name for p in int8_dir.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in STEMS for suffix in (".int8.onnx", ".json", ".onnx"))
    for stem in STEMS:
        files = locate_model(int8_dir / f"{stem}.json")
        man, int8 = files.manifest, files.manifest.int8
        assert int8 is not None and int8.onnx_file == f"{stem}.int8.onnx"
        assert files.int8_onnx_path == (int8_dir / f"{stem}.int8.onnx").resolve()
        assert int8.onnx_sha256 == file_sha256(int8_dir / int8.onnx_file)
        assert man.onnx_sha256 == file_sha256(shared_models / f"{stem}.onnx")  # the fp32 graph is the original
        assert int8.quantizer["fp32_sha256"] == man.onnx_sha256 and "onnxruntime" in int8.quantizer
        assert int8.parity["passed"] is True and int8.parity_checked
        held, calib = int8.parity["heldout_samples"], int8.parity["calibration_samples"]
        assert (len(held), len(calib)) == (int8.heldout_frames, int8.calibration_frames)
        assert not set(held) & set(calib)  # gated on frames it was not calibrated on
        assert all(label.startswith("vtest.avi#") for label in held + calib)
        graph = onnx.load(str(int8_dir / int8.onnx_file)).graph  # float32 at the edges, int8 inside
        assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.FLOAT]
        assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.FLOAT]
        assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
        assert (int8_dir / int8.onnx_file).stat().st_size < 0.45 * (int8_dir / man.onnx_file).stat().st_size
    det = locate_model(int8_dir / "yolov8n_coco.json").manifest.int8
    assert det is not None and (det.calibration_frames, det.heldout_frames) == (16, 16)
    p = det.parity  # measured (onnxruntime 1.32): 128 fp32 boxes, 99.2% / 98.4% twins, min IoU 0.934
    assert p["boxes_fp32"] >= 60 and p["matched_fp32"] >= 0.95 and p["matched_int8"] >= 0.95
    assert p["min_iou"] >= 0.9 and p["max_score_diff"] <= 0.05
    assert "head /model.22/" in det.quantizer["float_rule"] and int(det.quantizer["float_nodes"]) > 20
    assert det.quantizer["float_rule"].startswith("ultralytics fast") and "tried" not in p
    assert det.quantizer["rewrites"] == "dfl_softmax"  # quantised from the rewritten graph, gated against the original
    assert p["input"] == "square 640x640"  # the shared graph's input is fixed
    nodes = onnx.load(str(int8_dir / det.onnx_file)).graph.node
    by_name = {n.name: n.op_type for n in nodes}
    assert by_name["/model.22/Concat_3"] == "Concat" and by_name["/model.22/Sigmoid"] == "Sigmoid"  # head in float
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) > 50  # the backbone in int8
    enc = locate_model(int8_dir / "dinov2_vits14.json").manifest.int8
    assert enc is not None and (enc.calibration_frames, enc.heldout_frames) == (0, 16)  # dynamic: no calibration
    # measured: min 0.9926, median 0.9993 over 16 x 257 tokens
    assert enc.parity["tokens"] == 16 * 257 and enc.parity["min_cosine"] >= 0.98
    assert enc.parity["median_cosine"] >= 0.995


def test_int8_on_an_onnx_with_a_manifest_keeps_that_manifest(int8_dir: Path, shared_media: Path,
                                                              tmp_path: Path) -> None:
    before = _copy_model(int8_dir, tmp_path, "dinov2_vits14").manifest
    done = run_cli("export", "encoder", str(tmp_path / "dinov2_vits14.onnx"), "--int8", "--heldout-frames", "4",
                   "--calibrate", str(shared_media / "vtest_small_3s.mp4"))
    assert done.returncode == 0, done.stderr
    after = locate_model(tmp_path / "dinov2_vits14.json").manifest
    assert after.model_copy(update={"int8": None}) == before
    assert after.int8 is not None and after.int8.heldout_frames == 4
    assert after.int8.parity["heldout_samples"] == [f"vtest_small_3s.mp4#{i}" for i in (0, 10, 19, 29)]


def test_frames_are_dealt_evenly_and_never_twice(shared_media: Path) -> None:
    frames = sample_frames([shared_media / "vtest_small_3s.mp4", shared_media / "bus.jpg"], 10)
    assert [f.label for f in frames][:2] == ["bus.jpg", "vtest_small_3s.mp4#0"] and len(frames) == 10
    calib, held = split_frames(frames, 4)
    assert (len(calib), len(held)) == (4, 6) and not {f.label for f in calib} & {f.label for f in held}
    fake = [Frame(str(i), np.zeros((2, 2, 3), np.uint8)) for i in range(6)]
    assert [f.label for f in split_frames(fake, 3)[0]] == ["1", "3", "5"]
    with pytest.raises(ExportError, match="--calibrate VIDEO"):
        sample_frames([], 4)
    with pytest.raises(ExportError, match="does not exist"):
        sample_frames([shared_media / "missing.mp4"], 4)


def test_a_detector_failing_its_gate_with_the_fast_rule_is_quantised_with_the_careful_one(
        int8_dir: Path, shared_media: Path, tmp_path: Path) -> None:
    """A stricter gate (97.5% twins): the fast rule's graph misses it (measured 99.2% / 97.0%), the careful
    one (the second conv and the class branch in float too: 99.2% / 98.4%) passes; the manifest says which
    rule made the graph and what the fast one scored."""
    files = _copy_model(int8_dir, tmp_path, "yolov8n_coco")
    got = add_int8(files, [shared_media / "vtest.avi"], detector_gate=DetectorGate(min_matched=0.975)).manifest.int8
    assert got is not None and got.quantizer["float_rule"].startswith("ultralytics careful")
    assert got.parity["matched_fp32"] >= 0.975 and got.parity["matched_int8"] >= 0.975
    (tried,) = got.parity["tried"]
    assert tried.startswith("fast: ") and "< 0.975" in tried, tried
    fast = locate_model(int8_dir / "yolov8n_coco.json").manifest.int8
    assert fast is not None and int(got.quantizer["float_nodes"]) > int(fast.quantizer["float_nodes"])


def test_a_graph_of_any_input_size_is_gated_at_the_rect_letterbox(dynamic_yolo: ModelFiles, shared_media: Path,
                                                                  tmp_path: Path) -> None:
    """The exported YOLOv8n takes any height and width, so the worker runs vtest at 640x480 (rect): its int8
    graph is gated there, not only at the square input it was calibrated at."""
    for path in (dynamic_yolo.onnx_path, dynamic_yolo.manifest_path):
        assert path is not None
        shutil.copy(path, tmp_path / path.name)
    files = locate_model(tmp_path / "yolov8n_coco.json")
    got = add_int8(files, [shared_media / "vtest.avi"], calibration_frames=8, heldout_frames=8).manifest.int8
    assert got is not None and got.parity["passed"] is True
    assert got.parity["input"] == "rect 640x480" and got.parity["boxes_fp32"] >= 30


# --------------------------------------------------------------------------- graphs refused


def test_a_detector_quantised_head_and_all_is_refused_with_its_figures(int8_dir: Path, shared_media: Path,
                                                                        tmp_path: Path) -> None:
    """The whole graph quantised, head included (one uint8 scale for boxes up to 640 and scores in 0..1):
    the class scores move by far more than 0.05 and the gate refuses it, naming the failing figures."""
    files = _copy_model(int8_dir, tmp_path, "yolov8n_coco")
    before = (tmp_path / "yolov8n_coco.json").read_text()
    with pytest.raises(ExportError, match=r"fails its parity gate.*matched_fp32 0\.\d+ < 0\.95.*matched_int8") as err:
        add_int8(files, [shared_media / "vtest.avi"], calibration_frames=8, heldout_frames=8, keep_float=False)
    assert "boxes_fp32" in str(err.value) and "'passed': False" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolov8n_coco.json", "yolov8n_coco.onnx"]  # nothing kept
    assert (tmp_path / "yolov8n_coco.json").read_text() == before


def test_an_encoder_gate_set_too_tight_is_refused(int8_dir: Path, shared_media: Path, tmp_path: Path) -> None:
    files = _copy_model(int8_dir, tmp_path, "dinov2_vits14")
    with pytest.raises(ExportError, match=r"min_cosine 0\.9\d+ < 0\.9999; median_cosine 0\.99\d+ < 0\.99999"):
        add_int8(files, [shared_media / "vtest_small_3s.mp4"], heldout_frames=4,
                 encoder_gate=EncoderGate(min_cosine=0.9999, median_cosine=0.99999))
    assert locate_model(tmp_path / "dinov2_vits14.json").manifest.int8 is None


def test_frames_without_objects_prove_nothing(int8_dir: Path, synthetic_video: Path, tmp_path: Path) -> None:
    """A moving square on a gradient: the fp32 detector finds nothing there, so no int8 graph can be judged."""
    files = _copy_model(int8_dir, tmp_path, "yolov8n_coco")
    with pytest.raises(ExportError, match=r"boxes_fp32 \d < 10 \(the held-out frames show too few objects"):
        add_int8(files, [synthetic_video], calibration_frames=4, heldout_frames=4)


# --------------------------------------------------------------------------- the runtime's choice


def test_precision_choice_with_an_int8_graph(int8_dir: Path) -> None:
    with_int8 = locate_model(int8_dir / "yolov8n_coco.json")
    assert with_int8.manifest.int8 is not None
    without = ModelFiles(with_int8.manifest.model_copy(update={"int8": None}), with_int8.onnx_path,
                         with_int8.manifest_path)
    gpu, cpu = ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]
    assert [choose_precision(with_int8, "auto", p) for p in (gpu, cpu)] == ["fp32", "int8"]  # no fp16 graph here
    assert [choose_precision(with_int8, "int8", p) for p in (gpu, cpu)] == ["int8", "int8"]
    assert [choose_precision(with_int8, "fp32", p) for p in (gpu, cpu)] == ["fp32", "fp32"]
    assert choose_precision(without, "auto", cpu) == "fp32"
    check_precision(with_int8, "int8")
    with pytest.raises(ModelError, match=r"precision int8: detector 'yolov8n_coco' has no int8 graph.*--int8"):
        check_precision(without, "int8")
    unchecked = ModelFiles(with_int8.manifest.model_copy(update={"int8": with_int8.manifest.int8.model_copy(
        update={"parity": {"passed": False}})}), with_int8.onnx_path, with_int8.manifest_path)
    assert choose_precision(unchecked, "auto", cpu) == "fp32"  # auto takes only a parity-checked int8 graph
    with pytest.raises(ModelError, match="has not passed its parity gate"):
        check_precision(unchecked, "int8")
    # auto on this machine's CPU provider: the int8 graph
    session = create_session(with_int8, ("cuda", "cpu"), 2, precision="auto")
    assert session_precision(session) == "int8"
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_a_changed_int8_graph_is_refused(int8_dir: Path, tmp_path: Path) -> None:
    files = _copy_model(int8_dir, tmp_path, "yolov8n_coco", int8=True)
    with open(tmp_path / "yolov8n_coco.int8.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match=r"yolov8n_coco\.int8\.onnx: sha256"):
        create_session(files, ("cpu",), 2, precision="int8")
    (tmp_path / "yolov8n_coco.int8.onnx").unlink()
    with pytest.raises(ModelError, match="does not exist"):
        check_precision(locate_model(tmp_path / "yolov8n_coco.json"), "int8")
    assert session_precision(create_session(files, ("cpu",), 2, precision="auto")) == "fp32"


def test_precision_config_takes_int8() -> None:
    from frametok.config import load_config

    source = {"sources": [{"id": "a", "uri": "clip.mp4"}]}
    assert load_config(None, {**source, "worker": {"precision": "int8"}}).worker.precision == "int8"


# --------------------------------------------------------------------------- frametok run


def _decoded(clip: Path) -> list[np.ndarray]:
    with av.open(str(clip)) as container:
        return [np.asarray(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def test_run_precision_int8_reports_it_and_detects_as_fp32(int8_dir: Path, shared_media: Path) -> None:
    """`frametok run --precision int8` against the fp32 graphs run here on the same frames (the short clip)."""
    from frametok.exporters._common import box_iou

    clip = shared_media / "vtest_small_3s.mp4"
    args = ["--source", f"clip={clip}", "--detector", str(int8_dir / "yolov8n_coco.json"),
            "--encoder", str(int8_dir / "dinov2_vits14.json"), "--no-track", "--precision", "int8"]
    messages, output, code = run_and_collect(args, free_endpoint(), timeout_s=300)
    assert code == 0, output
    assert isinstance(messages[-1], EndOfStream) and messages[-1].frames == 30
    models = next(m for m in messages if isinstance(m, StreamInfo)).models
    det_files, enc_files = locate_model(int8_dir / "yolov8n_coco.json"), locate_model(int8_dir / "dinov2_vits14.json")
    for role, files in (("detector", det_files), ("encoder", enc_files)):
        assert models[role]["precision"] == "int8" and models[role]["providers"] == ["CPUExecutionProvider"]
        assert models[role]["id"] == files.manifest.model_id  # the weights' id: the same in int8
    packets = [m for m in messages if isinstance(m, TokenPacket)]
    assert [p.frame_index for p in packets] == list(range(30))

    assert isinstance(det_files.manifest, DetectorManifest) and isinstance(enc_files.manifest, EncoderManifest)
    det32 = Detector(det_files.manifest, create_session(det_files, ("cpu",), 2, precision="fp32"))
    enc32 = Encoder(enc_files.manifest, create_session(enc_files, ("cpu",), 2, precision="fp32"))
    sure = twins = 0
    cosines = []
    for frame, p in zip(_decoded(clip), packets, strict=True):
        a, b = det32([frame])[0], p.detections
        assert b is not None
        iou = box_iou(a.xyxy, b.xyxy)
        for i in np.flatnonzero(a.score >= 0.3):
            sure += 1
            twins += bool(((b.class_id == a.class_id[i]) & (iou[i] >= 0.9)
                           & (np.abs(b.score - a.score[i]) <= 0.05)).any())
        batch = np.empty((1, 3, 224, 224), np.float32)
        enc32.preprocess(frame, batch[0])
        ca, cb = enc32.infer(batch)[0, 0].astype(np.float64), np.asarray(p.context_token, np.float64)
        cosines.append(ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb)))
    assert sure >= 100  # pedestrians and cars in every frame
    assert twins / sure >= 0.9, (twins, sure)  # a 384x288 clip, not the held-out frames: a looser bound
    assert min(cosines) >= 0.98, min(cosines)


def test_run_precision_int8_without_an_int8_graph_is_refused(shared_models: Path, shared_media: Path) -> None:
    done = run_cli("run", "--source", str(shared_media / "vtest_small_3s.mp4"), "--models", str(shared_models),
                   "--encoder", "none", "--precision", "int8", "--no-progress", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "precision int8: detector 'yolov8n' has no int8 graph" in done.stderr
    assert "--int8 --calibrate VIDEO" in done.stderr


def test_manifest_json_round_trips(int8_dir: Path) -> None:
    data = json.loads((int8_dir / "yolov8n_coco.json").read_text())
    assert set(data["int8"]) == {"onnx_file", "onnx_sha256", "quantizer", "calibration_frames", "heldout_frames",
                                 "parity"}
