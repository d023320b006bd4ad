"""Live pacing by the worker's own clock, with real processes: three 30 fps cameras into YOLOv8n + DINOv2.

The worker writes into each live ring when its batch started, when it is due back and what a batch takes;
each producer announces its newest frame just before that. So every batch takes a fresh frame of every
camera: no camera settles at every other batch (with pacers that learnt the cycle from their own takes,
one camera got 602 packets against 1,194 each for the other two), and a frame is about one batch plus its
age old when published (announced as soon as the previous one was taken it would be up to two)."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import yaml

from frametok.streamer.ipc.ring import FrameRing
from frametok.streamer.source.pacer import Pacer

from .netserve import NetServer
from .test_live_sources import Run

CAMERAS = ("a", "b", "c")
PACKETS = 30  # per camera, after the warm-up


def test_the_ring_carries_the_workers_cycle_to_the_pacer() -> None:
    with FrameRing.create(f"frametok-test-cycle-{np.random.default_rng().integers(1 << 30)}", 4, (8, 8, 3)) as ring:
        assert ring.worker_cycle() == (0, 0, 0)  # nothing announced yet: the pacer goes by the takes it sees
        attached = FrameRing.attach(ring.spec)
        try:
            attached.announce_cycle(1_000_000_000, 1_094_000_000, 94_000_000)  # the worker's side
            assert ring.worker_cycle() == (1_000_000_000, 1_094_000_000, 94_000_000)
            frame = np.zeros((8, 8, 3), np.uint8)
            slot, _ = ring.acquire("live")  # type: ignore[misc]
            ring.write(slot, 0, frame)
            assert attached.claim(slot, 0) is not None and ring.taken(slot, 0)  # the slot rows are untouched
        finally:
            attached.close()
    pacer = Pacer()
    pacer.worker_cycle(*(v / 1e9 for v in (1_000_000_000, 1_094_000_000, 94_000_000)))
    pacer.taken(0.99)
    assert pacer.worker_due() == 1.094


def test_three_cameras_each_get_every_batch_and_fresh_frames(shared_models: Path, tmp_path: Path,
                                                             endpoint: str) -> None:
    servers = [NetServer(fps=30, size_wh=(320, 240)) for _ in CAMERAS]
    for server in servers:
        server.start()
    try:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            # motion gating off: the test cameras' square comes back to the same place every 65 frames
            "sources": [{"id": cam, "uri": server.uri, "motion_threshold": 0}
                        for cam, server in zip(CAMERAS, servers, strict=True)],
            "worker": {"max_batch": 4},
        }))
        run = Run(config, endpoint, "--models", str(shared_models))
        try:
            run.until(lambda: all(len(run.frames(c)) >= 5 for c in CAMERAS), 180, "every camera's first packets")
            start = {c: len(run.frames(c)) for c in CAMERAS}
            run.until(lambda: min(len(run.frames(c)) - start[c] for c in CAMERAS) >= PACKETS, 180,
                      f"{PACKETS} more packets of every camera")
            end = {c: len(run.frames(c)) for c in CAMERAS}  # the window measured: not the shutdown's tail
            code, _, err = run.stop(signal.SIGINT)
        finally:
            run.close()
    finally:
        for server in servers:
            server.kill()
    assert code == 0, err
    packets = {c: run.frames(c)[start[c]:end[c]] for c in CAMERAS}
    counts = {c: len(p) for c, p in packets.items()}
    assert min(counts.values()) >= 0.8 * max(counts.values()), f"a camera settled at every other batch: {counts}"
    assert not any(p.reused for ps in packets.values() for p in ps)
    # the worker stamps t_infer once per batch: the time between distinct stamps is its batch cycle
    infer = np.unique([p.timestamps.t_infer_ns for ps in packets.values() for p in ps])
    batch_ms = float(np.median(np.diff(infer))) / 1e6
    for cam, ps in packets.items():
        age_ms = np.array([(p.timestamps.t_infer_ns - p.timestamps.t_capture_ns) / 1e6 for p in ps])
        # one batch plus the frame's age when taken (about half a frame period and the lead); announced as
        # soon as the worker took the previous frame, a frame would wait out about one more batch
        assert np.median(age_ms) < 1.5 * batch_ms, (cam, float(np.median(age_ms)), batch_ms)
