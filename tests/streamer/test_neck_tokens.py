"""Hard and soft tokens from one model pass, end to end: a real ``frametok run`` with ``encoder: {model: detector}``
and the real YOLOv8n exported with its P5 map publishes boxes and a compressed patch grid of the neck's shape
(a key, then deltas), every rebuilt grid within tau of the map the detector gives the frame alone; the index's
FrameEngine makes the same context tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frametok import StreamInfo, Subscriber, TokenPacket
from frametok.config import parse_config
from frametok.grid import cosine_per_patch
from frametok.models.detector import Detector
from frametok.models.neck import NeckReader
from frametok.models.session import ModelFiles, create_session
from frametok.streamer.source.decode import decode_frames

from ..conftest import start_cli
from ..models.test_neck import neck_yolo  # noqa: F401 (the fixture)

TAU = 0.05
SLACK = 3e-3  # float16 on the wire, and batches of other sizes than one


@pytest.fixture(scope="module")
def truth(neck_yolo: ModelFiles, shared_media: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:  # noqa: F811
    """Each frame's (context, grid) from the neck export run on that frame alone, without the pipeline."""
    det = Detector(neck_yolo.manifest, create_session(neck_yolo, ("cpu",), threads=2), rect=True)  # type: ignore[arg-type]
    reader = NeckReader(det)
    out = {}
    for f in decode_frames(str(shared_media / "vtest_small_3s.mp4")):
        batch = np.empty((1, 3, *det.input_hw_for(f.frame_rgb.shape[:2])), np.float32)
        info = det.preprocess(f.frame_rgb, batch[0])
        out[f.index] = reader.grid(reader.infer(batch)[0][1], info)
    return out


def test_run_publishes_boxes_and_the_neck_grid(neck_yolo: ModelFiles, shared_media: Path,  # noqa: F811
                                               truth: dict[int, tuple[np.ndarray, np.ndarray]], endpoint: str) -> None:
    args = ["--source", f"v={shared_media / 'vtest_small_3s.mp4'}", "--detector", str(neck_yolo.onnx_path),
            "--encoder", "detector", "--max-batch", "4", "--threads", "2", "--publish", endpoint,
            "--wait-subscribers", "1", "--no-progress"]
    with Subscriber(endpoint, timeout_s=300) as sub:
        proc = start_cli("run", *args)
        try:
            messages: list[Any] = list(sub)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not sub.gaps, sub.gaps
    assert proc.returncode == 0, out + err
    info = next(m for m in messages if isinstance(m, StreamInfo))
    enc = info.models["encoder"]
    assert (enc["output_layout"], enc["embed_dim"], enc["neck"]["level"]) == ("neck", 256, "P5"), enc
    packets = [m for m in messages if isinstance(m, TokenPacket)]
    assert sorted(p.frame_index for p in packets) == list(range(30))
    kinds = [p.grid_update.kind for p in packets if p.grid_update is not None]
    assert len(kinds) == 30 and kinds[0] == "key" and kinds.count("delta") >= 20, kinds
    sent = sum(p.grid_update.tokens_sent for p in packets if p.grid_update is not None)
    assert sent < 0.8 * 30 * 15 * 20, f"{sent} tokens sent: compression did nothing"
    assert sum(len(p.detections.score) for p in packets if p.detections is not None) >= 30  # people walking
    for p in packets:
        context, grid = truth[p.frame_index]
        assert p.patch_tokens is not None and p.patch_tokens.shape == (15, 20, 256)  # 384x288 at 640x480: P5
        cos = cosine_per_patch(p.patch_tokens, grid)
        assert cos.min() >= 1 - TAU - SLACK, (p.frame_index, float(cos.min()))
        assert p.context_token is not None and p.context_token.shape == (256,)
        assert np.allclose(p.context_token.astype(np.float32), context, rtol=5e-3, atol=5e-3)
        assert p.content_tokens is not None and p.content_tokens.shape == (1, 1, 256)


def test_index_engine_takes_the_neck(neck_yolo: ModelFiles, shared_media: Path,  # noqa: F811
                                     truth: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    pytest.importorskip("pyarrow", reason="the index extra (pyarrow) is not installed")
    from frametok.index.engine import FrameEngine, VideoJob
    from frametok.streamer.worker.models import prepare_models

    video = shared_media / "vtest_small_3s.mp4"
    config = parse_config({
        "sources": [{"id": "v", "uri": str(video)}], "encoder": {"model": "detector"},
        "detector": {"model": str(neck_yolo.onnx_path), "tracker": {"enabled": False}},
        "worker": {"max_batch": 4, "threads": 2, "providers": ["cpu"]},
    })
    engine = FrameEngine(config, prepare_models(config))
    assert engine.loaded.neck is not None and engine.loaded.encoder is None
    rows: list[dict[str, Any]] = []
    for chunk in engine.index(VideoJob(str(video), "v", "v", 10.0)):
        assert chunk.ok, chunk.detail
        if chunk.kind == "rows":
            rows.extend(chunk.table.to_pylist())
    assert sorted(r["frame"] for r in rows) == list(range(30))
    for r in rows:
        ctx = np.asarray(r["ctx"], np.float32)
        assert ctx.shape == (256,) and np.allclose(ctx, truth[r["frame"]][0], rtol=5e-3, atol=5e-3), r["frame"]
    assert sum(len(r["det_score"]) for r in rows) >= 30
