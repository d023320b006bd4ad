"""A producer's two sockets: frame notices to the worker, events (heartbeats, status) to the supervisor.

Sends retry while the receiver's queue is full and give up once the run stops. Wherever the producer
waits it calls :meth:`Outbox.tick`: a heartbeat at most once a second, and a look at the run's worker
epoch, so that a restarted worker is brought up to date (``on_new_worker``) before anything else reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from ..ipc.notices import EventNotice, RunContext

__all__ = ["Outbox"]

_LINGER_MS = 2000
_SEND_TIMEOUT_MS = 100
_BEAT_S = 1.0  # heartbeats to the supervisor, at most this often


class Outbox:
    def __init__(self, stream_id: str, run: RunContext, stop: Event, epoch: Any = None) -> None:
        self.stream_id, self.stop = stream_id, stop
        self.ctx = zmq.Context()
        self.frames_out = self.ctx.socket(zmq.PUSH)
        self.frames_out.setsockopt(zmq.LINGER, _LINGER_MS)
        self.frames_out.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
        self.frames_out.connect(run.frames_endpoint)
        self.events_out = self.ctx.socket(zmq.PUSH)
        self.events_out.setsockopt(zmq.LINGER, _LINGER_MS)
        self.events_out.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
        self.events_out.connect(run.events_endpoint)
        # worker restarts: ``epoch`` (a shared counter) changes when a new worker is ready
        self.epoch_value = epoch
        self.epoch = epoch.value if epoch is not None else 0
        self.on_new_worker: Callable[[], None] | None = None
        self._beat_at = 0.0

    def _send(self, sock: zmq.Socket[Any], obj: Any) -> bool:
        while True:
            try:
                sock.send_pyobj(obj)
                return True
            except zmq.Again:
                if self.stop.is_set():
                    return False
                if sock is self.frames_out:
                    self.beat()

    def send_frames(self, notice: Any) -> bool:
        """A notice to the worker as it is (no look at the epoch: the resync itself sends so)."""
        return self._send(self.frames_out, notice)

    def notify(self, notice: Any) -> None:
        """A notice to the worker, after bringing a new worker up to date."""
        self.check_worker()
        self._send(self.frames_out, notice)

    def event(self, event: str, **data: Any) -> None:
        self._send(self.events_out, EventNotice(self.stream_id, event, data))

    def beat(self) -> None:
        """A heartbeat for the supervisor (at most one a second): this process is not hung."""
        now = time.monotonic()
        if now - self._beat_at >= _BEAT_S:
            self._beat_at = now
            self._send(self.events_out, EventNotice(self.stream_id, "heartbeat", {}))

    def tick(self) -> None:
        """Called wherever the producer waits: a new worker to bring up to date, and a heartbeat."""
        self.check_worker()
        self.beat()

    def check_worker(self) -> None:
        if self.epoch_value is None or self.epoch_value.value == self.epoch:
            return
        self.epoch = self.epoch_value.value
        if self.on_new_worker is not None:
            self.on_new_worker()

    def close(self, stopping: bool) -> None:
        if stopping:  # the worker is stopping too: nothing it has not taken yet will be read
            self.frames_out.setsockopt(zmq.LINGER, 0)
        self.frames_out.close()
        self.events_out.close()
        self.ctx.term()
