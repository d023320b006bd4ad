"""The publisher: one ZeroMQ XPUB socket that sends every message of every stream in order.

XPUB (rather than PUB) lets the publisher see subscriptions: it can hold the first packet until
``wait_subscribers`` subscriptions arrived, and it resends each stream's info message to a new
subscriber so that late joiners learn class names and token grids at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from ..config import PublisherConfig
from ..errors import PipelineError
from ..packet import Message, StreamInfo, encode, stamp, topic_for

__all__ = ["Publisher"]


class Publisher:
    """Assigns per-stream sequence numbers and sends encoded messages without copying buffers."""

    def __init__(self, ctx: zmq.Context[Any], config: PublisherConfig, infos: Mapping[str, StreamInfo]) -> None:
        self.config = config
        self.infos = dict(infos)
        self.subscriptions = 0
        self._seq: dict[str, int] = {}
        self.sent = 0
        self.bytes_sent = 0
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.SNDHWM, config.hwm)
        sock.setsockopt(zmq.LINGER, 2000)
        try:
            sock.bind(config.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise PipelineError(f"cannot publish on {config.endpoint}: {exc} (endpoint in use?)") from exc
        self.socket = sock

    def publish(self, message: Message) -> None:
        seq = self._seq.get(message.stream_id, 0)
        self._seq[message.stream_id] = seq + 1
        frames = encode(stamp(message, seq, time.time_ns()))
        self.socket.send_multipart(frames, copy=False)
        self.sent += 1
        self.bytes_sent += sum(len(f) if isinstance(f, bytes) else f.nbytes for f in frames)

    def poll_subscriptions(self, timeout_ms: int = 0) -> int:
        """Handle (un)subscriptions waiting on the socket; returns how many arrived."""
        handled = 0
        while self.socket.poll(timeout_ms if handled == 0 else 0, zmq.POLLIN):
            msg = self.socket.recv()
            handled += 1
            if not msg:
                continue
            if msg[0] == 1:
                self.subscriptions += 1
                self._send_infos(msg[1:])
            elif msg[0] == 0:
                self.subscriptions = max(0, self.subscriptions - 1)
        return handled

    def _send_infos(self, prefix: bytes) -> None:
        for stream_id, info in self.infos.items():
            if topic_for(stream_id).startswith(prefix):
                self.publish(info)

    def wait_for_subscribers(self, count: int, should_stop: Callable[[], bool]) -> bool:
        """Block until ``count`` subscriptions arrived; False if told to stop first."""
        while self.subscriptions < count:
            if should_stop():
                return False
            self.poll_subscriptions(100)
        return True

    def close(self) -> None:
        self.socket.close()
