"""Soft tokens end to end: compressed grids rebuilt within tau of the encoder's own output, late
joiners that wait for a keyframe, content and query tokens, and the encoder skip on still frames."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from frametok import StreamInfo, Subscriber, TokenPacket
from frametok.grid import cosine_per_patch
from frametok.models.encoder import Encoder
from frametok.models.session import create_session
from frametok.registry import resolve_model
from frametok.streamer.source.decode import decode_frames

from ..conftest import start_cli

TAU = 0.05
SLACK = 2e-3


@pytest.fixture(scope="module")
def encoder(shared_models: Path) -> Encoder:
    files = resolve_model("dinov2_vits14", "encoder", [shared_models], allow_online=False)
    return Encoder(files.manifest, create_session(files, ("cpu",), threads=2))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def truth(encoder: Encoder, shared_media: Path) -> dict[int, np.ndarray]:
    """The encoder's own patch grids for every frame of the clip, computed here without frametok's pipeline."""
    frames = [f.frame_rgb for f in decode_frames(str(shared_media / "vtest_small_3s.mp4"))]
    return {i: encoder([frame]).patches[0] for i, frame in enumerate(frames)}


def _config(tmp_path: Path, video: Path, models: Path, endpoint: str, **encoder: Any) -> Path:
    cfg = {
        "sources": [{"id": "v", "uri": str(video)}],
        "detector": None,
        "encoder": {"model": "dinov2_vits14", "tau": TAU, **encoder},
        "publisher": {"endpoint": endpoint, "wait_subscribers": 1},
        "models_dir": str(models),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, sub: Subscriber, on_packet: Any = None) -> list[Any]:
    proc = start_cli("run", str(config), "--no-progress")
    try:
        messages = []
        for msg in sub:
            messages.append(msg)
            if on_packet is not None:
                on_packet(msg)
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return messages


def test_rebuilt_grids_are_within_tau(tmp_path: Path, shared_media: Path, shared_models: Path,
                                      truth: dict[int, np.ndarray], endpoint: str) -> None:
    config = _config(tmp_path, shared_media / "vtest_small_3s.mp4", shared_models, endpoint, keyframe_interval=0)
    with Subscriber(endpoint, timeout_s=120) as sub:
        packets = [m for m in _run(config, sub) if isinstance(m, TokenPacket)]
    assert len(packets) == 30
    kinds = [p.grid_update.kind for p in packets if p.grid_update is not None]
    assert kinds[0] == "key" and kinds.count("delta") >= 25
    sent = sum(p.grid_update.tokens_sent for p in packets if p.grid_update is not None)
    assert sent < 0.6 * 30 * 256, "a static camera must cost a fraction of full grids"
    for p in packets:
        assert p.patch_tokens is not None and p.patch_tokens.shape == (16, 16, 384)
        cos = cosine_per_patch(p.patch_tokens, truth[p.frame_index])
        assert cos.min() >= 1 - TAU - SLACK, (p.frame_index, float(cos.min()))
        assert p.content_tokens is not None and p.content_tokens.shape == (1, 1, 384)


def test_late_joiner_waits_for_a_keyframe(tmp_path: Path, shared_media: Path, shared_models: Path,
                                          truth: dict[int, np.ndarray], endpoint: str) -> None:
    # a slow-running stream (a still-image-like clip would do; vtest_small at the pipeline's pace is enough)
    config = _config(tmp_path, shared_media / "vtest_small_3s.mp4", shared_models, endpoint, keyframe_interval=0)
    late_packets: list[TokenPacket] = []
    late_holder: dict[str, Subscriber] = {}

    def join_late(msg: Any) -> None:
        if isinstance(msg, TokenPacket) and msg.frame_index == 8 and "sub" not in late_holder:
            late = Subscriber(endpoint, timeout_s=30)
            late_holder["sub"] = late

            def loop() -> None:
                for m in late:
                    if isinstance(m, TokenPacket):
                        late_packets.append(m)

            threading.Thread(target=loop, daemon=True).start()

    with Subscriber(endpoint, timeout_s=120) as first:
        _run(config, first, join_late)
    time.sleep(1.0)
    late_holder["sub"].close()
    assert late_packets, "the late joiner received nothing"
    with_grid = [p for p in late_packets if p.patch_tokens is not None]
    assert with_grid, "the late joiner never got back in sync"
    first_synced = with_grid[0]
    assert first_synced.grid_update is not None and first_synced.grid_update.kind == "key"
    for p in late_packets:
        if p.patch_tokens is None:
            assert p.frame_index < first_synced.frame_index
        else:
            assert cosine_per_patch(p.patch_tokens, truth[p.frame_index]).min() >= 1 - TAU - SLACK
    # asking for a keyframe on joining gets it within a few frames, not at the next periodic keyframe
    assert first_synced.frame_index - late_packets[0].frame_index <= 5


def test_queries_and_skips(tmp_path: Path, shared_media: Path, shared_models: Path, endpoint: str) -> None:
    # a clip that stands still for 10 frames, then changes: the encoder is skipped on the still frames
    rgb = cv2.cvtColor(cv2.imread(str(shared_media / "bus.jpg")), cv2.COLOR_BGR2RGB)
    still = tmp_path / "still.mp4"
    import av

    with av.open(str(still), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 320, 240, "yuv420p", 4_000_000
        for i in range(16):
            img = cv2.resize(rgb, (320, 240)) if i < 10 else cv2.resize(np.roll(rgb, 40 * i, axis=1), (320, 240))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))
    queries = [{"name": "bus", "image": str(shared_media / "bus.jpg"), "crop_xyxy": [0, 220, 810, 760]},
               {"name": "cat", "image": str(shared_media / "chelsea.png")}]
    config = _config(tmp_path, still, shared_models, endpoint, skip_threshold=0.02, queries=queries, pool=2)
    with Subscriber(endpoint, timeout_s=120) as sub:
        messages = _run(config, sub)
    info = next(m for m in messages if isinstance(m, StreamInfo))
    assert info.models["encoder"]["queries"] == ["bus", "cat"]
    packets = [m for m in messages if isinstance(m, TokenPacket)]
    assert len(packets) == 16
    kinds = [p.grid_update.kind for p in packets if p.grid_update is not None]
    assert kinds.count("skip") >= 7, kinds  # the still frames after the first
    for p in packets:
        assert p.patch_tokens is not None  # skipped frames still carry the (unchanged) grid
        assert p.query_tokens is not None and p.query_tokens.shape == (2, 384)
        assert p.query_scores is not None and p.content_tokens is not None and p.content_tokens.shape == (2, 2, 384)
        bus_score, cat_score = p.query_scores
        if p.frame_index < 10:
            assert bus_score > cat_score  # a bus in view looks more like the bus than like the cat
