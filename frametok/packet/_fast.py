"""The fast decoder (msgspec), and :func:`decode`: the fast path, or the reference decoder's word."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from ._decode import _code_grid, _decode_grid, _decode_reference
from ._encode import _TOPICS, _topic
from ._messages import (
    _DTYPES,
    _MAX_BYTES,
    _STREAM_ID,
    _WIRE_NAMES,
    MAX_BUFFERS,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    PROTOCOL_VERSION,
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
)

# --------------------------------------------------------------------------- the fast path
# msgspec parses and type-checks the header in one pass (integers are never 12.0 or true, NaN and
# Infinity are not JSON, unknown fields are skipped, the kind picks the schema); the rest of §9 is
# checked below. Whatever the fast path does not accept goes to the reference decoder, which accepts
# it or raises the ProtocolError of the first rule broken: the fast path only ever accepts what the
# reference accepts, with the same content (tests/test_packet.py holds the two to that on the fuzz cases).

_NonNeg = Annotated[int, msgspec.Meta(ge=0)]
_Pos = Annotated[int, msgspec.Meta(gt=0)]
_WireDtype = Literal["uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]


class _Descriptor(msgspec.Struct, gc=False):
    name: str
    dtype: _WireDtype
    shape: Annotated[list[_NonNeg], msgspec.Meta(max_length=MAX_NDIM)]


class _Head(msgspec.Struct, tag_field="kind", gc=False):
    v: Annotated[list[int], msgspec.Meta(min_length=2, max_length=2)]
    stream: str
    seq: _NonNeg
    buffers: Annotated[list[_Descriptor], msgspec.Meta(max_length=MAX_BUFFERS)]


class _TNs(msgspec.Struct, gc=False):
    capture: int = 0
    decode: int = 0
    infer: int = 0
    publish: int = 0


class _Grid(msgspec.Struct, gc=False):
    kind: Literal["key", "delta", "skip"]
    n: _NonNeg
    hw: Annotated[list[_Pos], msgspec.Meta(min_length=2, max_length=2)]


class _FrameHead(_Head, tag="frame", kw_only=True):
    frame: _NonNeg
    size_wh: Annotated[list[_Pos], msgspec.Meta(min_length=2, max_length=2)]
    t_ns: _TNs
    policy: Policy
    dropped: _NonNeg
    pts_s: float | None = None
    models: dict[str, str] | None = None
    grid: _Grid | None = None
    damaged: bool | None = None
    reused: bool | None = None


class _StatusHead(_Head, tag="status", kw_only=True):
    t_ns: int
    state: StatusState
    detail: str


class _EosHead(_Head, tag="eos", kw_only=True):
    frames: _NonNeg
    reason: EndReason
    detail: str


class _InfoHead(_Head, tag="info", kw_only=True):
    policy: Policy
    models: dict[str, Any]
    worker: _NonNeg | None = None
    streams: list[str] | None = None


_HEADER = msgspec.json.Decoder(_FrameHead | _StatusHead | _EosHead | _InfoHead)
_TOKEN_FLOATS = ("float16", "float32")
_FAST_DTYPES = {name: (dt, dt.itemsize) for name, dt in _DTYPES.items()}


_T = TypeVar("_T")


class _Slow(Exception):
    """The fast path cannot vouch for the message: the reference decoder decides."""


def _new(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of a frozen dataclass from checked fields, without ``__init__``/``__post_init__``."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def _fast_buffers(descriptors: list[_Descriptor], parts: Sequence[Any]) -> dict[str, NDArray[Any]]:
    if len(descriptors) != len(parts) - 2:
        raise _Slow
    out: dict[str, NDArray[Any]] = {}
    frombuffer = np.frombuffer
    for desc, part in zip(descriptors, parts[2:], strict=True):
        dtype, itemsize = _FAST_DTYPES[desc.dtype]
        shape = desc.shape
        arr = frombuffer(part, dtype=dtype)  # raises (-> reference) when not a buffer or not whole items
        if len(shape) == 1:
            if arr.size != shape[0]:
                raise _Slow
        else:
            arr = arr.reshape(shape)  # raises (-> reference) when the sizes differ
            if not arr.size and math.prod(d for d in shape if d) * itemsize >= _MAX_BYTES:
                raise _Slow
        name = desc.name
        if name in out:
            raise _Slow
        out[name] = arr
    return out


def _tok(buffers: Mapping[str, NDArray[Any]], name: str, ndim: int, dtypes: tuple[str, ...]) -> NDArray[Any] | None:
    arr = buffers.get(name)
    if arr is None:
        return None
    if arr.ndim != ndim or _WIRE_NAMES[arr.dtype] not in dtypes:
        raise _Slow
    return arr


def _fast_tokens(h: _FrameHead, buffers: dict[str, NDArray[Any]]) -> tuple[Any, ...]:
    """The soft tokens of a frame (and its grid update, preview), checked as the reference does."""
    ctx = _tok(buffers, "ctx", 1, _TOKEN_FLOATS)
    patches = _tok(buffers, "patches", 3, _TOKEN_FLOATS)
    update = None
    if h.grid is not None or "patch_index" in buffers or "patch_values" in buffers or "patch_bias" in buffers:
        grid = None if h.grid is None else {"kind": h.grid.kind, "n": h.grid.n, "hw": h.grid.hw}
        update = _decode_grid({"grid": grid}, buffers, patches)
    content = _tok(buffers, "content", 3, _TOKEN_FLOATS)
    qctx = _tok(buffers, "query_ctx", 2, _TOKEN_FLOATS)
    qscore = _tok(buffers, "query_score", 1, ("float32",))
    if (qctx is None) != (qscore is None) or (qctx is not None and qscore is not None
                                              and qscore.shape[0] != qctx.shape[0]):
        raise _Slow
    preview = _tok(buffers, "preview", 1, ("uint8",))
    codes = _code_grid(buffers, update, patches) if update is not None or "codes" in buffers \
        or "code_index" in buffers or "code_values" in buffers else None
    return ctx, patches, update, content, qctx, qscore, preview, codes


def _fast_frame(h: _FrameHead, buffers: dict[str, NDArray[Any]]) -> TokenPacket:
    detections = track = mask = None
    xyxy = buffers.get("det_xyxy")
    if xyxy is not None:
        score, cls, track = buffers.get("det_score"), buffers.get("det_class"), buffers.get("det_track")
        mask = buffers.get("det_mask")
        if score is None or cls is None:
            raise _Slow
        n = xyxy.shape[0]
        if xyxy.ndim != 2 or xyxy.shape[1] != 4 or xyxy.dtype is not _F32 or score.shape != (n,) \
                or score.dtype is not _F32 or cls.shape != (n,) or cls.dtype is not _I32 \
                or (track is not None and (track.shape != (n,) or track.dtype is not _I32)) \
                or (mask is not None and (mask.ndim != 3 or mask.shape[0] != n or mask.dtype is not _U8
                                          or not mask.shape[1] or not mask.shape[2])):
            raise _Slow
        detections = _new(Detections, {"xyxy": xyxy, "score": score, "class_id": cls, "track_id": track,
                                       "mask_bits": mask})
    ctx = patches = update = content = qctx = qscore = preview = codes = None
    if len(buffers) > (0 if detections is None else 3 + (track is not None) + (mask is not None)) \
            or h.grid is not None:
        ctx, patches, update, content, qctx, qscore, preview, codes = _fast_tokens(h, buffers)
    t = h.t_ns
    return _new(TokenPacket, {
        "stream_id": h.stream, "frame_index": h.frame, "pts_s": h.pts_s, "size_wh": (h.size_wh[0], h.size_wh[1]),
        "policy": h.policy, "dropped": h.dropped,
        "timestamps": _new(Timestamps, {"t_capture_ns": t.capture, "t_decode_ns": t.decode,
                                        "t_infer_ns": t.infer, "t_publish_ns": t.publish}),
        "detections": detections, "context_token": ctx, "patch_tokens": patches,
        "models": {} if h.models is None else h.models, "seq": h.seq, "grid_update": update,
        "content_tokens": content, "query_tokens": qctx, "query_scores": qscore,
        "preview_jpeg": None if preview is None else preview.tobytes(), "damaged": bool(h.damaged),
        "reused": bool(h.reused), "code_grid": codes,
    })


_F32 = _DTYPES["float32"]
_I32 = _DTYPES["int32"]
_U8 = _DTYPES["uint8"]


def _decode_fast(parts: Sequence[Any]) -> Message:
    head = _small_bytes(parts[1])
    if len(head) > MAX_HEADER_BYTES or (not head.isascii() and not _is_utf8(head)):
        raise _Slow
    h = _HEADER.decode(head)
    if h.v[0] != PROTOCOL_VERSION[0]:
        raise _Slow
    topic = _small_bytes(parts[0])
    if topic != _TOPICS.get(h.stream) and topic != _topic(h.stream):  # _topic raises on a bad id
        raise _Slow
    buffers = _fast_buffers(h.buffers, parts)
    if type(h) is _FrameHead:
        return _fast_frame(h, buffers)
    if buffers:
        raise _Slow
    if type(h) is _StatusHead:
        return _new(StatusMessage, {"stream_id": h.stream, "state": h.state, "detail": h.detail, "t_ns": h.t_ns,
                                    "seq": h.seq})
    if type(h) is _EosHead:
        return _new(EndOfStream, {"stream_id": h.stream, "frames": h.frames, "reason": h.reason, "detail": h.detail,
                                  "seq": h.seq})
    if type(h) is _InfoHead:
        streams = h.streams
        if streams is not None and (len(set(streams)) != len(streams)
                                    or not all(_STREAM_ID.fullmatch(s) for s in streams)):
            raise _Slow
        return _new(StreamInfo, {"stream_id": h.stream, "policy": h.policy, "models": h.models, "seq": h.seq,
                                 "worker": h.worker, "streams": None if streams is None else tuple(streams)})
    raise _Slow


def _small_bytes(part: Any) -> bytes:
    """A topic or header part as bytes (a zmq.Frame's are copied: they are small)."""
    if type(part) is bytes:
        return part
    if type(part) is memoryview:
        return part.tobytes()
    data = getattr(part, "bytes", None)  # zmq.Frame
    if type(data) is not bytes:
        raise _Slow
    return data


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode(parts: Sequence[Any]) -> Message:
    """Decode the frames of one multipart message; raise :class:`ProtocolError` if malformed.

    Buffers are zero-copy numpy views of the received frames. The checks are those of
    docs/protocol.md §9; a message that passes them on the fast path (msgspec) is returned from it,
    anything else is decided (and its error worded) by the reference decoder.
    """
    try:
        return _decode_fast(parts)
    except Exception:  # _Slow, msgspec's errors, a part that is no buffer, ...: let the reference decide
        return _decode_reference(parts)
