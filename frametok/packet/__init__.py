"""Token packets and their wire format: the only package that knows the byte layout.

A message is a ZeroMQ multipart message ``[topic, header, buffer, ...]``:

* ``topic``: the stream id in UTF-8 followed by ``/`` (so subscribing to ``cam1/`` never
  matches ``cam10/``);
* ``header``: a UTF-8 JSON object (schema version, kind, stream, sequence number, ... and
  one descriptor ``{name, dtype, shape}`` per following buffer);
* buffers: raw little-endian, C-ordered arrays, one frame each, in descriptor order.

``docs/protocol.md`` is the normative description; this package implements it: the message types
(``_messages``), encoding (``_encode``), the reference decoder with every check of §9 (``_decode``) and the
fast decoder that :func:`decode` tries first (``_fast``).
"""

from __future__ import annotations

from ._encode import encode
from ._fast import decode
from ._messages import (
    BYE,
    CREDIT,
    END_REASONS,
    HELLO,
    KEY,
    MAX_BUFFERS,
    MAX_CREDIT,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    POLICIES,
    PROTOCOL_VERSION,
    STATUS_STATES,
    Detections,
    EndOfStream,
    EndReason,
    Message,
    Policy,
    StatusMessage,
    StatusState,
    StreamInfo,
    Timestamps,
    TokenPacket,
    stamp,
    topic_for,
    validate_stream_id,
)

__all__ = [
    "BYE",
    "CREDIT",
    "END_REASONS",
    "HELLO",
    "KEY",
    "MAX_BUFFERS",
    "MAX_CREDIT",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "POLICIES",
    "PROTOCOL_VERSION",
    "STATUS_STATES",
    "Detections",
    "EndOfStream",
    "EndReason",
    "Message",
    "Policy",
    "StatusMessage",
    "StatusState",
    "StreamInfo",
    "Timestamps",
    "TokenPacket",
    "decode",
    "encode",
    "stamp",
    "topic_for",
    "validate_stream_id",
]
