"""Crashed and hung processes, with real processes, sockets and video: the supervisor restarts them with
backoff, their streams' subscribers see status messages, and nothing is lost or doubled; a process that
keeps crashing is given up with a clear error."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from frametok import EndOfStream, StatusMessage, Subscriber, TokenPacket
from frametok.config import SupervisorConfig
from frametok.grid import cosine_per_patch
from frametok.models.encoder import Encoder
from frametok.models.session import create_session, locate_model
from frametok.packet import Message
from frametok.streamer.source.decode import decode_frames
from frametok.streamer.supervision.watch import RestartBudget

from ..conftest import free_endpoint, start_cli, write_video
from .test_live_sources import tiny_encoder, tiny_models

__all__ = ["tiny_encoder"]  # the fixture, shared with test_live_sources

psutil = pytest.importorskip("psutil", reason="finding the processes to kill needs psutil (the dev extra)")


def _tiny_grids(encoder_onnx: Path, video: Path, frames: set[int]) -> dict[int, np.ndarray]:
    """The tiny encoder's own patch grids for ``frames`` of ``video``, computed here without the pipeline."""
    files = locate_model(encoder_onnx)
    encoder = Encoder(files.manifest, create_session(files, ("cpu",), threads=1))  # type: ignore[arg-type]
    return {f.index: encoder([f.frame_rgb]).patches[0] for f in decode_frames(str(video)) if f.index in frames}


class LosslessRun:
    """``frametok run`` with a lossless subscriber reading all along in a thread."""

    def __init__(self, tmp_path: Path, sources: list[dict[str, Any]], extra: list[str],
                 supervisor: dict[str, Any] | None = None) -> None:
        self.endpoint, self.lossless = free_endpoint(), free_endpoint()
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            "sources": sources,
            "supervisor": {"backoff_initial_s": 0.2, **(supervisor or {})},
            "publisher": {"lossless_endpoint": self.lossless, "lossless_timeout_s": 20},
        }))
        self.sub = Subscriber(self.lossless, mode="lossless", timeout_s=90, credit=32, heartbeat_s=0.3)
        self.proc = start_cli("run", str(config), *extra, "--publish", self.endpoint, "--wait-subscribers", "1",
                              "--no-progress")
        self.messages: list[Message] = []
        self.ids = {s["id"] for s in sources}
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closing.is_set() and not self.ids <= self.sub.ended:
            msg = self.sub.recv(0.2)
            if msg is not None:
                self.messages.append(msg)

    def frames(self, sid: str) -> list[int]:
        return [m.frame_index for m in list(self.messages) if isinstance(m, TokenPacket) and m.stream_id == sid]

    def statuses(self, sid: str) -> list[StatusMessage]:
        return [m for m in list(self.messages) if isinstance(m, StatusMessage) and m.stream_id == sid]

    def until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                out, err = self.finish(5)
                raise AssertionError(f"no {what} within {timeout_s} s (exit {self.proc.returncode}): {out}{err}")
            time.sleep(0.05)

    def child(self, prefix: str) -> Any:
        return next(p for p in psutil.Process(self.proc.pid).children(recursive=True) if p.name().startswith(prefix))

    def finish(self, timeout_s: float = 120) -> tuple[str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            self.closing.set()
        self.thread.join(30)
        self.closing.set()
        self.thread.join(5)
        self.sub.close()
        return out, err


def test_restart_budget_backs_off_and_gives_up() -> None:
    budget = RestartBudget(SupervisorConfig(max_restarts=3, backoff_initial_s=0.5, backoff_max_s=1.5, window_s=60))
    delays = []
    for _ in range(3):
        assert budget.allow("worker")
        delays.append(budget.delay_s("worker"))
    assert delays == [0.5, 1.0, 1.5]
    assert not budget.allow("worker") and budget.allow("cam")  # per process
    assert budget.gave_up("worker died").endswith("gave up after 3 restarts within 60 s")
    assert not RestartBudget(SupervisorConfig(restart=False)).allow("worker")


def test_producer_killed_is_restarted_and_its_file_goes_on_without_loss(tiny_encoder: Path,
                                                                       tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=600, size_wh=(96, 64), fps=30)
    run = LosslessRun(tmp_path, [{"id": "clip", "uri": str(clip), "slots": 4}], tiny_models(tiny_encoder))
    run.until(lambda: len(run.frames("clip")) >= 100, 60, "packets before the kill")
    run.child("frametok-src-cl").send_signal(signal.SIGKILL)
    out, err = run.finish()
    assert run.proc.returncode == 0, err
    assert run.frames("clip") == list(range(600)), "every frame exactly once, in order"
    details = [s.detail for s in run.statuses("clip") if s.state == "reconnecting"]
    assert any("producer process died (exit code -9); restarting it (restart 1)" in d for d in details), details
    states = [s.state for s in run.statuses("clip")]
    assert states.index("reconnecting") < len(states) - 1 - states[::-1].index("online"), states
    eos = [m for m in run.messages if isinstance(m, EndOfStream)]
    assert len(eos) == 1 and eos[0].reason == "end"
    assert "restarted: clip x1" in out and "600 frames from 1 stream(s) -> 600 packets" in out, out
    assert run.sub.duplicates == 0 and not run.sub.gaps


def test_worker_killed_is_restarted_and_a_lossless_subscriber_gets_every_frame_once(
        shared_media: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    """vtest.avi (795 frames), file source, lossless subscriber: the worker is killed mid-run; frames in
    flight are redone by the new worker, and the subscriber ends with every frame exactly once."""
    run = LosslessRun(tmp_path, [{"id": "v", "uri": str(shared_media / "vtest.avi")}], tiny_models(tiny_encoder))
    run.until(lambda: len(run.frames("v")) >= 150, 90, "packets before the kill")
    run.child("frametok-worker").send_signal(signal.SIGKILL)
    killed_at = len(run.messages)
    out, err = run.finish(180)
    assert run.proc.returncode == 0, err
    assert run.frames("v") == list(range(795)), "every frame exactly once, in order"
    after = run.messages[killed_at:]
    statuses = [(m.state, m.detail) for m in run.messages if isinstance(m, StatusMessage)]
    restart = next((i for i, m in enumerate(after) if isinstance(m, StatusMessage) and m.state == "reconnecting"),
                   None)
    assert restart is not None, (statuses, err)
    assert "worker died (exit code -9)" in after[restart].detail  # type: ignore[union-attr]
    # the new worker starts with a keyframe (a frame it redid that had been published is not yielded twice,
    # but its keyframe is applied): every grid after the restart is whole and matches the new worker's
    grids = [m for m in after[restart:] if isinstance(m, TokenPacket)][:40]
    assert run.sub.unsynced == 0, "no frame without its grid"
    truth = _tiny_grids(tiny_encoder, shared_media / "vtest.avi", {m.frame_index for m in grids})
    for m in grids:
        assert m.patch_tokens is not None
        assert cosine_per_patch(m.patch_tokens, truth[m.frame_index]).min() >= 1 - 0.05 - 2e-3, m.frame_index
    assert any(isinstance(m, StatusMessage) and m.state == "online" for m in after[restart:])
    assert "restarted: worker x1" in out, out
    assert not run.sub.gaps


def test_hung_producer_is_killed_and_restarted(tiny_encoder: Path, tmp_path: Path) -> None:
    """A producer that stops (SIGSTOP: hung) sends no heartbeat: after heartbeat_timeout_s it is killed and
    restarted, and its file still arrives whole."""
    clip = write_video(tmp_path / "clip.mp4", frames=400, size_wh=(96, 64), fps=30)
    run = LosslessRun(tmp_path, [{"id": "clip", "uri": str(clip)}], tiny_models(tiny_encoder),
                      supervisor={"heartbeat_timeout_s": 2.0})
    run.until(lambda: len(run.frames("clip")) >= 50, 60, "packets before the hang")
    run.child("frametok-src-cl").send_signal(signal.SIGSTOP)
    out, err = run.finish()
    assert run.proc.returncode == 0, err
    assert run.frames("clip") == list(range(400))
    assert any("producer hung (nothing for 2 s)" in s.detail for s in run.statuses("clip")), run.statuses("clip")
    assert "restarted: clip x1" in out, out


def test_a_worker_that_keeps_crashing_is_given_up(tiny_encoder: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=3000, size_wh=(96, 64), fps=30)
    run = LosslessRun(tmp_path, [{"id": "clip", "uri": str(clip)}], tiny_models(tiny_encoder),
                      supervisor={"max_restarts": 1})
    run.until(lambda: len(run.frames("clip")) >= 20, 60, "packets before the first kill")
    run.child("frametok-worker").send_signal(signal.SIGKILL)
    run.until(lambda: any(s.state == "online" and "resumed" in s.detail for s in run.statuses("clip")), 60,
              "the restarted worker")
    run.child("frametok-worker").send_signal(signal.SIGKILL)
    out, err = run.finish()
    assert run.proc.returncode == 1, (out, err)
    assert "worker died (exit code -9); gave up after 1 restarts within 300 s" in err, err
    assert "Traceback" not in err, err


def test_live_camera_producer_killed_is_restarted_and_goes_on(tiny_encoder: Path, tmp_path: Path) -> None:
    """A network camera's producer is killed: it is restarted, reconnects, and its frame index goes on from
    where it was (no index seen twice); a file source beside it is not disturbed."""
    from .netserve import NetServer
    from .test_live_sources import Run, write_config

    clip = write_video(tmp_path / "clip.mp4", frames=3000, size_wh=(96, 64), fps=30)
    with NetServer(fps=30, size_wh=(96, 64)) as server:
        config = write_config(tmp_path / "run.yaml", [{"id": "cam", "uri": server.uri},
                                                       {"id": "clip", "uri": str(clip)}])
        run = Run(config, free_endpoint(), *tiny_models(tiny_encoder))
        try:
            run.until(lambda: len(run.frames("cam")) >= 10, 60, "camera packets")
            victim = next(p for p in psutil.Process(run.proc.pid).children(recursive=True)
                          if p.name() == "frametok-src-ca")
            victim.send_signal(signal.SIGKILL)
            before = len(run.frames("cam"))
            run.until(lambda: len(run.frames("cam")) >= before + 20, 60, "the camera going on after the restart")
            code, out, err = run.stop(signal.SIGINT)
        finally:
            run.close()
    assert code == 0, err
    indices = [p.frame_index for p in run.frames("cam")]
    assert indices == sorted(set(indices)), "the camera's frame index goes on, never back"
    assert "reconnecting" in run.states("cam") and run.states("cam")[-1] == "online", run.describe()
    clip_frames = [p.frame_index for p in run.frames("clip")]
    assert clip_frames == list(range(len(clip_frames)))
    assert "restarted: cam x1" in out, out


def test_hung_worker_is_killed_and_restarted(tiny_encoder: Path, tmp_path: Path) -> None:
    """A worker that stops (SIGSTOP) sends no progress: after heartbeat_timeout_s it is killed and restarted,
    and the lossless subscriber still gets every frame once."""
    clip = write_video(tmp_path / "clip.mp4", frames=400, size_wh=(96, 64), fps=30)
    run = LosslessRun(tmp_path, [{"id": "clip", "uri": str(clip)}], tiny_models(tiny_encoder),
                      supervisor={"heartbeat_timeout_s": 3.0})
    run.until(lambda: len(run.frames("clip")) >= 50, 60, "packets before the hang")
    run.child("frametok-worker").send_signal(signal.SIGSTOP)
    out, err = run.finish()
    assert run.proc.returncode == 0, err
    assert run.frames("clip") == list(range(400)), err[-3000:]
    assert any("worker hung (nothing for 3 s)" in s.detail for s in run.statuses("clip")), run.statuses("clip")
    assert "restarted: worker x1" in out, out


def test_a_producer_that_keeps_crashing_is_given_up_and_the_run_goes_on(tiny_encoder: Path,
                                                                      tmp_path: Path) -> None:
    bad = write_video(tmp_path / "bad.mp4", frames=3000, size_wh=(96, 64), fps=30)
    good = write_video(tmp_path / "good.mp4", frames=300, size_wh=(96, 64), fps=30)
    run = LosslessRun(tmp_path, [{"id": "bad", "uri": str(bad)}, {"id": "good", "uri": str(good)}],
                      tiny_models(tiny_encoder), supervisor={"max_restarts": 1})
    run.until(lambda: len(run.frames("bad")) >= 20, 60, "packets before the first kill")
    run.child("frametok-src-ba").send_signal(signal.SIGKILL)
    run.until(lambda: sum(s.state == "online" for s in run.statuses("bad")) >= 2, 60, "the restarted producer")
    run.child("frametok-src-ba").send_signal(signal.SIGKILL)
    out, err = run.finish()
    assert run.proc.returncode == 0, err
    assert run.frames("good") == list(range(300))
    eos = next(m for m in run.messages if isinstance(m, EndOfStream) and m.stream_id == "bad")
    assert eos.reason == "error"
    assert "producer process died (exit code -9); gave up after 1 restarts within 300 s" in eos.detail
    assert "failed: bad (producer process died (exit code -9); gave up after 1 restarts" in out, out
    frames = run.frames("bad")
    assert frames == list(range(len(frames))), "what was published before it was given up: in order, once"
