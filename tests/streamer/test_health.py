"""The health endpoint of `frametok run` (for a process manager or a Kubernetes probe), with real processes:
/healthz is 200 while the supervisor and worker are alive and 503 while the worker is down, /streams
shows each stream's state and counts."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from frametok.streamer.ipc.notices import EventNotice
from frametok.streamer.supervision.health import HealthServer, HealthState

from ..conftest import free_endpoint, start_cli, write_video
from .test_live_sources import tiny_encoder, tiny_models

__all__ = ["tiny_encoder"]  # the fixture, shared with test_live_sources

psutil = pytest.importorskip("psutil", reason="finding the worker to kill needs psutil (the dev extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.1)


def test_health_state_and_server() -> None:
    state = HealthState(["a", "b"])
    alive = [True]
    state.worker_alive = lambda: alive[0]
    server = HealthServer(state, "127.0.0.1", 0)
    try:
        state.on_event(EventNotice("a", "status", {"state": "online", "detail": "96x64"}))
        state.on_event(EventNotice("worker", "progress", {"streams": {"a": 7, "b": 0}}))
        state.on_event(EventNotice("worker", "stream_end", {"stream": "b", "packets": 0, "reason": "error"}))
        state.restarted("a")
        code, body = _get(server.port, "/healthz")
        assert code == 200 and body["status"] == "ok" and body["restarts"] == {"a": 1}
        code, streams = _get(server.port, "/streams")
        assert code == 200
        assert streams["a"] == {"state": "online", "detail": "96x64", "packets": 7, "dropped": 0, "ended": False,
                                "reason": None, "restarts": 1, "worker": "worker"}
        assert streams["b"]["ended"] is True and streams["b"]["reason"] == "error"
        alive[0] = False
        code, body = _get(server.port, "/healthz")
        assert code == 503 and body["worker"] == "down"
        assert _get(server.port, "/nope")[0] == 404
    finally:
        server.close()


def test_run_serves_health_and_stream_state(tiny_encoder: Path, tmp_path: Path) -> None:
    port = _free_port()
    clip = write_video(tmp_path / "clip.mp4", frames=100_000 // 30, size_wh=(96, 64), fps=30)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"id": "clip", "uri": str(clip)}],
        "supervisor": {"backoff_initial_s": 2.0},  # a window in which the worker is down
    }))
    proc = start_cli("run", str(config), *tiny_models(tiny_encoder), "--publish", free_endpoint(),
                     "--health-port", str(port), "--no-progress")
    try:
        _until(lambda: _streams_ok(port), 60, "stream state with packets")
        code, body = _get(port, "/healthz")
        assert code == 200 and body["worker"] == "alive" and body["supervisor"] == "alive", body

        worker = next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "frametok-worker")
        worker.send_signal(signal.SIGKILL)
        _until(lambda: _get(port, "/healthz")[0] == 503, 10, "503 while the worker is down")
        _until(lambda: _get(port, "/healthz")[0] == 200, 60, "200 once the worker was restarted")
        code, body = _get(port, "/healthz")
        assert body["restarts"] == {"worker": 1}, body
        assert _get(port, "/streams")[1]["clip"]["restarts"] == 1
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "restarted: worker x1" in out, out
    with pytest.raises(OSError):
        _get(port, "/healthz")  # the server went with the run


def _streams_ok(port: int) -> bool:
    try:
        code, streams = _get(port, "/streams")
    except OSError:
        return False
    clip = streams.get("clip", {})
    return code == 200 and clip.get("state") == "online" and clip.get("packets", 0) > 10
