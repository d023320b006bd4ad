"""A SIGKILLed ``frametok run`` (the OOM killer) leaves its rings in /dev/shm and its run folder in the temp
directory; the next run sweeps them at start-up, and never sweeps what belongs to a live run."""

from __future__ import annotations

import glob
import os
import tempfile
import time
from pathlib import Path

import pytest

from frametok.streamer.supervision.sweep import LOCK_NAME, sweep_dead_runs

from ..conftest import run_cli, start_cli, write_video
from .test_live_sources import tiny_encoder, tiny_models

__all__ = ["tiny_encoder"]  # the fixture

psutil = pytest.importorskip("psutil", reason="following the run's processes needs psutil (the dev extra)")


def _run_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "frametok-*-*")))


def _shm() -> set[str]:
    return set(glob.glob("/dev/shm/frametok-*"))


def _victim_dir(pid: int) -> str | None:
    """The run folder whose lock names supervisor ``pid`` (other runs may be going on beside)."""
    for d in _run_dirs():
        try:
            if Path(d, LOCK_NAME).read_text().strip() == str(pid):
                return d
        except OSError:
            continue
    return None


def _rings(rundir: str | None) -> set[str]:
    if rundir is None:
        return set()
    return {s for s in _shm() if os.path.basename(s).startswith(f"frametok-{os.path.basename(rundir).split('-')[1]}-")}


def _until(done: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_run_is_swept_by_the_next(tiny_encoder: Path, tmp_path: Path) -> None:
    long_clip = write_video(tmp_path / "long.mp4", frames=3000, size_wh=(96, 64), fps=30)
    short_clip = write_video(tmp_path / "short.mp4", frames=12, size_wh=(64, 48), fps=12)
    # held at its first packet (nobody subscribes): its producer has made its ring and waits
    victim = start_cli("run", "--source", f"clip={long_clip}", *tiny_models(tiny_encoder), "--publish",
                       "ipc://" + str(tmp_path / "pub"), "--wait-subscribers", "1",
                       "--no-progress")
    try:
        _until(lambda: _rings(_victim_dir(victim.pid)), 60, "the victim's rings")
        children = psutil.Process(victim.pid).children(recursive=True)
        rundir = _victim_dir(victim.pid)
        assert rundir is not None
        run_id = os.path.basename(rundir).split("-")[1]
        rings = _rings(rundir)

        assert not [p for p in sweep_dead_runs() if run_id in p], "a live run must never be swept"
        assert os.path.isdir(rundir) and all(os.path.exists(r) for r in rings)

        victim.kill()  # SIGKILL the supervisor: its children die with it, nobody unlinks
        victim.wait(10)
        _until(lambda: not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 20,
               "the victim's processes to die with it")
        assert os.path.isdir(rundir) and all(os.path.exists(r) for r in rings), "what the kill leaves behind"
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        if victim.stdout:
            victim.stdout.close()
        if victim.stderr:
            victim.stderr.close()

    done = run_cli("run", "--source", f"short={short_clip}", *tiny_models(tiny_encoder), "--publish",
                   "ipc://" + str(tmp_path / "pub2"), "--no-progress", timeout=120)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(rundir), f"{rundir} left behind"
    assert not [r for r in rings if os.path.exists(r)], f"{rings} left in /dev/shm"
    assert not [s for s in _shm() if f"frametok-{run_id}-" in s]
