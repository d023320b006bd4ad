"""``frametok view``: a local web page that shows every stream of a publisher live.

One thread subscribes with the :class:`~frametok.Subscriber` SDK and keeps a :class:`Board`; a
standard-library ``ThreadingHTTPServer`` serves the page (``static/``, package data: no CDN, works
offline) and pushes each stream's latest snapshot to every browser as Server-Sent Events
(``/events``). ``/state.json`` returns the same snapshots once (for scripts and tests).

The standard library is enough here (two static files, one event stream, one JSON route); a web
framework would add a dependency and an event loop for no feature the page uses.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import zmq

from ..errors import ConfigError, PipelineError
from ..sdk.subscriber import Subscriber
from .state import Board

__all__ = ["ViewerServer"]

log = logging.getLogger(__name__)

_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/index.html": ("index.html", "text/html; charset=utf-8"),
           "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8")}
_KEEPALIVE_S = 10.0


def _static(name: str) -> bytes:
    return resources.files("frametok.viewer").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in _STATIC:
            name, content_type = _STATIC[path]
            self._send(_static(name), content_type)
        elif path == "/events":
            self._events()
        elif path == "/state.json":
            snaps = self.server.board.changes({}, 0.0)
            self._send(json.dumps({"endpoint": self.server.endpoint, "streams": snaps}).encode(), "application/json")
        else:
            self._send(b"not found\n", "text/plain", HTTPStatus.NOT_FOUND)

    def _events(self) -> None:
        """Server-Sent Events: each stream's latest snapshot whenever it changed (newest wins)."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        board = self.server.board
        seen: dict[str, int] = {}
        hello = json.dumps({"endpoint": self.server.endpoint, "t_ms": time.time() * 1000})
        try:
            self.wfile.write(f"retry: 1000\nevent: hello\ndata: {hello}\n\n".encode())
            self.wfile.flush()
            while not board.closed:
                snaps = board.changes(seen, _KEEPALIVE_S)
                if not snaps:
                    self.wfile.write(b": keepalive\n\n")
                for snap in snaps:
                    self.wfile.write(b"event: stream\ndata: " + json.dumps(snap).encode() + b"\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return  # the browser went away


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], board: Board, endpoint: str) -> None:
        self.board, self.endpoint = board, endpoint
        super().__init__(address, _Handler)


class ViewerServer:
    """Subscribes to ``endpoint`` (one publisher or several) and serves the page on ``host:port`` (port 0:
    any free port)."""

    def __init__(self, endpoint: str | Sequence[str], host: str = "127.0.0.1", port: int = 8765,
                 streams: Iterable[str] | None = None) -> None:
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.endpoint = ", ".join(endpoints)
        self.board = Board()
        try:
            self.httpd = _HTTPServer((host, port), self.board, self.endpoint)
        except OSError as exc:
            raise PipelineError(f"view: cannot serve on {host}:{port}: {exc.strerror or exc} (port in use? --port)"
                                ) from exc
        self.host, self.port = host, int(self.httpd.server_address[1])
        self._stop = threading.Event()
        try:
            self._subscriber = Subscriber(endpoints, streams=streams, until_eos=False)
        except (zmq.ZMQError, ValueError) as exc:
            self.httpd.server_close()
            raise ConfigError(f"view: cannot subscribe to {self.endpoint!r}: {exc} (expected tcp://HOST:PORT or "
                              "ipc://PATH)") from exc
        self._threads = [threading.Thread(target=self._subscribe, name="frametok-view-sub", daemon=True),
                         threading.Thread(target=self.httpd.serve_forever, name="frametok-view-http", daemon=True)]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> ViewerServer:
        for thread in self._threads:
            thread.start()
        return self

    def _subscribe(self) -> None:
        sub = self._subscriber
        try:
            while not self._stop.is_set():
                msg = sub.recv(0.2)
                if msg is not None:
                    gaps = sub.gaps.get(msg.stream_id)
                    self.board.apply(msg, time.time_ns(), gaps.missing if gaps else 0)
        finally:
            sub.close()

    def wait(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        while not self._stop.wait(0.5):
            pass

    def close(self) -> None:
        self._stop.set()
        self.board.close()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(2.0)

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
