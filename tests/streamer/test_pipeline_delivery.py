"""Lossless delivery through the whole pipeline on the 795-frame vtest.avi (detector only, to keep it
short): a slow lossless subscriber gets every packet. (The slow live subscriber is in test_pipeline.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from frametok import EndOfStream, Subscriber, TokenPacket

from ..conftest import free_endpoint, start_cli

FRAMES = 795


def _consume(sub: Subscriber, delay_s: float, out: dict[str, Any]) -> None:
    frames = []
    for msg in sub:
        if isinstance(msg, TokenPacket):
            frames.append(msg.frame_index)
            if delay_s:
                time.sleep(delay_s)
        elif isinstance(msg, EndOfStream):
            out["eos"] = msg.frames
    out["frames"] = frames
    out["gaps"] = sum(g.missing for g in sub.gaps.values())


def _run(video: Path, models: Path, *extra: str) -> tuple[Any, str]:
    endpoint = free_endpoint()
    proc = start_cli("run", "--source", f"vtest={video}", "--models", str(models), "--encoder", "none",
                     "--publish", endpoint, "--no-progress", *extra)
    return proc, endpoint


@pytest.mark.slow
def test_lossless_slow_subscriber_gets_every_frame(shared_media: Path, shared_models: Path) -> None:
    lossless = free_endpoint()
    proc, _ = _run(shared_media / "vtest.avi", shared_models, "--wait-subscribers", "1",
                   "--lossless-endpoint", lossless)
    out_slow: dict[str, Any] = {}
    with Subscriber(lossless, mode="lossless", credit=8, timeout_s=120) as slow:
        _consume(slow, 0.06, out_slow)  # slower than the detector on 2 cores
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out_slow["frames"] == list(range(FRAMES)) and out_slow["gaps"] == 0 and out_slow["eos"] == FRAMES
    assert f"{FRAMES} packets" in out
