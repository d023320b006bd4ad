"""SIGINT and SIGTERM in the middle of a multi-source run (a live network camera, a file, an image folder):
exit code 0 with the summary within a few seconds, no process left behind, no shared memory left in
/dev/shm, even when the camera has frozen and its producer is blocked in a network read."""

from __future__ import annotations

import glob
import signal
import time
from pathlib import Path

import pytest

from ..conftest import write_video
from .netserve import NetServer
from .test_live_sources import Run, _write_images, tiny_encoder, tiny_models, write_config

__all__ = ["tiny_encoder"]  # the fixture, shared with test_live_sources

psutil = pytest.importorskip("psutil", reason="checking for leftover processes needs psutil (the dev extra)")


def _shm() -> set[str]:
    return set(glob.glob("/dev/shm/frametok-*"))


@pytest.mark.parametrize(("sig", "frozen", "group"), [
    (signal.SIGINT, False, False),
    (signal.SIGTERM, False, False),
    (signal.SIGTERM, True, False),  # the camera froze: its producer is blocked reading the socket
    (signal.SIGINT, True, False),
    (signal.SIGINT, False, True),  # Ctrl-C in a terminal: every process of the group gets it
], ids=["sigint", "sigterm", "sigterm-frozen-camera", "sigint-frozen-camera", "ctrl-c-to-the-group"])
def test_signal_stops_everything(sig: int, frozen: bool, group: bool, tiny_encoder: Path, tmp_path: Path,
                                 endpoint: str) -> None:
    before = _shm()
    clip = write_video(tmp_path / "long.mp4", frames=3000, size_wh=(96, 64), fps=30)
    _write_images(tmp_path / "imgs")
    with NetServer(fps=30) as server:
        config = write_config(tmp_path / "run.yaml", [
            {"id": "cam", "uri": server.uri, "stall_timeout_s": 30},  # no stall handling during the test
            {"id": "clip", "uri": str(clip)},
            {"id": "imgs", "uri": str(tmp_path / "imgs")},
        ])
        run = Run(config, endpoint, *tiny_models(tiny_encoder), own_group=group)
        try:
            run.until(lambda: len(run.frames("cam")) >= 10 and len(run.frames("clip")) >= 10, 60, "packets")
            supervisor = psutil.Process(run.proc.pid)
            children = supervisor.children(recursive=True)
            names = sorted(p.name() for p in children)
            assert "frametok-worker" in names and sum(n.startswith("frametok-src-") for n in names) >= 2, names
            assert _shm() - before, "the rings should be in /dev/shm while the run goes"
            if frozen:
                server.pause()
                time.sleep(0.5)  # its producer is now waiting in a read that will not return for 30 s
            t0 = time.monotonic()
            code, out, err = run.stop(sig, timeout_s=30, group=group)
            took = time.monotonic() - t0
        finally:
            run.close()
    assert code == 0, (code, err)
    assert took < 5.0, f"stopping took {took:.1f} s"
    assert "stopped early" in out and "stream(s)" in out, out
    assert "did not stop" not in err, err  # no producer had to be terminated
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 5
    while (alive := [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    assert _shm() <= before, f"left in /dev/shm: {_shm() - before}"
    # every stream was told it stopped, and the subscriber saw no gap
    for sid in ("cam", "clip"):
        eos = run.ended(sid)
        assert eos is not None and eos.reason == "stopped", (sid, eos)
    assert not any(run.sub.gaps.values()), run.sub.gaps


def test_a_producer_that_dies_ends_its_stream_only(tiny_encoder: Path, tmp_path: Path, endpoint: str) -> None:
    """A producer killed outright (SIGKILL: a crash in a decoder, the OOM killer) cannot say goodbye: the
    supervisor notices, its stream ends with an error (restarts are off here; see test_faults.py for them),
    and the camera on the same worker goes on."""
    before = _shm()
    clip = write_video(tmp_path / "long.mp4", frames=3000, size_wh=(96, 64), fps=30)
    with NetServer(fps=30) as server:
        config = write_config(tmp_path / "run.yaml", [
            {"id": "cam", "uri": server.uri},
            {"id": "clip", "uri": str(clip)},
        ])
        config.write_text(config.read_text() + "supervisor: {restart: false}\n")
        run = Run(config, endpoint, *tiny_models(tiny_encoder))
        try:
            run.until(lambda: len(run.frames("cam")) >= 5 and len(run.frames("clip")) >= 5, 60, "packets")
            victim = next(p for p in psutil.Process(run.proc.pid).children(recursive=True)
                          if p.name() == "frametok-src-cl")
            victim.kill()
            run.until(lambda: run.ended("clip") is not None, 10, "the end of the dead producer's stream")
            cam_before = len(run.frames("cam"))
            run.until(lambda: len(run.frames("cam")) >= cam_before + 20, 20, "the camera going on")
            code, out, err = run.stop(signal.SIGINT)
        finally:
            run.close()
    assert code == 0, err
    eos = run.ended("clip")
    assert eos is not None and eos.reason == "error" and "producer process died" in eos.detail
    assert "failed: clip (producer process died (exit code -9))" in out, out
    assert _shm() <= before, f"left in /dev/shm: {_shm() - before}"
