"""A worker's connection to the run's publisher process (the hub): it hands over messages to publish.

:meth:`HubFeed.publish` returns a local message id; :meth:`HubFeed.acked_below` says below which id the hub
holds every message (the worker then lets their frames' ring slots go). A send waits while the hub does not
read (it waits for a slow lossless subscriber's credit: back-pressure), calling ``on_wait`` meanwhile, so
the worker still sends its heartbeats. Subscribers joining reach the worker as keyframe requests
(``join_hooks``).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from ...config import PublisherConfig
from ...errors import PipelineError
from ...packet import Message, StreamInfo
from ...zmq_parts import send_parts
from ..ipc.hub import ACK, BATCH, HELLO, KEY, STATE, BatchStats, HubState, WorkerHello, pack_message

__all__ = ["HubFeed"]

_SEND_WAIT_MS = 100
_HELLO_TIMEOUT_S = 60.0
_SNDHWM = 64


class HubFeed:
    def __init__(self, ctx: zmq.Context[Any], endpoint: str, config: PublisherConfig, worker: int, attempt: int,
                 stop: Event) -> None:
        self.config, self.worker, self.attempt, self.stop = config, worker, attempt, stop
        self.socket: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"w{worker}.{attempt}".encode())
        self.socket.setsockopt(zmq.SNDHWM, _SNDHWM)
        self.socket.setsockopt(zmq.LINGER, 5000)  # what is queued still reaches the hub
        self.socket.connect(endpoint)
        self.join_hooks: list[Callable[[Sequence[bytes]], None]] = []
        self.on_wait: Callable[[], None] | None = None
        self.sent = 0  # the next local message id
        self._acked = 0
        self._state: HubState | None = None

    def _send(self, parts: list[Any]) -> None:
        while True:
            try:
                send_parts(self.socket, parts, zmq.NOBLOCK)
                return
            except zmq.Again:
                if self.stop.is_set():
                    raise PipelineError("stopped while the publisher process was not reading") from None
                self.socket.poll(_SEND_WAIT_MS, zmq.POLLOUT)
                self.poll()
                if self.on_wait is not None:
                    self.on_wait()

    def hello(self, infos: dict[str, StreamInfo]) -> HubState:
        """Say the worker is ready; what the hub already published of its streams."""
        self._send([HELLO, pickle.dumps(WorkerHello(self.worker, self.attempt, infos))])
        deadline = time.monotonic() + _HELLO_TIMEOUT_S
        while self._state is None:
            if self.stop.is_set() or time.monotonic() > deadline:
                raise PipelineError("the publisher process did not answer the worker's hello")
            self.poll(100)
            if self.on_wait is not None:
                self.on_wait()
        return self._state

    def publish(self, message: Message, whole: Any = None) -> int:
        """Hand ``message`` to the hub; its local id. (``whole``: the publisher's whole-grid variant for
        subscribers out of sync; the hub makes it itself from the grids it published.)"""
        message_id = self.sent
        self._send(pack_message(message_id, message))
        self.sent += 1
        return message_id

    def batch(self, stats: BatchStats) -> None:
        self._send([BATCH, pickle.dumps(stats)])

    def poll(self, timeout_ms: int = 0) -> int:
        """Take the hub's acks and keyframe requests waiting (or arriving within ``timeout_ms``)."""
        handled = 0
        while self.socket.poll(timeout_ms if handled == 0 else 0, zmq.POLLIN):
            parts = self.socket.recv_multipart()
            handled += 1
            kind = parts[0]
            if kind == ACK:
                self._acked = max(self._acked, int(parts[1]))
            elif kind == KEY:
                prefixes = pickle.loads(parts[1])
                for hook in self.join_hooks:
                    hook(prefixes)
            elif kind == STATE:
                self._state = pickle.loads(parts[1])
        return handled

    def acked_below(self) -> int:
        """The hub holds every message with a smaller local id."""
        return self._acked

    @property
    def all_acked(self) -> bool:
        return self._acked >= self.sent

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until the hub holds every message sent (it acked them all). A worker that exited sooner
        could leave its last messages, the end-of-stream among them, unread in the hub's queue when the
        run ends. False once stopped, or with ``timeout_s`` (a worker already stopping) once past it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.all_acked:
            if self.stop.is_set() if deadline is None else time.monotonic() > deadline:
                return False
            self.poll(_SEND_WAIT_MS)
            if self.on_wait is not None:
                self.on_wait()
        return True

    def close(self) -> None:
        self.socket.close()
