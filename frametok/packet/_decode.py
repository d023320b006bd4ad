"""The reference decoder: every check of docs/protocol.md §9, in order, with its error."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ProtocolError
from ..grid import GridUpdate
from ._messages import (
    _BUFFER_DTYPES,
    _DTYPES,
    _MAX_BYTES,
    _WIRE_NAMES,
    MAX_BUFFERS,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    PROTOCOL_VERSION,
    Detections,
    EndOfStream,
    Message,
    StatusMessage,
    StreamInfo,
    Timestamps,
    TokenPacket,
    topic_for,
)


def _field(header: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if name not in header:
        if optional:
            return None
        raise ProtocolError(f"header: missing field {name!r}")
    value = header[name]
    if value is None and optional:
        return None
    # bool is an int subclass; never accept it where a number is expected
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError(f"header: field {name!r} expected {kind}, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(f"header: field {name!r} expected {kind}, got {type(value).__name__}")
    return value


def _nonneg_int(header: Mapping[str, Any], name: str) -> int:
    value = _field(header, name, int)
    if value < 0:
        raise ProtocolError(f"header: field {name!r} expected >= 0, got {value}")
    return int(value)


def _bytes_of(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame exposes .buffer
    try:
        return memoryview(buf).cast("B")
    except TypeError as exc:
        raise ProtocolError(f"message part of type {type(frame).__name__} is not a byte buffer") from exc


def _decode_buffers(header: Mapping[str, Any], parts: Sequence[Any]) -> dict[str, NDArray[Any]]:
    descriptors = _field(header, "buffers", list)
    if len(descriptors) > MAX_BUFFERS:
        raise ProtocolError(f"header: {len(descriptors)} buffers, at most {MAX_BUFFERS} allowed")
    if len(descriptors) != len(parts):
        raise ProtocolError(
            f"header describes {len(descriptors)} buffers but the message has {len(parts)} buffer parts"
        )
    out: dict[str, NDArray[Any]] = {}
    for i, (desc, part) in enumerate(zip(descriptors, parts, strict=True)):
        if not isinstance(desc, dict):
            raise ProtocolError(f"buffer {i}: descriptor must be an object, got {type(desc).__name__}")
        name = _field(desc, "name", str)
        dtype_name = _field(desc, "dtype", str)
        shape = _field(desc, "shape", list)
        if dtype_name not in _DTYPES:
            raise ProtocolError(f"buffer {name!r}: unknown dtype {dtype_name!r}")
        if len(shape) > MAX_NDIM or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ProtocolError(f"buffer {name!r}: bad shape {shape!r}")
        dtype = _DTYPES[dtype_name]
        if math.prod(d for d in shape if d) * dtype.itemsize >= _MAX_BYTES:
            raise ProtocolError(f"buffer {name!r}: shape {shape} is too large")
        data = _bytes_of(part)
        expected = math.prod(shape) * dtype.itemsize
        if expected != data.nbytes:
            raise ProtocolError(
                f"buffer {name!r}: shape {shape} of {dtype_name} needs {expected} bytes, got {data.nbytes}"
            )
        if name in out:
            raise ProtocolError(f"buffer {name!r} appears twice")
        out[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return out


def _expect(buffers: Mapping[str, NDArray[Any]], name: str, ndim: int, last: int | None = None) -> NDArray[Any]:
    arr = buffers[name]
    allowed = _BUFFER_DTYPES[name]
    if _WIRE_NAMES[arr.dtype] not in allowed:
        raise ProtocolError(f"buffer {name!r}: dtype {_WIRE_NAMES[arr.dtype]}, expected {' or '.join(allowed)}")
    if arr.ndim != ndim or (last is not None and arr.shape[-1] != last):
        want = f"{ndim} dims" + (f" ending in {last}" if last is not None else "")
        raise ProtocolError(f"buffer {name!r}: expected {want}, got shape {arr.shape}")
    return arr


def _decode_frame(header: Mapping[str, Any], buffers: Mapping[str, NDArray[Any]], seq: int) -> TokenPacket:
    size_wh = _field(header, "size_wh", list)
    if len(size_wh) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size_wh):
        raise ProtocolError(f"header: size_wh expected [width, height] > 0, got {size_wh!r}")
    t_ns = _field(header, "t_ns", dict)
    stamps = {}
    for key in ("capture", "decode", "infer", "publish"):
        value = t_ns.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"header: t_ns.{key} expected int, got {type(value).__name__}")
        stamps[f"t_{key}_ns"] = value
    models = _field(header, "models", dict, optional=True) or {}
    if not all(isinstance(v, str) for v in models.values()):
        raise ProtocolError("header: models expected an object of strings")
    detections = None
    if "det_xyxy" in buffers:
        missing = {"det_score", "det_class"} - set(buffers)
        if missing:
            raise ProtocolError(f"frame has det_xyxy but lacks {sorted(missing)}")
        try:
            detections = Detections(
                xyxy=_expect(buffers, "det_xyxy", 2, 4),
                score=_expect(buffers, "det_score", 1),
                class_id=_expect(buffers, "det_class", 1),
                track_id=_expect(buffers, "det_track", 1) if "det_track" in buffers else None,
                mask_bits=_expect(buffers, "det_mask", 3) if "det_mask" in buffers else None,
            )
        except ValueError as exc:
            raise ProtocolError(f"detections: {exc}") from exc
    pts = _field(header, "pts_s", (int, float), optional=True)
    if pts is not None:
        try:
            pts = float(pts)
        except OverflowError:
            pts = math.inf
        if not math.isfinite(pts):
            raise ProtocolError(f"header: pts_s must be a finite number, got {header['pts_s']!r}")
    policy = _field(header, "policy", str)
    patches = _expect(buffers, "patches", 3) if "patches" in buffers else None
    update = _decode_grid(header, buffers, patches)
    code_grid = _code_grid(buffers, update, patches)
    query = None
    if "query_ctx" in buffers or "query_score" in buffers:
        if "query_ctx" not in buffers or "query_score" not in buffers:
            raise ProtocolError("query_ctx and query_score go together")
        query = (_expect(buffers, "query_ctx", 2), _expect(buffers, "query_score", 1))
    try:
        return TokenPacket(
            stream_id=header["stream"],
            frame_index=_nonneg_int(header, "frame"),
            pts_s=pts,
            size_wh=(size_wh[0], size_wh[1]),
            policy=policy,
            dropped=_nonneg_int(header, "dropped"),
            timestamps=Timestamps(**stamps),
            detections=detections,
            context_token=_expect(buffers, "ctx", 1) if "ctx" in buffers else None,
            patch_tokens=patches,
            models=models,
            seq=seq,
            grid_update=update,
            content_tokens=_expect(buffers, "content", 3) if "content" in buffers else None,
            query_tokens=None if query is None else query[0],
            query_scores=None if query is None else query[1],
            preview_jpeg=_expect(buffers, "preview", 1).tobytes() if "preview" in buffers else None,
            damaged=bool(_field(header, "damaged", bool, optional=True)),
            reused=bool(_field(header, "reused", bool, optional=True)),
            code_grid=code_grid,
        )
    except ValueError as exc:
        raise ProtocolError(f"frame: {exc}") from exc


def _code_grid(buffers: Mapping[str, NDArray[Any]], update: GridUpdate | None,
               patches: NDArray[Any] | None) -> NDArray[Any] | None:
    """(1.2) The frame's whole code grid: ``codes`` without ``grid`` (its shape that of ``patches`` when both
    are there), or the one of a key or delta (``_decode_grid`` checked it); None when not sent whole."""
    if update is not None:
        return update.codes
    if "code_index" in buffers or "code_values" in buffers:
        raise ProtocolError("code_index/code_values without a grid field")
    if "codes" not in buffers:
        return None
    codes = _expect(buffers, "codes", 2)
    if patches is not None and codes.shape != patches.shape[:2]:
        raise ProtocolError(f"codes {codes.shape} do not match the patch grid {patches.shape[:2]}")
    if codes.size and int(codes.min()) < 0:
        raise ProtocolError(f"codes: expected codes >= 0, got {int(codes.min())}")
    return codes


def _grid_codes(kind: str, buffers: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any] | None]:
    """(1.2) A grid update's code buffers: ``codes`` (key or delta), or ``code_index`` + ``code_values`` (delta)."""
    has_delta = "code_index" in buffers or "code_values" in buffers
    if kind == "skip" and ("codes" in buffers or has_delta):
        raise ProtocolError("a skip grid update carries no code buffers")
    if has_delta and (kind != "delta" or "codes" in buffers or "code_index" not in buffers
                      or "code_values" not in buffers):
        raise ProtocolError("code_index and code_values come together, in a delta without codes")
    return {
        "codes": _expect(buffers, "codes", 2) if "codes" in buffers else None,
        "code_index": _expect(buffers, "code_index", 1) if has_delta else None,
        "code_values": _expect(buffers, "code_values", 1) if has_delta else None,
    }


def _decode_grid(
    header: Mapping[str, Any], buffers: Mapping[str, NDArray[Any]], patches: NDArray[Any] | None
) -> GridUpdate | None:
    """The ``grid`` field (protocol 1.1): a keyframe, a delta or a skip of the patch grid."""
    grid = _field(header, "grid", dict, optional=True)
    has_delta = "patch_index" in buffers or "patch_values" in buffers or "patch_bias" in buffers
    if grid is None:
        if has_delta:
            raise ProtocolError("patch_index/patch_values without a grid field")
        return None
    kind = _field(grid, "kind", str)
    n = _nonneg_int(grid, "n")
    hw = _field(grid, "hw", list)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ProtocolError(f"grid.hw expected [gh, gw] > 0, got {hw!r}")
    index = values = bias = None
    if kind == "key":
        if patches is None or has_delta:
            raise ProtocolError("a key grid update carries patches (and no patch_index/patch_values)")
        values = patches
    elif kind == "delta":
        if patches is not None or "patch_index" not in buffers or "patch_values" not in buffers:
            raise ProtocolError("a delta grid update carries patch_index and patch_values (and no patches)")
        index, values = _expect(buffers, "patch_index", 1), _expect(buffers, "patch_values", 2)
        bias = _expect(buffers, "patch_bias", 1) if "patch_bias" in buffers else None
    elif kind == "skip":
        if patches is not None or has_delta:
            raise ProtocolError("a skip grid update carries no patch buffers")
    else:
        raise ProtocolError(f"grid.kind expected key, delta or skip, got {kind!r}")
    codes = _grid_codes(kind, buffers)
    try:
        return GridUpdate(kind, n, (hw[0], hw[1]), index=index, values=values, bias=bias, **codes)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ProtocolError(f"grid: {exc}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_reference(parts: Sequence[Any]) -> Message:
    """The reference decoder: every check of docs/protocol.md §9 in order, with its error message."""
    if len(parts) < 2:
        raise ProtocolError(f"message has {len(parts)} parts, expected at least 2 (topic, header)")
    head = _bytes_of(parts[1])
    if head.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {head.nbytes} bytes, at most {MAX_HEADER_BYTES} allowed")
    try:
        header = json.loads(head.tobytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    version = _field(header, "v", list)
    if len(version) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in version):
        raise ProtocolError(f"header: v expected [major, minor], got {version!r}")
    if version[0] != PROTOCOL_VERSION[0]:
        raise ProtocolError(
            f"unsupported protocol major version {version[0]} (this decoder speaks {PROTOCOL_VERSION[0]}.x)"
        )
    stream_id = _field(header, "stream", str)
    try:
        expected_topic = topic_for(stream_id)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    if _bytes_of(parts[0]).tobytes() != expected_topic:
        raise ProtocolError(f"topic does not match stream id {stream_id!r}")
    seq = _nonneg_int(header, "seq")
    kind = _field(header, "kind", str)
    buffers = _decode_buffers(header, parts[2:])
    try:
        if kind == "frame":
            return _decode_frame(header, buffers, seq)
        if buffers:
            raise ProtocolError(f"a {kind!r} message carries no buffers, got {len(buffers)}")
        if kind == "status":
            t_ns = _field(header, "t_ns", int)
            return StatusMessage(stream_id, _field(header, "state", str), _field(header, "detail", str), t_ns, seq)
        if kind == "eos":
            return EndOfStream(
                stream_id, _nonneg_int(header, "frames"), _field(header, "reason", str),
                _field(header, "detail", str), seq,
            )
        if kind == "info":
            worker = _field(header, "worker", int, optional=True)
            if worker is not None and worker < 0:
                raise ValueError(f"worker: expected an integer >= 0, got {worker}")
            streams = _field(header, "streams", list, optional=True)
            return StreamInfo(stream_id, _field(header, "policy", str), _field(header, "models", dict), seq, worker,
                              None if streams is None else tuple(streams))
    except ValueError as exc:
        raise ProtocolError(f"{kind}: {exc}") from exc
    raise ProtocolError(f"unknown message kind {kind!r}")


