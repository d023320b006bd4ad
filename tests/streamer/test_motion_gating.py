"""Motion gating end to end: a clip with frozen stretches through the real models, gated and not.

Still frames run neither model and say so (``reused``), carrying the last frame's tokens; every frame the
models ran on has exactly the tokens of a full run (what the models made: boxes, scores, classes, track ids,
context and content tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from frametok import Subscriber, TokenPacket
from frametok.models.soft_tokens import MOTION_THRESHOLD
from frametok.streamer.source.decode import decode_frames

from ..conftest import free_endpoint, start_cli

RUN = 6  # frames per moving / frozen stretch


@pytest.fixture(scope="module")
def frozen_clip(shared_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vtest_small_3s.mp4 with frozen stretches: 6 frames moving, 6 repeats of the last one, twice (24 frames,
    half still), MPEG-4 encoded again like a recording."""
    import av

    frames = [f.frame_rgb for f in decode_frames(str(shared_media / "vtest_small_3s.mp4"))]
    out = tmp_path_factory.mktemp("motion") / "frozen.mp4"
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        src = iter(frames)
        last = None
        for i in range(4 * RUN):
            if (i // RUN) % 2 == 0 or last is None:
                last = next(src)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(last, format="rgb24")))
        container.mux(stream.encode(None))
    return out


def _run(tmp_path: Path, clip: Path, models: Path, threshold: float) -> list[TokenPacket]:
    lossless = free_endpoint()
    config = tmp_path / f"run-{threshold}.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"id": "v", "uri": str(clip), "motion_threshold": threshold}],
        "publisher": {"endpoint": free_endpoint(), "lossless_endpoint": lossless, "wait_subscribers": 1},
        "models_dir": str(models),
    }))
    with Subscriber(lossless, mode="lossless", timeout_s=120) as sub:
        proc = start_cli("run", str(config), "--no-progress")
        try:
            packets = [m for m in sub if isinstance(m, TokenPacket)]
            _out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    return packets


def _equal(a: Any, b: Any) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def test_still_frames_are_reused_and_moving_frames_equal_a_full_run(
        tmp_path: Path, frozen_clip: Path, shared_models: Path) -> None:
    gated = _run(tmp_path, frozen_clip, shared_models, MOTION_THRESHOLD)
    full = _run(tmp_path, frozen_clip, shared_models, 0.0)
    assert [p.frame_index for p in gated] == [p.frame_index for p in full] == list(range(4 * RUN))
    assert not any(p.reused for p in full), "motion gating off: every frame runs the models"
    frozen = {i for i in range(4 * RUN) if (i // RUN) % 2 == 1}
    reused = {p.frame_index for p in gated if p.reused}
    assert frozen <= reused, f"frozen frames not reused: {sorted(frozen - reused)}"
    moving = [p for p in gated if not p.reused]
    assert len(moving) >= 0.8 * (4 * RUN - len(frozen)), f"moving frames taken for still: {sorted(reused - frozen)}"
    last: TokenPacket | None = None
    for p, q in zip(gated, full, strict=True):
        assert p.detections is not None and p.context_token is not None and p.grid_update is not None
        if p.reused:  # the last frame's tokens again, the grid unchanged (or sent whole when a key is due)
            assert last is not None and p.detections.xyxy.shape == last.detections.xyxy.shape  # type: ignore[union-attr]
            assert _equal(p.detections.xyxy, last.detections.xyxy)  # type: ignore[union-attr]
            assert p.detections.track_id is not None  # the tracker is fed the same boxes: its tracks age
            assert _equal(p.context_token, last.context_token) and _equal(p.content_tokens, last.content_tokens)
            assert p.grid_update.kind != "key" or p.patch_tokens is not None
            continue
        last = p
        d, e = p.detections, q.detections
        assert e is not None
        assert _equal(d.xyxy, e.xyxy) and _equal(d.score, e.score) and _equal(d.class_id, e.class_id), p.frame_index
        assert _equal(d.track_id, e.track_id), (p.frame_index, d.track_id, e.track_id)
        assert _equal(p.context_token, q.context_token) and _equal(p.content_tokens, q.content_tokens), p.frame_index
        # the rebuilt grid of a frame the models ran on is within tau of their output, gated or not
        assert p.patch_tokens is not None and q.patch_tokens is not None


def test_a_still_stretch_settles_the_grid_and_still_gives_joiners_a_key() -> None:
    """The worker's soft-token state through a still stretch: the first reused frame brings the grid within
    tau/2 of the last real output, later ones leave it alone, and a keyframe asked for meanwhile (a joiner)
    comes at once, from the grid subscribers hold."""
    from frametok.config import EncoderConfig
    from frametok.grid import GridDecompressor, cosine_per_patch
    from frametok.streamer.worker.tokens import SoftTokenStream

    tau = 0.05
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 4, 16)).astype(np.float32)
    soft = SoftTokenStream(EncoderConfig(tau=tau, keyframe_interval=0))
    dec = GridDecompressor()
    first = soft.encoded(base[0, 0], base)
    assert first.grid_update is not None and first.grid_update.kind == "key"
    dec.apply(first.grid_update)
    # patches moved by 0 up to about 1.5 tau (cosine distance): a delta sends those beyond tau
    scale = np.linspace(0.0, 0.35, 16, dtype=np.float32).reshape(4, 4, 1)
    moved = base + scale * rng.standard_normal(base.shape).astype(np.float32)
    delta = soft.encoded(moved[0, 0], moved)
    assert delta.grid_update is not None and delta.grid_update.kind == "delta"
    held = dec.apply(delta.grid_update)
    assert held is not None and float(cosine_per_patch(held, moved).min()) >= 1 - tau - 2e-3
    settle = soft.skip(reused=True)
    assert settle.grid_update is not None and settle.grid_update.kind == "delta"
    held = dec.apply(settle.grid_update)
    assert held is not None and float(cosine_per_patch(held, moved).min()) >= 1 - tau / 2 - 2e-3
    assert _equal(settle.context, delta.context)
    again = soft.skip(reused=True)
    assert again.grid_update is not None and again.grid_update.kind == "skip"
    assert dec.apply(again.grid_update) is not None
    soft.request_keyframe()
    key = soft.skip(reused=True)
    assert key.grid_update is not None and key.grid_update.kind == "key"
    assert key.grid_update.values is not None and np.array_equal(key.grid_update.values, dec.apply(key.grid_update))
    assert soft.stats()["reused"] == 3 and soft.stats()["skipped"] == 0
