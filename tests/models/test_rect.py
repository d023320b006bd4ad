"""Rect letterbox: the input shape of a frame of its own aspect (as Ultralytics' default predict), the batches
of mixed input shapes, and who may ask for it (a graph of dynamic height and width)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from frametok.config import Config
from frametok.errors import ConfigError, ModelError
from frametok.models.detector import Detector, letterbox_into, rect_input_hw
from frametok.models.manifest import DetectorManifest, write_manifest
from frametok.models.session import create_session, locate_model
from frametok.models.shape_groups import ShapeGroups, ShapeTensors, infer_groups
from frametok.registry import resolve_model
from frametok.streamer.worker.models import detector_rect, prepare_models

from ..conftest import run_cli

# (height, width) of a frame -> of its rect input at 640, stride 32 (Ultralytics' LetterBox(auto=True))
RECT_CASES = [
    ((576, 768), (480, 640)),  # vtest.avi: 4:3, nothing to pad
    ((288, 384), (480, 640)),  # its small copy: scaled up
    ((720, 1280), (384, 640)),  # 16:9: 360 rows padded to 384
    ((768, 576), (640, 480)),  # portrait
    ((1080, 810), (640, 480)),  # the bus photo
    ((640, 640), (640, 640)),
    ((100, 3000), (32, 640)),  # a thin strip: 21 rows padded to 32
]


def _manifest(dynamic_hw: bool, resize: str = "letterbox") -> DetectorManifest:
    return DetectorManifest(name="t", onnx_file="t.onnx", onnx_sha256="0" * 64, input_name="images",
                            input_size_hw=(640, 640), output_name="output0", dynamic_hw=dynamic_hw,
                            resize=resize, class_names=["a"])  # type: ignore[arg-type]


class _NoSession:
    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


@pytest.mark.parametrize(("size_hw", "want_hw"), RECT_CASES)
def test_rect_input_shape(size_hw: tuple[int, int], want_hw: tuple[int, int]) -> None:
    assert rect_input_hw(size_hw, (640, 640), 32) == want_hw
    h, w = size_hw
    img, info = letterbox_into(np.zeros((h, w, 3), np.uint8), (640, 640), stride=32)
    assert img.shape == (*want_hw, 3) and info.input_hw == want_hw
    assert info.gain == pytest.approx(min(640 / h, 640 / w))
    square, square_info = letterbox_into(np.zeros((h, w, 3), np.uint8), (640, 640))
    assert square.shape == (640, 640, 3) and square_info.input_hw == (640, 640)
    assert square_info.gain == info.gain  # the same scale: only the padding differs


def test_rect_letterbox_places_the_frame_and_maps_boxes_back() -> None:
    """1280x720 at 384x640: gain 0.5, 12 rows of pad above (24 in all); a box maps back to the source frame."""
    frame = np.full((720, 1280, 3), 7, np.uint8)
    img, info = letterbox_into(frame, (640, 640), stride=32)
    assert info.pad_xy == (0.0, 12.0) and info.gain == 0.5 and info.size_wh == (1280, 720)
    assert (img[:12] == 114).all() and (img[12:372] == 7).all() and (img[372:] == 114).all()
    box = np.array([[100.0, 112.0, 300.0, 212.0]], np.float32)  # input pixels
    np.testing.assert_allclose(info.to_source(box), [[200.0, 200.0, 600.0, 400.0]])


@pytest.mark.parametrize(("size_hw", "want_hw"), RECT_CASES)
def test_rect_matches_ultralytics_letterbox(size_hw: tuple[int, int], want_hw: tuple[int, int]) -> None:
    """The same pixels as Ultralytics' own rect letterbox (``LetterBox(auto=True)``, its predict's default)."""
    augment = pytest.importorskip("ultralytics.data.augment", reason="the export extra (ultralytics) is not installed")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8)
    theirs = augment.LetterBox((640, 640), auto=True, stride=32)(image=frame)
    ours, _ = letterbox_into(frame, (640, 640), stride=32)
    assert theirs.shape == ours.shape == (*want_hw, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_detector_input_shape_follows_the_frame_only_with_rect() -> None:
    rect = Detector(_manifest(dynamic_hw=True), _NoSession(), rect=True)
    square = Detector(_manifest(dynamic_hw=True), _NoSession())
    assert rect.input_hw_for((576, 768)) == (480, 640) and square.input_hw_for((576, 768)) == (640, 640)
    frame = np.zeros((576, 768, 3), np.uint8)
    info = rect.preprocess(frame, np.empty((3, 480, 640), np.float32))
    assert info.input_hw == (480, 640) and info.pad_xy == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"768x576 frame goes into a \(3, 480, 640\) input.*got \(3, 640, 640\)"):
        rect.preprocess(frame, np.empty((3, 640, 640), np.float32))


def test_rect_needs_dynamic_height_and_width_and_a_letterbox() -> None:
    with pytest.raises(ModelError, match=r"rect letterbox asked for.*fixed 640x640 input"):
        Detector(_manifest(dynamic_hw=False), _NoSession(), rect=True)
    with pytest.raises(ModelError, match=r"rect letterbox asked for.*resize is squash"):
        Detector(_manifest(dynamic_hw=True, resize="squash"), _NoSession(), rect=True)


def test_shape_groups_one_call_per_shape_outputs_in_frame_order() -> None:
    """Frames of two input shapes in one batch: each shape's frames in its own tensor, one call per shape, and
    every frame's output back at its own index."""
    tensors, groups = ShapeTensors(4, [(480, 640)]), ShapeGroups()
    calls: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch[:, 0, 0, :1].copy()  # each frame's marker

    for marker, shape in enumerate([(480, 640), (384, 640), (480, 640), (384, 640)]):
        tensors.slot(shape, groups.next_row(shape))[:] = marker
        assert groups.add(shape) == marker
    assert groups.mixed and groups.rows == {(480, 640): [0, 2], (384, 640): [1, 3]}
    out = infer_groups(infer, tensors, groups)
    assert calls == [(2, 3, 480, 640), (2, 3, 384, 640)]
    assert [float(o[0]) for o in out] == [0.0, 1.0, 2.0, 3.0]
    assert tensors.shapes == [(480, 640), (384, 640)]
    with pytest.raises(IndexError, match="max_batch 4"):
        tensors.slot((480, 640), 4)


def test_static_shared_graph_is_not_dynamic_and_runs_square(shared_models: Path) -> None:
    """The shared yolov8n_coco.onnx has a fixed 1x3x640x640 input: its manifest says so, rect is off by default
    and refused when asked for, naming the field and the way out."""
    files = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    assert isinstance(files.manifest, DetectorManifest)
    assert files.manifest.dynamic_hw is False and files.manifest.stride == 32
    assert detector_rect(None, files) is False and detector_rect(False, files) is False
    config = Config.model_validate({"sources": [{"id": "a", "uri": "x.mp4"}], "encoder": None,
                                    "detector": {"model": "yolov8n", "rect": True}})
    with pytest.raises(ConfigError, match=r"detector\.rect: true.*fixed 640x640 input.*frametok export yolo"):
        prepare_models(config, (str(shared_models),))


def test_manifest_claiming_dynamic_hw_for_a_fixed_graph(shared_models: Path, tmp_path: Path) -> None:
    files = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    shutil.copy(files.onnx_path, tmp_path / "det.onnx")
    wrong = files.manifest.model_copy(update={"onnx_file": "det.onnx", "dynamic_hw": True})
    write_manifest(wrong, tmp_path / "det.json")
    with pytest.raises(ModelError, match=r"manifest says dynamic_hw .* fixed at 640x640"):
        create_session(locate_model(tmp_path / "det.json"), ("cpu",), threads=1)


def test_run_refuses_rect_for_a_fixed_graph(shared_models: Path, synthetic_video: Path, tmp_path: Path) -> None:
    config = tmp_path / "rect.yaml"
    config.write_text("detector: {model: yolov8n, rect: true}\nencoder: null\n")
    result = run_cli("run", str(config), "--source", str(synthetic_video), "--models", str(shared_models))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "detector.rect: true" in result.stderr and "Traceback" not in result.stderr, result.stderr
