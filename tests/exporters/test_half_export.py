"""``half=True`` on the torch exporters (Ultralytics .pt, timm): the fp16 graph is written, checked and recorded
in the same call. (The `.onnx` paths and the runtime side are in tests/test_precision.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from frametok.exporters import export_timm_encoder, export_yolo
from frametok.models.manifest import file_sha256
from frametok.models.session import create_session, session_precision

SAMPLES = ("bus.jpg", "zidane.jpg", "coffee.png")


def test_yolo_pt_export_half(shared_models: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs torch (pip install 'frametok[export]')")
    pytest.importorskip("ultralytics", reason="needs ultralytics (pip install 'frametok[export]')")
    files = export_yolo(shared_models / "yolov8n_coco.pt", tmp_path, half=True)  # fp16 checked on bus.jpg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolov8n_coco.fp16.onnx", "yolov8n_coco.json",
                                                          "yolov8n_coco.onnx"]
    man = files.manifest
    assert man.parity is not None  # the export's own check against ultralytics still ran
    assert man.fp16 is not None and man.fp16.onnx_sha256 == file_sha256(tmp_path / "yolov8n_coco.fp16.onnx")
    assert man.fp16.parity is not None and man.fp16.parity["samples"] == ["bus.jpg"]
    assert man.fp16.parity["matched"] == man.fp16.parity["boxes_fp32"] >= 4
    assert man.batch == "dynamic"
    session = create_session(files, ("cpu",), 2, precision="fp16")
    assert session_precision(session) == "fp16" and session.get_inputs()[0].shape[0] == "batch"


def test_timm_export_half(shared_media: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs torch (pip install 'frametok[export]')")
    pytest.importorskip("timm", reason="needs timm (pip install 'frametok[export]')")
    files = export_timm_encoder("vit_tiny_patch16_224", tmp_path, random_init=True, half=True,
                                half_samples=[shared_media / name for name in SAMPLES])
    fp16 = files.manifest.fp16
    assert fp16 is not None and fp16.onnx_file == "vit_tiny_patch16_224.fp16.onnx"
    assert fp16.parity is not None and fp16.parity["tokens_shape"] == [3, 197, 192]
    assert fp16.parity["min_cosine"] >= 0.99
