"""Encoding a message into the frames of one multipart ZeroMQ message."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from ._messages import (
    _DTYPES,
    _WIRE_NAMES,
    PROTOCOL_VERSION,
    EndOfStream,
    Message,
    StatusMessage,
    StreamInfo,
    TokenPacket,
    topic_for,
)

# dtype -> wire name, for the dtypes whose bytes go on the wire as they are (little-endian ones: equal dtypes
# have equal hashes, so one lookup answers both "allowed?" and "in wire byte order?")
_AS_IS: dict[np.dtype[Any], str] = {dt: name for name, dt in _DTYPES.items()}


def _buffer(name: str, array: NDArray[Any]) -> tuple[dict[str, Any], memoryview]:
    dtype_name = _AS_IS.get(array.dtype)
    if dtype_name is not None and array.flags.c_contiguous and array.size:
        return {"name": name, "dtype": dtype_name, "shape": list(array.shape)}, memoryview(array).cast("B")  # type: ignore[arg-type]
    dtype_name = _WIRE_NAMES.get(array.dtype)
    if dtype_name is None:
        raise ValueError(f"buffer {name!r}: dtype {array.dtype} is not allowed on the wire")
    arr = np.ascontiguousarray(array, dtype=_DTYPES[dtype_name])
    return {"name": name, "dtype": dtype_name, "shape": list(arr.shape)}, memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


_TOPICS: dict[str, bytes] = {}  # stream id -> topic, for ids seen valid (bounded)
_json_encode = msgspec.json.encode


def _topic(stream_id: str) -> bytes:
    topic = _TOPICS.get(stream_id) if isinstance(stream_id, str) else None
    if topic is None:
        topic = topic_for(stream_id)
        if len(_TOPICS) < 4096:
            _TOPICS[stream_id] = topic
    return topic


def _dump_header(header: dict[str, Any]) -> bytes:
    """Compact JSON, byte for byte what ``json.dumps(header, separators=(",", ":"), allow_nan=False)``
    writes (non-ASCII and DEL escaped), by msgspec where that is the same (ASCII text, no float but
    ``pts_s``), else by json."""
    pts = header.get("pts_s")
    fast = True
    if pts is not None:  # json writes floats with float.__repr__ (msgspec's shortest form may differ: 1e+16)
        if type(pts) is float and math.isfinite(pts):
            header["pts_s"] = msgspec.Raw(float.__repr__(pts).encode())
        elif type(pts) is int:
            header["pts_s"] = msgspec.Raw(int.__repr__(pts).encode())
        else:
            fast = False
    if fast:
        try:
            head = _json_encode(header)
        except (TypeError, ValueError, OverflowError):
            head = b"\x7f"
        if head.isascii() and b"\x7f" not in head:
            return head
        if pts is not None:
            header["pts_s"] = pts
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def encode(
    message: Message, seq: int | None = None, t_publish_ns: int | None = None
) -> list[bytes | memoryview]:
    """Encode a message into the frames of one multipart ZeroMQ message (buffers not copied).

    ``seq`` and ``t_publish_ns`` override the message's own (the publisher's fast path: the same as
    encoding ``stamp(message, seq, t_publish_ns)``). A message must end up with a sequence number.
    """
    seq = message.seq if seq is None else seq
    if seq < 0:
        raise ValueError(f"{type(message).__name__} has no sequence number (seq={seq}); stamp() it first")
    arrays: list[tuple[str, NDArray[Any]]] = []
    if isinstance(message, TokenPacket):
        ts = message.timestamps
        header: dict[str, Any] = {  # one literal: the fields in the order they always had
            "v": list(PROTOCOL_VERSION), "stream": message.stream_id, "seq": seq,
            "kind": "frame",
            "frame": message.frame_index,
            "pts_s": message.pts_s,
            "size_wh": list(message.size_wh),
            "policy": message.policy,
            "dropped": message.dropped,
            "t_ns": {
                "capture": ts.t_capture_ns,
                "decode": ts.t_decode_ns,
                "infer": ts.t_infer_ns,
                "publish": ts.t_publish_ns if t_publish_ns is None else t_publish_ns,
            },
            "models": dict(message.models),
        }
        if message.damaged:
            header["damaged"] = True
        if message.reused:
            header["reused"] = True
        det = message.detections
        if det is not None:
            arrays += [("det_xyxy", det.xyxy), ("det_score", det.score), ("det_class", det.class_id)]
            if det.track_id is not None:
                arrays.append(("det_track", det.track_id))
            if det.mask_bits is not None:
                arrays.append(("det_mask", det.mask_bits))
        if message.context_token is not None:
            arrays.append(("ctx", message.context_token))
        update = message.grid_update
        if update is not None:
            header["grid"] = {"kind": update.kind, "n": update.n, "hw": list(update.grid_hw)}
            if update.kind == "key":
                arrays.append(("patches", update.values))  # type: ignore[arg-type]
            elif update.kind == "delta":
                arrays += [("patch_index", update.index), ("patch_values", update.values)]  # type: ignore[list-item]
                if update.bias is not None:
                    arrays.append(("patch_bias", update.bias))
            if update.codes is not None:
                arrays.append(("codes", update.codes))
            elif update.code_index is not None and update.code_values is not None:
                arrays += [("code_index", update.code_index), ("code_values", update.code_values)]
        else:
            if message.patch_tokens is not None:
                arrays.append(("patches", message.patch_tokens))
            if message.code_grid is not None:
                arrays.append(("codes", message.code_grid))
        if message.content_tokens is not None:
            arrays.append(("content", message.content_tokens))
        if message.query_tokens is not None and message.query_scores is not None:
            arrays += [("query_ctx", message.query_tokens), ("query_score", message.query_scores)]
        if message.preview_jpeg is not None:
            arrays.append(("preview", np.frombuffer(message.preview_jpeg, np.uint8)))
    elif isinstance(message, StatusMessage):
        header = {"v": list(PROTOCOL_VERSION), "stream": message.stream_id, "seq": seq}
        header.update(kind="status", state=message.state, detail=message.detail, t_ns=message.t_ns)
    elif isinstance(message, EndOfStream):
        header = {"v": list(PROTOCOL_VERSION), "stream": message.stream_id, "seq": seq}
        header.update(kind="eos", frames=message.frames, reason=message.reason, detail=message.detail)
    elif isinstance(message, StreamInfo):
        header = {"v": list(PROTOCOL_VERSION), "stream": message.stream_id, "seq": seq}
        header.update(kind="info", policy=message.policy, models=_jsonable(message.models))
        if message.worker is not None:
            header["worker"] = message.worker
        if message.streams is not None:
            header["streams"] = list(message.streams)
    else:
        raise TypeError(f"cannot encode {type(message).__name__}")
    descriptors: list[dict[str, Any]] = []
    frames: list[bytes | memoryview] = []
    for name, array in arrays:
        desc, view = _buffer(name, array)
        descriptors.append(desc)
        frames.append(view)
    header["buffers"] = descriptors
    # info messages (free-form models, floats) keep json's writer; the others have no float but pts_s
    head = _dump_header(header) if not isinstance(message, StreamInfo) \
        else json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return [_topic(message.stream_id), head, *frames]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


