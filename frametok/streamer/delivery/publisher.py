"""The publisher: sends every message of every stream, in order, to live and lossless subscribers.

* live: an XPUB socket at ``endpoint``. XPUB (rather than PUB) lets the publisher see
  subscriptions: it can hold the first packet until ``wait_subscribers`` arrived, and it resends each
  stream's info message to a new subscriber so that late joiners learn class names and grids at once.
  A slow live subscriber loses messages (its high-water mark), never slowing anyone else.
* lossless: an optional ROUTER socket at ``lossless_endpoint`` with credit-based flow control
  (see :mod:`.lossless`): a slow lossless subscriber back-pressures the pipeline instead. A lossless
  joiner's (or KEY's) first grid goes to it alone (the frame's whole-grid variant, same ``seq``).
* order: what a subscriber asks for (an info for a joiner) is answered only once the message being sent
  reached everyone, so that every subscriber sees each stream's ``seq`` go up by one.
* CURVE: with ``curve`` configured, both sockets encrypt and admit only authorized subscribers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ...config import PublisherConfig
from ...errors import PipelineError
from ...packet import Message, StreamInfo, TokenPacket, encode, topic_for
from ...zmq_parts import send_parts
from .lossless import LosslessRouter
from .security import server_curve, start_authenticator

__all__ = ["Publisher"]

_DRAIN_S = 30.0


def _bind(sock: zmq.Socket[Any], endpoint: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise PipelineError(f"cannot publish on {endpoint}: {exc} (endpoint in use?)") from exc


class Publisher:
    """Assigns per-stream sequence numbers and sends encoded messages without copying buffers."""

    def __init__(self, ctx: zmq.Context[Any], config: PublisherConfig, infos: Mapping[str, StreamInfo]) -> None:
        self.config = config
        self.infos = dict(infos)
        self.subscriptions = 0
        self._seq: dict[str, int] = {}
        # called with the topic prefixes a live subscriber joined (or resubscribed to: it wants a keyframe)
        self.join_hooks: list[Callable[[Sequence[bytes]], None]] = []
        self._answering = False
        self.sent_hooks: list[Callable[[Message, int, int], None]] = []  # (message, bytes, t_publish_ns)
        self.sent = 0
        self.bytes_sent = 0
        self._auth = start_authenticator(ctx, config.curve.authorized_keys) if config.curve else None
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.SNDHWM, config.hwm)
        sock.setsockopt(zmq.LINGER, 2000)
        if config.curve:
            server_curve(sock, config.curve.secret_key)
        _bind(sock, config.endpoint)
        self.socket = sock
        self.lossless: LosslessRouter | None = None
        if config.lossless_endpoint:
            router = ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 10_000)
            router.setsockopt(zmq.SNDHWM, 0)  # bounded by each subscriber's credit instead
            if config.curve:
                server_curve(router, config.curve.secret_key)
            _bind(router, config.lossless_endpoint)
            self.lossless = LosslessRouter(router, config.lossless_timeout_s, config.lossless_max_subscribers)

    @property
    def subscribers(self) -> int:
        """Live subscriptions plus lossless subscribers."""
        return self.subscriptions + (len(self.lossless.peers) if self.lossless else 0)

    def publish(self, message: Message, whole_grid: Callable[[], TokenPacket] | None = None) -> int:
        """Send ``message``; returns its lossless message id (-1 without a lossless endpoint). ``whole_grid``
        makes the same frame with its grid whole (a key), for lossless subscribers out of sync."""
        seq = self._seq.get(message.stream_id, 0)
        self._seq[message.stream_id] = seq + 1
        t_publish_ns = time.time_ns()
        frames = encode(message, seq, t_publish_ns)
        send_parts(self.socket, frames)
        message_id = -1
        if self.lossless is not None:
            update = message.grid_update if isinstance(message, TokenPacket) else None
            key_frames = None
            if update is not None and whole_grid is not None:
                def key_frames() -> list[Any]:
                    return encode(whole_grid(), seq, t_publish_ns)  # type: ignore[return-value]
            message_id = self.lossless.send(frames[0], frames, update.kind if update is not None else None,  # type: ignore[arg-type]
                                            key_frames)
        self.sent += 1
        nbytes = sum(len(f) if isinstance(f, bytes) else f.nbytes for f in frames)
        self.bytes_sent += nbytes
        for hook in self.sent_hooks:
            hook(message, nbytes, t_publish_ns)
        self._answer_joins()
        return message_id

    def _answer_joins(self) -> None:
        """Send the info lossless joiners wait for, now that no message is half sent."""
        if self.lossless is None or self._answering:
            return
        self._answering = True
        try:
            while self.lossless.joins:
                self._send_infos(self.lossless.joins.pop(0))
        finally:
            self._answering = False

    def poll_subscriptions(self, timeout_ms: int = 0) -> int:
        """Handle (un)subscriptions and lossless control messages waiting; returns how many."""
        handled = 0
        while self.socket.poll(timeout_ms if handled == 0 else 0, zmq.POLLIN):
            msg = self.socket.recv()
            handled += 1
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                self._on_join([msg[1:]])
            elif msg[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)
        if self.lossless is not None:
            handled += self.lossless.poll(0)
            self._answer_joins()
        return handled

    def _send_infos(self, prefixes: Sequence[bytes]) -> None:
        for stream_id, info in self.infos.items():
            topic = topic_for(stream_id)
            if any(topic.startswith(p) for p in prefixes):
                self.publish(info)

    def _on_join(self, prefixes: Sequence[bytes]) -> None:
        """A live subscriber joined (or asked to resync): send the streams' info, tell the hooks (a PUB
        socket cannot send to one subscriber: its keyframe goes to everyone)."""
        self._send_infos(prefixes)
        for hook in self.join_hooks:
            hook(prefixes)

    def wait_for_subscribers(self, count: int, should_stop: Callable[[], bool]) -> bool:
        """Block until ``count`` subscribers (live subscriptions or lossless) arrived; False if stopped."""
        while self.subscribers < count:
            if should_stop():
                return False
            self.poll_subscriptions(100)
        return True

    def close(self, drain_s: float = _DRAIN_S) -> None:
        """Close the sockets, first waiting up to ``drain_s`` for lossless subscribers to take what
        they were sent (a run stopped by the user drains briefly, one that ended drains fully)."""
        if self.lossless is not None:
            self.lossless.drain(drain_s)
            self.lossless.socket.close()
        self.socket.close()
        if self._auth is not None:
            self._auth.stop()
