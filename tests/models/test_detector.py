"""Detection is right: frametok's detector against Ultralytics' own prediction from the same weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from frametok.models.detector import Detector, letterbox_into
from frametok.models.manifest import DetectorManifest
from frametok.models.session import create_session
from frametok.registry import resolve_model


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


@pytest.fixture(scope="module")
def detector(shared_models: Path) -> Detector:
    files = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    return Detector(files.manifest, create_session(files, ("cpu",), threads=2))  # type: ignore[arg-type]


def test_bus_matches_ultralytics(detector: Detector, shared_models: Path, shared_media: Path) -> None:
    ultralytics = pytest.importorskip("ultralytics", reason="the export extra (ultralytics) is not installed")
    bgr = cv2.imread(str(shared_media / "bus.jpg"))
    det = detector([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])[0]
    names = detector.manifest.class_names
    found = [names[c] for c in det.class_id]
    assert "bus" in found and found.count("person") >= 3

    ref = ultralytics.YOLO(str(shared_models / "yolov8n_coco.pt")).predict(bgr, imgsz=640, verbose=False)[0]
    ref_xyxy = ref.boxes.xyxy.numpy()
    ref_cls = ref.boxes.cls.numpy().astype(int)
    ref_conf = ref.boxes.conf.numpy()
    checked = 0
    for box, cls, conf in zip(ref_xyxy, ref_cls, ref_conf, strict=True):
        if conf < 0.5:
            continue
        same = [iou(box, mine) for mine, c in zip(det.xyxy, det.class_id, strict=True) if c == cls]
        assert same and max(same) >= 0.9, (names[cls], conf, same)
        checked += 1
    assert checked >= 4  # the bus and the people


def test_batch_equals_single(detector: Detector, shared_media: Path) -> None:
    imgs = [cv2.cvtColor(cv2.imread(str(shared_media / n)), cv2.COLOR_BGR2RGB) for n in ("bus.jpg", "zidane.jpg")]
    together = detector(imgs)
    for img, det in zip(imgs, together, strict=True):
        alone = detector([img])[0]
        np.testing.assert_allclose(alone.xyxy, det.xyxy, atol=1e-3)


def test_letterbox_geometry() -> None:
    frame = np.zeros((576, 768, 3), np.uint8)
    out, info = letterbox_into(frame, (640, 640))
    assert out.shape == (640, 640, 3)
    assert info.gain == pytest.approx(640 / 768) and info.pad_xy == (0.0, 80.0)
    assert (out[:80] == 114).all() and (out[80:560] == 0).all()


def test_io_binding_gives_the_same_output(detector: Detector, shared_media: Path) -> None:
    """The IO-binding path (used on CUDA/TensorRT) forced onto the CPU: same raw output as ``session.run``,
    for two frames through one reused device buffer; on the CPU provider the plain path is the default."""
    from frametok.models.session import SessionRunner

    assert not detector.runner.bound
    man = detector.manifest
    bound = SessionRunner(detector.session, man.input_name, man.output_name, device="cpu")
    assert bound.bound
    img = cv2.cvtColor(cv2.imread(str(shared_media / "bus.jpg")), cv2.COLOR_BGR2RGB)
    batch = np.empty((2, 3, *detector.input_hw), np.float32)
    detector.preprocess(img, batch[0])
    detector.preprocess(img[::-1].copy(), batch[1])
    outs = []
    for b in (batch[0:1], batch[1:2], batch[0:1]):  # the shared model has a fixed batch of 1
        outs.append(bound(b))
        np.testing.assert_allclose(outs[-1], detector.runner(b), rtol=1e-5, atol=1e-4)
    assert not np.allclose(outs[0], outs[1])  # the buffer really took the second frame
    assert len(bound._inputs) == 1  # one buffer per batch shape, reused
    with pytest.raises(ValueError, match="device"):
        SessionRunner(detector.session, man.input_name, man.output_name, device="tpu")


def test_threads_spin_only_when_asked(shared_models: Path) -> None:
    """onnxruntime's intra-op threads do not spin by default (the worker shares its cores with decoding and
    pre-/post-processing); ``spin_wait`` leaves onnxruntime's own default (spinning)."""
    files = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    key = "session.intra_op.allow_spinning"
    off = create_session(files, ("cpu",), threads=1).get_session_options()
    assert off.get_session_config_entry(key) == "0"
    on = create_session(files, ("cpu",), threads=1, spin_wait=True).get_session_options()
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error: the entry is not set
        on.get_session_config_entry(key)


# --------------------------------------------------------------------------- heads (synthetic outputs, no model)


class _NoSession:
    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


def _manifest(head: str, resize: str = "letterbox", classes: int = 3) -> DetectorManifest:
    return DetectorManifest(name="t", onnx_file="t.onnx", onnx_sha256="0" * 64, input_name="images",
                            input_size_hw=(640, 640), output_name="output0", output_format=head,  # type: ignore[arg-type]
                            resize=resize, class_names=[str(i) for i in range(classes)])  # type: ignore[arg-type]


def test_end2end_rows_back_to_source_pixels() -> None:
    """(K, 6) rows x1 y1 x2 y2 score class in input pixels: threshold, max_det, most confident first, no NMS
    (two overlapping boxes of one class both stay), un-letterboxed (768x576 frame: gain 640/768, pad 80)."""
    det = Detector(_manifest("end2end"), _NoSession(), conf_threshold=0.25, max_det=2)
    _, info = letterbox_into(np.zeros((576, 768, 3), np.uint8), (640, 640))
    rows = np.array([[100, 180, 200, 280, 0.6, 1], [102, 182, 200, 280, 0.9, 1], [0, 0, 10, 10, 0.1, 2],
                     [300, 300, 400, 400, 0.3, 0]], np.float32)
    out = det.postprocess(rows, info)
    assert out.class_id.tolist() == [1, 1] and out.score.tolist() == pytest.approx([0.9, 0.6])
    g = 640 / 768
    np.testing.assert_allclose(out.xyxy[1], [100 / g, 100 / g, 200 / g, 200 / g], rtol=1e-5)


def test_rtdetr_normalised_rows_and_squash() -> None:
    """RT-DETR: (K, 6) cx cy w h score class normalised to the input, or (K, 4 + C) per-class scores; the squash
    resize maps x and y back with their own gains."""
    det = Detector(_manifest("rtdetr", "squash", classes=3), _NoSession(), conf_threshold=0.25)
    frame = np.zeros((300, 1000, 3), np.uint8)
    out_img = np.empty((3, 640, 640), np.float32)
    info = det.preprocess(frame, out_img)
    assert info.gain == pytest.approx(0.64) and info.gain_y == pytest.approx(640 / 300)
    six = np.array([[0.5, 0.5, 0.2, 0.4, 0.8, 2], [0.1, 0.1, 0.1, 0.1, 0.2, 0]], np.float32)
    out = det.postprocess(six, info)
    assert out.class_id.tolist() == [2]
    np.testing.assert_allclose(out.xyxy[0], [400, 90, 600, 210], rtol=1e-5)
    per_class = np.array([[0.5, 0.5, 0.2, 0.4, 0.1, 0.7, 0.3]], np.float32)  # (K, 4 + 3)
    det7 = Detector(_manifest("rtdetr", "squash", classes=3), _NoSession())
    out7 = det7.postprocess(per_class, info)
    assert out7.class_id.tolist() == [1] and out7.score.tolist() == pytest.approx([0.7])


def test_output_problem_names_both_shapes() -> None:
    yolo = _manifest("yolov8", classes=80)
    assert yolo.output_problem([1, 84, 8400]) is None and yolo.output_problem(["batch", 84, "anchors"]) is None
    assert yolo.output_problem([1, 300, 6]) == (
        "output (1, 300, 6) does not fit output_format yolov8: expected (N, 4 + 80 classes, anchors)")
    e2e = _manifest("end2end", classes=80)
    assert e2e.output_problem([1, 300, 6]) is None
    assert "expected (N, K, 6)" in str(e2e.output_problem([1, 84, 8400]))
    rt = _manifest("rtdetr", classes=80)
    assert rt.output_problem([1, 300, 6]) is None and rt.output_problem([1, 300, 84]) is None
    assert rt.output_problem([1, 84, 8400]) is not None
