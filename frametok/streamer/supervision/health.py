"""Liveness and per-stream state of a run over HTTP, for a process manager or a Kubernetes probe.

Served by the supervisor process from a daemon thread with the standard library's ``http.server``
(two read-only JSON routes need no web framework):

* ``GET /healthz``: 200 while the supervisor's loop runs and the worker process is alive, else 503;
* ``GET /streams``: every stream's state, from the status messages and counts the supervisor hears.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..ipc.notices import EventNotice

__all__ = ["HealthServer", "HealthState"]

log = logging.getLogger(__name__)

_LOOP_STALE_S = 10.0  # the supervisor's loop ticks every 0.2 s; this long without a tick is a hang


class HealthState:
    """What the supervisor knows, updated from its events (any thread may read it)."""

    def __init__(self, stream_ids: list[str]) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self._tick = time.monotonic()
        self.worker_alive: Callable[[], bool] = lambda: False
        self.workers: Callable[[], dict[str, bool]] = dict  # worker name -> alive
        self.worker_of: dict[str, str] = {}  # stream -> the name of the worker serving it
        self.restarts: dict[str, int] = {}
        self.streams: dict[str, dict[str, Any]] = {
            sid: {"state": "starting", "detail": "", "packets": 0, "dropped": 0, "ended": False, "reason": None,
                  "restarts": 0}
            for sid in stream_ids
        }

    def tick(self) -> None:
        """The supervisor's loop is alive."""
        self._tick = time.monotonic()

    def restarted(self, process: str) -> None:
        with self._lock:
            self.restarts[process] = self.restarts.get(process, 0) + 1
            for sid, st in self.streams.items():
                if process in (sid, self.worker_of.get(sid, "worker")):
                    st["restarts"] += 1

    def on_event(self, ev: EventNotice) -> None:
        data = ev.data
        with self._lock:
            if ev.event == "status" and ev.source in self.streams:
                self.streams[ev.source].update(state=str(data.get("state", "")), detail=str(data.get("detail", "")))
            elif ev.event in ("progress", "done"):
                for sid, n in (data.get("streams") or data.get("packets") or {}).items():
                    if sid in self.streams:
                        self.streams[sid]["packets"] = int(n)
                for sid, n in (data.get("dropped") or {}).items():
                    if sid in self.streams:
                        self.streams[sid]["dropped"] = int(n)
            elif ev.event == "producer_end" and ev.source in self.streams:
                self.streams[ev.source]["dropped"] = int(data.get("dropped", 0))
            elif ev.event == "stream_end" and data.get("stream") in self.streams:
                st = self.streams[data["stream"]]
                st.update(ended=True, reason=data.get("reason"), packets=int(data.get("packets", st["packets"])))

    def healthz(self) -> tuple[int, dict[str, Any]]:
        loop_ok = time.monotonic() - self._tick < _LOOP_STALE_S
        worker_ok = self.worker_alive()
        ok = loop_ok and worker_ok
        body = {"status": "ok" if ok else "unhealthy", "supervisor": "alive" if loop_ok else "stuck",
                "worker": "alive" if worker_ok else "down", "uptime_s": round(time.time() - self.started, 1),
                "restarts": dict(self.restarts),
                "workers": {name: "alive" if alive else "down" for name, alive in self.workers().items()}}
        return (200 if ok else 503), body

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {sid: {**st, "worker": self.worker_of.get(sid, "worker")} for sid, st in self.streams.items()}


class _Handler(BaseHTTPRequestHandler):
    state: HealthState  # set on the subclass made per server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/healthz":
            code, body = self.state.healthz()
        elif path == "/streams":
            code, body = 200, self.state.snapshot()
        else:
            code, body = 404, {"error": f"no such path {self.path!r}: try /healthz or /streams"}
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health: " + format, *args)


class HealthServer:
    """Serves a :class:`HealthState` on ``host:port`` until closed."""

    def __init__(self, state: HealthState, host: str, port: int) -> None:
        handler = type("HealthHandler", (_Handler,), {"state": state})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="frametok-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2.0)
