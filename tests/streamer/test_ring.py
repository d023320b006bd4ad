"""The shared-memory ring between real processes: lossless under 'file', newest-wins under 'live'."""

from __future__ import annotations

import glob
import multiprocessing as mp
import time
import uuid

import numpy as np

from frametok.streamer.ipc.ring import FrameRing, RingSpec

SHAPE = (48, 64, 3)


def _produce(name: str, policy: str, frames: int, queue: mp.Queue, delay_s: float) -> None:
    with FrameRing.create(name, 3, SHAPE) as ring:
        queue.put(("spec", ring.spec))
        dropped = 0
        for seq in range(frames):
            got = ring.acquire(policy, timeout_s=10)  # type: ignore[arg-type]
            if got is None:
                dropped += 1
                continue
            slot, lost = got
            dropped += lost >= 0
            ring.write(slot, seq, np.full(SHAPE, seq % 251, np.uint8))
            queue.put(("frame", slot, seq))
            time.sleep(delay_s)
        queue.put(("end", dropped))
        deadline = time.monotonic() + 10
        while not ring.all_released() and time.monotonic() < deadline:
            time.sleep(0.001)


def _consume(policy: str, frames: int, produce_delay_s: float, read_delay_s: float) -> tuple[list[int], int, int]:
    name = f"frametok-test-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_produce, args=(name, policy, frames, queue, produce_delay_s))
    proc.start()
    kind, spec = queue.get(timeout=30)
    assert kind == "spec" and isinstance(spec, RingSpec)
    ring = FrameRing.attach(spec)
    seen, torn, dropped = [], 0, -1
    while True:
        msg = queue.get(timeout=30)
        if msg[0] == "end":
            dropped = msg[1]
            break
        _, slot, seq = msg
        version = ring.claim(slot, seq)
        if version is None:
            continue
        pixels = ring.view(slot).copy()
        time.sleep(read_delay_s)
        if not ring.verify(slot, version):
            ring.release(slot, seq)
            continue
        ring.release(slot, seq)
        if not (pixels == seq % 251).all():
            torn += 1
        seen.append(seq)
    # frames still notified after "end" are not expected: the producer sends "end" last
    ring.close()
    proc.join(15)
    assert proc.exitcode == 0
    assert not glob.glob(f"/dev/shm/{name}*"), "the owner must unlink its segment"
    return seen, torn, dropped


def test_file_policy_is_lossless_and_ordered() -> None:
    seen, torn, dropped = _consume("file", 200, 0.0, 0.002)
    assert seen == list(range(200))
    assert torn == 0 and dropped == 0


def test_live_policy_drops_stale_frames_and_never_tears() -> None:
    seen, torn, dropped = _consume("live", 300, 0.0005, 0.01)
    assert torn == 0
    assert dropped > 0 and len(seen) < 300
    assert seen == sorted(seen)
    # what was read plus what was dropped (overwritten or refused) accounts for every frame
    assert len(seen) + dropped >= 300 - 3
