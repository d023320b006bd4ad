"""Rect letterbox through the pipeline: two streams of different aspects (4:3 and 16:9) in one real
``frametok run`` share batches, each frame at its own input shape (one detector call per shape in a batch),
and every packet's boxes are what the detector gives that frame alone; the index's engine likewise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frametok import EndOfStream, TokenPacket
from frametok.config import Config
from frametok.exporters.yolo import match_boxes
from frametok.models.detector import Detector
from frametok.models.manifest import DetectorManifest
from frametok.models.session import ModelFiles, create_session
from frametok.packet import Detections
from frametok.streamer.source.decode import decode_frames

from .test_pipeline import run_and_collect

WIDE_WH = (384, 216)  # 16:9 -> a 384x640 input (360 rows padded to a multiple of 32); vtest_small (4:3): 480x640


@pytest.fixture(scope="module")
def wide_clip(shared_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vtest_small_3s.mp4 (384x288, people walking) cut to 16:9: its middle 384x216, re-encoded (MPEG-4)."""
    import av

    w, h = WIDE_WH
    top = (288 - h) // 2
    path = tmp_path_factory.mktemp("media") / "vtest_wide.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 2_000_000
        for frame in decode_frames(str(shared_media / "vtest_small_3s.mp4")):
            crop = np.ascontiguousarray(frame.frame_rgb[top : top + h])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def rect_detector(dynamic_yolo: ModelFiles) -> Detector:
    assert isinstance(dynamic_yolo.manifest, DetectorManifest) and dynamic_yolo.manifest.dynamic_hw
    return Detector(dynamic_yolo.manifest, create_session(dynamic_yolo, ("cpu",), threads=2), rect=True)


def _alone(detector: Detector, path: Path) -> dict[int, Detections]:
    """Each frame of ``path`` through the detector alone (a batch of one), by frame index."""
    return {f.index: detector([f.frame_rgb])[0] for f in decode_frames(str(path))}


def _same(got: Detections, want: Detections, where: str) -> None:
    assert len(got.score) == len(want.score), (where, got.score, want.score)
    matches = match_boxes(want.xyxy, want.class_id, want.score, got.xyxy, got.class_id, min_iou=0.99)
    assert len(matches) == len(want.score), (where, want.xyxy, got.xyxy)
    for m in matches:
        assert abs(float(want.score[m.ref]) - float(got.score[m.got])) <= 1e-3, (where, m)


def test_two_aspects_batch_together_each_at_its_own_input(
    shared_media: Path, wide_clip: Path, dynamic_yolo: ModelFiles, rect_detector: Detector, endpoint: str
) -> None:
    small = shared_media / "vtest_small_3s.mp4"
    assert rect_detector.input_hw_for((288, 384)) == (480, 640)
    assert rect_detector.input_hw_for((WIDE_WH[1], WIDE_WH[0])) == (384, 640)
    messages, output, code = run_and_collect(
        ["--source", f"small={small}", "--source", f"wide={wide_clip}", "--detector", str(dynamic_yolo.onnx_path),
         "--encoder", "none", "--no-track", "--max-batch", "4", "--threads", "2"], endpoint)
    assert code == 0, output
    # every frame of both streams ran at its own rect input; some batches held both shapes
    inputs = re.search(r"detector input 640x384 x30, 640x480 x30 \((\d+) mixed batches\)", output)
    assert inputs is not None, output
    assert int(inputs.group(1)) >= 1, output
    packets: dict[str, dict[int, TokenPacket]] = {"small": {}, "wide": {}}
    for m in messages:
        if isinstance(m, TokenPacket):
            packets[m.stream_id][m.frame_index] = m
    assert {s: sorted(p) for s, p in packets.items()} == {"small": list(range(30)), "wide": list(range(30))}
    assert {m.stream_id for m in messages if isinstance(m, EndOfStream)} == {"small", "wide"}
    boxes = 0
    for stream, path, size_wh in (("small", small, (384, 288)), ("wide", wide_clip, WIDE_WH)):
        for index, want in _alone(rect_detector, path).items():
            packet = packets[stream][index]
            assert packet.size_wh == size_wh and packet.detections is not None
            _same(packet.detections, want, f"{stream} frame {index}")
            boxes += len(want.score)
    assert boxes >= 60, f"only {boxes} boxes compared"  # people in most frames of both streams


def test_index_engine_runs_rect(wide_clip: Path, dynamic_yolo: ModelFiles, rect_detector: Detector) -> None:
    """The index's FrameEngine (``frametok index``) batches a video at its rect input too, with the same boxes
    (two batches in the models at once, as the worker's lane)."""
    pytest.importorskip("pyarrow", reason="the index extra (pyarrow) is not installed")
    from frametok.index.engine import FrameEngine, VideoJob
    from frametok.streamer.worker.models import prepare_models

    config = Config.model_validate({
        "sources": [{"id": "wide", "uri": str(wide_clip)}], "encoder": None,
        "detector": {"model": str(dynamic_yolo.onnx_path), "tracker": {"enabled": False}},
        "worker": {"max_batch": 4, "threads": 2, "providers": ["cpu"]},
    })
    engine = FrameEngine(config, prepare_models(config))
    assert engine.loaded.detector is not None and engine.loaded.detector.rect  # on by default: dynamic H/W
    assert engine.lane.in_flight == 2  # auto on 2 CPU threads and a file: two batches at once, rows in order
    rows: list[dict[str, Any]] = []
    for chunk in engine.index(VideoJob(str(wide_clip), "wide", "wide", 10.0)):
        assert chunk.ok, chunk.detail
        if chunk.kind == "rows":
            rows.extend(chunk.table.to_pylist())
    want = _alone(rect_detector, wide_clip)
    assert sorted(r["frame"] for r in rows) == sorted(want)
    for r in rows:
        got = Detections(xyxy=np.asarray(r["det_xyxy"], np.float32).reshape(-1, 4),
                         score=np.asarray(r["det_score"], np.float32), class_id=np.asarray(r["det_class"], np.int32))
        _same(got, want[r["frame"]], f"index frame {r['frame']}")
