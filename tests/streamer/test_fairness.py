"""Fair batching across live streams: a camera at 10x the frame rate of another, one worker with YOLOv8n.

The busy stream cannot starve the quiet one: every frame of the quiet stream is processed (no drop, no
index jump), each within ``max_wait_ms`` plus the batch it may find running and its own batch."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from .netserve import NetServer
from .test_live_sources import Run

MAX_BATCH = 4
MAX_WAIT_MS = 20.0


def _batch_time_s(models: Path, size_wh: tuple[int, int]) -> float:
    """Median time of one full batch through the same detector, pre- and post-processing included, measured
    here and now (the machine is shared: a figure from elsewhere would not hold)."""
    from frametok.models.detector import Detector
    from frametok.models.session import create_session
    from frametok.registry import resolve_model

    files = resolve_model("yolov8n", "detector", [str(models)], allow_online=False)
    detector = Detector(files.manifest, create_session(files, ("cpu",), 0))  # type: ignore[arg-type]
    w, h = size_wh
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    batch = np.empty((MAX_BATCH, 3, *detector.input_hw), np.float32)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        boxes = [detector.preprocess(frame, batch[i]) for i in range(MAX_BATCH)]
        raw = detector.infer(batch)
        for i in range(MAX_BATCH):
            detector.postprocess(raw[i], boxes[i])
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


@pytest.mark.slow
def test_a_busy_live_stream_does_not_starve_a_quiet_one(shared_models: Path, tmp_path: Path, endpoint: str) -> None:
    size = (320, 240)
    with NetServer(fps=30, size_wh=size) as busy, NetServer(fps=3, size_wh=size) as quiet:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            "sources": [{"id": "busy", "uri": busy.uri}, {"id": "quiet", "uri": quiet.uri}],
            "worker": {"max_batch": MAX_BATCH, "max_wait_ms": MAX_WAIT_MS},
        }))
        run = Run(config, endpoint, "--models", str(shared_models), "--encoder", "none")
        try:
            run.until(lambda: len(run.frames("quiet")) >= 3 and len(run.frames("busy")) >= 3, 120, "both streams")
            time.sleep(15)
            code, _, err = run.stop(signal.SIGINT)
        finally:
            run.close()
    assert code == 0, err
    busy_frames, quiet_frames = run.frames("busy"), run.frames("quiet")
    assert len(busy_frames) > len(quiet_frames), (len(busy_frames), len(quiet_frames))
    assert busy_frames[-1].dropped > 0, "the busy stream should outrun the worker (this test is about contention)"
    # after the start (while the worker warms up a camera's first frames may go), every frame the quiet
    # camera sent was processed, in order: no index jump, the drop counter does not move
    quiet_frames = quiet_frames[5:]
    assert len(quiet_frames) >= 30  # 3 fps for 15 s and more
    indices = [p.frame_index for p in quiet_frames]
    assert indices == list(range(indices[0], indices[0] + len(indices))), indices
    assert len({p.dropped for p in quiet_frames}) == 1, [p.dropped for p in quiet_frames]

    batch_s = _batch_time_s(shared_models, size)
    waited_ms = np.array([(p.timestamps.t_infer_ns - p.timestamps.t_decode_ns) / 1e6 for p in quiet_frames])
    bound_ms = MAX_WAIT_MS + 2 * batch_s * 1000  # a batch already running, then its own
    # the machine is shared with other work: the bound must hold for nearly every frame, not each one
    within = float((waited_ms <= bound_ms * 1.25).mean())
    print(f"quiet stream: {len(quiet_frames)} frames, waited median {np.median(waited_ms):.0f} ms, "
          f"max {waited_ms.max():.0f} ms; bound {bound_ms:.0f} ms (batch {batch_s * 1000:.0f} ms); "
          f"busy stream {len(busy_frames)} packets, dropped {busy_frames[-1].dropped}")
    assert within >= 0.9, f"only {within:.0%} of the quiet frames within {bound_ms:.0f} ms: {waited_ms.round()}"
