"""The pipeline end to end without ../shared: randomly initialised models exported here.

These weights are RANDOM (ultralytics' yolov8n.yaml, timm's vit_tiny with pretrained=False): the
test checks plumbing (processes, shared memory, sockets, packet shapes, counts), not detections.
It runs in a fresh clone with the export extra installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from frametok import EndOfStream, TokenPacket
from frametok.models.session import ModelFiles

from .test_pipeline import run_and_collect


@pytest.fixture(scope="module")
def random_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelFiles, ModelFiles]:
    pytest.importorskip("ultralytics", reason="exporting random-init models needs the export extra")
    pytest.importorskip("timm", reason="exporting random-init models needs the export extra")
    from frametok.exporters import export_timm_encoder, export_yolo

    out = tmp_path_factory.mktemp("random-models")
    det = export_yolo("yolov8n.yaml", out, name="yolo_random", imgsz=320)
    enc = export_timm_encoder("vit_tiny_patch16_224", out, random_init=True, name="vit_random")
    assert det.manifest.source.random_init and enc.manifest.source.random_init
    return det, enc


def test_random_models_through_the_pipeline(random_models: tuple[ModelFiles, ModelFiles], synthetic_video: Path,
                                            endpoint: str) -> None:
    det, enc = random_models
    messages, output, code = run_and_collect(
        ["--source", f"sq={synthetic_video}", "--detector", str(det.onnx_path), "--encoder", str(enc.onnx_path),
         "--max-batch", "3"], endpoint)
    assert code == 0, output
    frames = [m for m in messages if isinstance(m, TokenPacket)]
    assert [p.frame_index for p in frames] == list(range(24))
    for p in frames:
        assert p.size_wh == (160, 120)
        assert p.detections is not None
        assert p.patch_tokens is not None and p.patch_tokens.shape == (14, 14, 192)
        assert p.context_token is not None and p.context_token.shape == (192,)
        assert set(p.models) == {"detector", "encoder"} and p.models["detector"].startswith("yolo_random@")
    assert isinstance(messages[-1], EndOfStream) and messages[-1].frames == 24
