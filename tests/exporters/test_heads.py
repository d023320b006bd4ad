"""Detector heads: yolov8, end2end (YOLO26 / YOLOv10 one-to-one) and rtdetr, exported from
Ultralytics 8.4.190 model .yaml files and checked against Ultralytics' own predict.

The weights are random-init (``yolo26n.yaml``, ``yolov10n.yaml``, ``rtdetr-l.yaml``): no pretrained weights
for these models are to be had offline (only ../shared/models' YOLOv8n, the accuracy path of
test_yolo_export.py). Random weights score every box ~1e-5..0.05, so the parity threshold is lowered until
Ultralytics finds boxes (the record says which), and the export wakes them first (BatchNorm statistics from
the sample image) so that boxes and scores depend on the image at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frametok.errors import ExportError, ModelError
from frametok.models.describe import describe_ultralytics_onnx
from frametok.models.manifest import DetectorManifest, load_manifest, write_manifest
from frametok.models.session import ModelFiles, create_session, locate_model

from ..conftest import run_cli


def need_ultralytics() -> None:
    pytest.importorskip("torch", reason="needs torch (pip install 'frametok[export]')")
    pytest.importorskip("ultralytics", reason="needs ultralytics (pip install 'frametok[export]')")


def _export(yaml: str, out: Path, name: str, **kwargs: Any) -> ModelFiles:
    need_ultralytics()
    from frametok.exporters.yolo import export_yolo

    return export_yolo(yaml, out, name=name, **kwargs)


@pytest.fixture(scope="module")
def yolo26_e2e(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    """Random-init YOLO26n, its one-to-one head (Ultralytics ``export(nms=False)``): output (N, 300, 6)."""
    return _export("yolo26n.yaml", tmp_path_factory.mktemp("y26e2e"), "yolo26n_e2e", end2end=True)


def _raw_shape(files: ModelFiles) -> tuple[int, ...]:
    assert isinstance(files.manifest, DetectorManifest)
    session = create_session(files, ("cpu",), threads=2)
    probe = np.zeros((1, 3, *files.manifest.input_size_hw), np.float32)
    return tuple(session.run([files.manifest.output_name], {files.manifest.input_name: probe})[0].shape)


def _assert_parity(files: ModelFiles, head: str) -> dict[str, Any]:
    man = files.manifest
    assert isinstance(man, DetectorManifest) and man.output_format == head
    assert man.source.random_init is True
    parity = man.parity
    assert parity is not None and parity["head"] == head
    # random-init weights: the default threshold finds nothing, so the check ran at a lowered one, never on 0 boxes
    assert parity["threshold"] < 0.25 and parity["threshold_rule"].startswith("lowered")
    assert parity["compared"] >= 5 and parity["matched"] == parity["compared"]
    assert parity["min_iou"] >= 0.99
    assert parity["max_score_rel_diff"] <= 0.02
    return parity


def test_yolo26n_end2end_export_and_parity(yolo26_e2e: ModelFiles) -> None:
    """Random-init YOLO26n with its NMS-free head: manifest ``end2end``, parity against predict(nms=False)."""
    parity = _assert_parity(yolo26_e2e, "end2end")
    assert "nms=False" in parity["ultralytics_predict"]
    assert _raw_shape(yolo26_e2e) == (1, 300, 6)
    assert locate_model(yolo26_e2e.onnx_path).manifest == yolo26_e2e.manifest


def test_yolo26n_one_to_many_export_and_parity(tmp_path: Path) -> None:
    """Random-init YOLO26n, Ultralytics' default export (its one-to-many head, NMS in frametok): ``yolov8``."""
    files = _export("yolo26n.yaml", tmp_path, "yolo26n_o2m")
    parity = _assert_parity(files, "yolov8")
    assert "nms=False" not in parity["ultralytics_predict"]
    assert _raw_shape(files) == (1, 84, 8400)


def test_yolov10n_end2end_export_and_parity(tmp_path: Path) -> None:
    """Random-init YOLOv10n, its one-to-one head: ``end2end``."""
    files = _export("yolov10n.yaml", tmp_path, "yolov10n_e2e", end2end=True)
    _assert_parity(files, "end2end")
    assert _raw_shape(files) == (1, 300, 6)


def test_end2end_needs_a_one_to_one_head(tmp_path: Path) -> None:
    """YOLOv8 has no one-to-one head: asking for end2end is refused, nothing written."""
    with pytest.raises(ExportError, match="no one-to-one"):
        _export("yolov8n.yaml", tmp_path / "out", "v8", end2end=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_rtdetr_l_export_and_parity(tmp_path: Path) -> None:
    """Random-init RT-DETR-l (the smallest RT-DETR .yaml Ultralytics ships; ~75 s here, hence slow): ``rtdetr``,
    the (N, 300, 6) normalised cx cy w h score class output, squashed input as Ultralytics' RTDETRPredictor."""
    files = _export("rtdetr-l.yaml", tmp_path, "rtdetr_l")
    _assert_parity(files, "rtdetr")
    assert isinstance(files.manifest, DetectorManifest) and files.manifest.resize == "squash"
    assert _raw_shape(files) == (1, 300, 6)


def test_describe_reads_the_end2end_head(yolo26_e2e: ModelFiles, tmp_path: Path) -> None:
    """``export yolo X.onnx`` (describe) on the end-to-end ONNX: ``end2end``, not ``yolov8`` (the defect)."""
    assert describe_ultralytics_onnx(yolo26_e2e.onnx_path).output_format == "end2end"
    onnx = tmp_path / "mine.onnx"
    shutil.copy2(yolo26_e2e.onnx_path, onnx)
    result = run_cli("export", "yolo", str(onnx))
    assert result.returncode == 0, result.stderr
    assert json.loads(onnx.with_suffix(".json").read_text())["output_format"] == "end2end"


def _mislabelled(files: ModelFiles, folder: Path) -> Path:
    """The end-to-end ONNX with a manifest that says ``yolov8`` (as describe once wrote for every head)."""
    folder.mkdir()
    onnx = folder / files.onnx_path.name
    shutil.copy2(files.onnx_path, onnx)
    man = load_manifest(files.manifest_path or files.onnx_path.with_suffix(".json"))
    write_manifest(man.model_copy(update={"output_format": "yolov8", "parity": None}), onnx.with_suffix(".json"))
    return onnx


def test_mismatched_manifest_is_refused(yolo26_e2e: ModelFiles, tmp_path: Path) -> None:
    """A ``yolov8`` manifest on the (1, 300, 6) output: refused when the session is made, naming both shapes."""
    onnx = _mislabelled(yolo26_e2e, tmp_path / "bad")
    with pytest.raises(ModelError) as info:
        create_session(locate_model(onnx), ("cpu",), threads=1)
    msg = str(info.value)
    assert "output (1, 300, 6) does not fit output_format yolov8" in msg
    assert "expected (N, 4 + 80 classes, anchors)" in msg


def test_run_refuses_the_mismatched_manifest(yolo26_e2e: ModelFiles, tmp_path: Path, synthetic_video: Path) -> None:
    """``frametok run --detector`` with the mislabelled pair fails before it publishes a single frame."""
    onnx = _mislabelled(yolo26_e2e, tmp_path / "bad")
    result = run_cli("run", "--source", str(synthetic_video), "--detector", str(onnx), "--encoder", "none",
                     "--echo", "--json", "--no-progress", timeout=120)
    assert result.returncode != 0
    assert "does not fit output_format yolov8" in result.stderr and "(1, 300, 6)" in result.stderr
    assert '"kind":"frame"' not in result.stdout


def test_run_end2end_detector(yolo26_e2e: ModelFiles, tmp_path: Path, synthetic_video: Path) -> None:
    """A short ``frametok run --detector <end2end.onnx>``: detections in the packets (random-init weights, so the
    run's threshold is lowered to 0.001; boxes inside the frame)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"sources: [{{id: a, uri: {synthetic_video}}}]\n"
                   f"detector: {{model: {yolo26_e2e.onnx_path}, conf_threshold: 0.001, tracker: {{enabled: false}}}}\n")
    result = run_cli("run", str(cfg), "--encoder", "none", "--echo", "--json", "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines() if '"kind":"frame"' in line]
    assert frames
    dets = [d for f in frames for d in f["detections"]]
    assert len(dets) >= len(frames)
    w, h = frames[0]["size_wh"]
    for d in dets:
        x1, y1, x2, y2 = d["xyxy"]
        assert 0 <= x1 <= w and 0 <= x2 <= w and 0 <= y1 <= h and 0 <= y2 <= h
        assert 0.001 < d["score"] <= 1 and 0 <= d["class_id"] < 80


def test_zero_box_parity_is_refused(yolo26_e2e: ModelFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference that finds no box even at the lowest threshold: an ExportError, never a passed check."""
    from frametok.exporters import yolo

    empty = yolo._Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    monkeypatch.setattr(yolo, "_predict_ultralytics", lambda *args, **kwargs: empty)
    sample = Path(__file__).resolve().parents[2].parent / "shared" / "media" / "bus.jpg"
    if not sample.exists():
        from ultralytics.utils import ASSETS

        sample = Path(ASSETS) / "bus.jpg"
    assert yolo26_e2e.manifest_path is not None
    with pytest.raises(ExportError, match="compared no boxes"):
        yolo._check_parity(Path("yolo26n.yaml"), yolo26_e2e.manifest_path, None, 640, sample, "end2end")
