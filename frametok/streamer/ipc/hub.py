"""What crosses between the workers and the run's publisher process (the hub), over one DEALER/ROUTER pair.

Worker -> hub, each a multipart message:

* ``[HELLO, pickle(WorkerHello)]``: a worker (or a restarted one) is ready; the hub answers ``STATE``;
* ``[MESSAGE, ascii local id, pickle payload, *buffers]``: one message to publish (pickle protocol 5: the
  arrays travel as their own parts, never copied into the pickle);
* ``[BATCH, pickle(BatchStats)]``: what a batch cost, for the run's metrics.

Hub -> worker: ``[STATE, pickle(HubState)]`` (what the hub already published of the worker's streams),
``[ACK, ascii n]`` (every message of this worker with a local id below ``n`` is the hub's now: its ring slot
may go back to the producer), ``[KEY, pickle(list of topic prefixes)]`` (subscribers joined or lost sync:
the next grid of those streams is a keyframe).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from ...packet import Message, StreamInfo

__all__ = ["ACK", "BATCH", "HELLO", "KEY", "MESSAGE", "STATE", "BatchStats", "HubState", "WorkerHello",
           "pack_message", "unpack_message"]

HELLO, MESSAGE, BATCH, STATE, ACK, KEY = b"H", b"M", b"B", b"S", b"A", b"K"


@dataclass(frozen=True)
class WorkerHello:
    worker: int
    attempt: int
    infos: dict[str, StreamInfo]  # the worker's streams, with its models


@dataclass(frozen=True)
class HubState:
    """Per stream of the worker: the frame index last published, frame packets published, ended or not, the
    highest track id published (a restarted worker's tracker goes on above it: ids are never reused)."""

    last_frames: dict[str, int] = field(default_factory=dict)
    packets: dict[str, int] = field(default_factory=dict)
    ended: frozenset[str] = frozenset()
    max_track_ids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchStats:
    worker: int
    frames: int
    detector_s: float | None
    encoder_s: float | None
    queues: dict[str, int]  # stream -> frames waiting in its ring
    discarded: dict[str, int]  # stream -> frames overwritten while read (cumulative)


def pack_message(local_id: int, message: Message) -> list[Any]:
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    return [MESSAGE, str(local_id).encode(), payload, *(b.raw() for b in buffers)]


def unpack_message(parts: list[Any]) -> tuple[int, Message]:
    """``parts``: a MESSAGE without its identity frame (zmq Frames or bytes)."""
    local_id = int(bytes(parts[1]))
    message = pickle.loads(parts[2], buffers=[p.buffer if hasattr(p, "buffer") else p for p in parts[3:]])
    return local_id, message
