"""export_yolo: Ultralytics .pt (or .yaml) to ONNX + manifest, checked against Ultralytics' own prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from frametok.errors import ExportError
from frametok.exporters.yolo import box_iou, export_yolo, match_boxes
from frametok.models.detector import Detector
from frametok.models.manifest import DetectorManifest, file_sha256
from frametok.models.session import ModelFiles, create_session, locate_model


def shared_dir() -> Path:
    """``../shared`` beside the repository root, or ``$FRAMETOK_SHARED``."""
    env = os.environ.get("FRAMETOK_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"


def shared_file(relative: str) -> Path:
    path = shared_dir() / relative
    if not path.exists():
        pytest.skip(f"needs {path} (the shared models/media folder; set FRAMETOK_SHARED to point elsewhere)")
    return path


def need_ultralytics() -> None:
    pytest.importorskip("torch", reason="needs torch (pip install 'frametok[export]')")
    pytest.importorskip("ultralytics", reason="needs ultralytics (pip install 'frametok[export]')")


def read_rgb(path: Path) -> np.ndarray[Any, np.dtype[np.uint8]]:
    image = cv2.imread(str(path))
    assert image is not None, path
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), np.uint8)


@pytest.fixture(scope="module")
def coco_pt() -> Path:
    return shared_file("models/yolov8n_coco.pt")


@pytest.fixture(scope="module")
def exported(coco_pt: Path, dynamic_yolo: ModelFiles) -> ModelFiles:
    return dynamic_yolo  # export_yolo(coco_pt, a temporary folder), once per test session (conftest)


@pytest.fixture(scope="module")
def detector(exported: ModelFiles) -> Detector:
    assert isinstance(exported.manifest, DetectorManifest)
    return Detector(exported.manifest, create_session(exported, providers=("cpu",), threads=2))


# --------------------------------------------------------------------------- box matching (no torch)


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert box_iou(a, b) == pytest.approx(np.array([[1.0, 1 / 3, 0.0]]))
    assert box_iou(a, np.zeros((0, 4), np.float32)).shape == (1, 0)


def test_match_boxes_same_class_best_iou_greedy() -> None:
    ref = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    got = np.array([[1, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    matches = match_boxes(ref, np.array([0, 0, 1]), np.array([0.9, 0.8, 0.7]), got, np.array([0, 0, 2]))
    # the most confident ref box takes the exact match, the second the other one; class 1 finds no class-1 box
    assert [(m.ref, m.got) for m in matches] == [(0, 1), (1, 0)]
    assert matches[0].iou == pytest.approx(1.0)


# --------------------------------------------------------------------------- errors (no torch needed)


def test_missing_weights_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"nope\.pt"):
        export_yolo(tmp_path / "nope.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- real weights


def test_manifest_fields(exported: ModelFiles, coco_pt: Path) -> None:
    man = exported.manifest
    assert isinstance(man, DetectorManifest)
    assert len(man.class_names) == 80 and man.class_names[0] == "person"
    assert man.batch == "dynamic"
    assert man.input_size_hw == (640, 640)
    assert man.onnx_file == "yolov8n_coco.onnx"
    assert exported.manifest_path == exported.onnx_path.with_suffix(".json")
    assert man.source.sha256 == file_sha256(coco_pt)
    assert man.source.random_init is False
    assert {"frametok", "ultralytics", "torch", "onnx", "onnxruntime"} <= set(man.exporter)
    assert man.parity is not None and man.parity["matched"] >= 4
    assert man.parity["min_iou"] >= 0.9
    # the pair is self-contained: found again from the .onnx alone
    assert locate_model(exported.onnx_path).manifest == man


def test_dynamic_batch_of_three(detector: Detector) -> None:
    bus, zidane = read_rgb(shared_file("media/bus.jpg")), read_rgb(shared_file("media/zidane.jpg"))
    raw = detector.infer(np.zeros((3, 3, 640, 640), np.float32))
    assert raw.shape == (3, 84, 8400)
    first, second, third = detector([bus, zidane, bus])
    assert len(first.score) >= 4 and len(second.score) >= 1
    np.testing.assert_allclose(first.xyxy, third.xyxy, atol=1e-3)
    single = detector([bus])[0]
    np.testing.assert_allclose(single.xyxy, first.xyxy, atol=1e-2)


def _ultralytics_boxes(weights: Path, image_bgr: np.ndarray[Any, Any], **kwargs: Any) -> tuple[Any, Any, Any]:
    from ultralytics import YOLO

    boxes = YOLO(str(weights)).predict(image_bgr, imgsz=640, conf=0.25, iou=0.7, verbose=False, **kwargs)[0].boxes
    return boxes.xyxy.numpy(), boxes.conf.numpy(), boxes.cls.numpy().astype(np.int64)


@pytest.mark.parametrize(
    ("predict_kwargs", "min_iou"),
    [
        ({}, 0.9),  # Ultralytics' default minimal-padding letterbox (640x480 here): close, not equal
        ({"rect": False}, 0.99),  # the same square letterbox as frametok: the same boxes
    ],
    ids=["ultralytics-default", "square-letterbox"],
)
def test_bus_matches_ultralytics(
    detector: Detector, coco_pt: Path, predict_kwargs: dict[str, Any], min_iou: float
) -> None:
    bus_path = shared_file("media/bus.jpg")
    got = detector([read_rgb(bus_path)])[0]
    names = [detector.manifest.class_names[c] for c in got.class_id]
    assert "bus" in names and names.count("person") >= 3

    ref_xyxy, ref_score, ref_class = _ultralytics_boxes(coco_pt, cv2.imread(str(bus_path)), **predict_kwargs)
    strong = np.flatnonzero(ref_score >= 0.5)
    assert len(strong) >= 4
    matches = {m.ref: m for m in match_boxes(ref_xyxy, ref_class, ref_score, got.xyxy, got.class_id)}
    for i in strong:
        assert i in matches, f"ultralytics box {ref_class[i]} {ref_xyxy[i]} has no frametok match"
        assert matches[i].iou >= min_iou, f"ultralytics box {ref_class[i]} {ref_xyxy[i]}: IoU {matches[i].iou:.3f}"


# --------------------------------------------------------------------------- rect letterbox (predict's default)

VTEST_FRAMES = (0, 150, 300, 450, 600, 750)  # frames of vtest.avi (768x576) with people and cars


def _video_frames(path: Path, indices: tuple[int, ...]) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    """Frames ``indices`` of ``path``, BGR as OpenCV decodes them (read in order, no seeking)."""
    cap = cv2.VideoCapture(str(path))
    frames, i = [], 0
    try:
        while len(frames) < len(indices):
            ok, frame = cap.read()
            assert ok, f"{path} ended at frame {i}, before {indices}"
            if i in indices:
                frames.append(np.asarray(frame, np.uint8))
            i += 1
    finally:
        cap.release()
    return frames


def test_export_records_dynamic_hw_and_rect_parity(exported: ModelFiles) -> None:
    man = exported.manifest
    assert isinstance(man, DetectorManifest)
    assert man.dynamic_hw is True and man.stride == 32 and man.input_size_hw == (640, 640)
    assert man.parity is not None and "rect=False" in man.parity["ultralytics_predict"]
    rect = man.parity["rect"]  # bus.jpg (810x1080) at 640x480, against Ultralytics' default predict
    assert "rect=True" in rect["ultralytics_predict"] and rect["threshold"] == 0.25
    assert rect["compared"] >= 4 and rect["matched"] >= 4 and rect["min_iou"] >= 0.9


def test_vtest_at_640x480_matches_ultralytics_default_predict(exported: ModelFiles, coco_pt: Path) -> None:
    """A 768x576 frame runs at a 480x640 input (4:3, padded to a multiple of 32: nothing to pad), and its
    detections are Ultralytics' own at ``predict()``'s defaults (imgsz 640, rect, conf 0.25, iou 0.7), from
    the same real weights: the same number of boxes, each matched at IoU >= 0.9 with a score within 0.05."""
    from ultralytics import YOLO

    assert isinstance(exported.manifest, DetectorManifest)
    rect = Detector(exported.manifest, create_session(exported, providers=("cpu",), threads=2), rect=True)
    model = YOLO(str(coco_pt))
    seen: list[tuple[int, ...]] = []  # the input shapes Ultralytics' model ran at
    model.model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    compared = 0
    for bgr in _video_frames(shared_file("media/vtest.avi"), VTEST_FRAMES):
        assert bgr.shape == (576, 768, 3)
        assert rect.input_hw_for((576, 768)) == (480, 640)
        batch = np.empty((1, 3, 480, 640), np.float32)
        info = rect.preprocess(np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8), batch[0])
        assert info.input_hw == (480, 640) and info.pad_xy == (0.0, 0.0)
        raw = np.asarray(rect.infer(batch))
        assert raw.shape == (1, 84, 80 * 60 + 40 * 30 + 20 * 15)  # anchors of a 480x640 input, strides 8/16/32
        got = rect.postprocess(raw[0], info)
        boxes = model.predict(bgr, verbose=False)[0].boxes  # every argument at its default
        assert seen[-1][2:] == (480, 640), f"Ultralytics ran at {seen[-1]}"
        ref_xyxy, ref_score = boxes.xyxy.numpy(), boxes.conf.numpy()
        ref_class = boxes.cls.numpy().astype(np.int64)
        assert len(got.score) == len(ref_score), (got.score, ref_score)
        matches = match_boxes(ref_xyxy, ref_class, ref_score, got.xyxy, got.class_id)
        assert len(matches) == len(ref_score), f"unmatched Ultralytics boxes: {ref_xyxy} {ref_class}"
        for m in matches:
            assert m.iou >= 0.9, (ref_class[m.ref], ref_xyxy[m.ref], got.xyxy[m.got], m.iou)
            assert abs(float(ref_score[m.ref]) - float(got.score[m.got])) <= 0.05
        compared += len(matches)
    assert compared >= 10, f"only {compared} boxes compared"


def test_failed_check_leaves_nothing(coco_pt: Path, tmp_path: Path) -> None:
    need_ultralytics()
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"missing\.jpg"):
        export_yolo(coco_pt, out, sample_image=tmp_path / "missing.jpg")
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- random weights (no shared)


def test_random_init_from_yaml(tmp_path: Path) -> None:
    need_ultralytics()
    files = export_yolo("yolov8n.yaml", tmp_path, name="rand")
    man = files.manifest
    assert isinstance(man, DetectorManifest)
    assert man.source.random_init is True and man.source.sha256 is None
    assert man.onnx_file == "rand.onnx" and files.onnx_path == (tmp_path / "rand.onnx").resolve()
    assert man.batch == "dynamic" and len(man.class_names) == 80
    assert man.parity is not None and "frametok_boxes" in man.parity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rand.json", "rand.onnx"]
