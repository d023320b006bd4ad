"""Token packets and their wire format: the only module that knows the byte layout.

A message is a ZeroMQ multipart message ``[topic, header, buffer, ...]``:

* ``topic``: the stream id in UTF-8 followed by ``/`` (so subscribing to ``cam1/`` never
  matches ``cam10/``);
* ``header``: a UTF-8 JSON object (schema version, kind, stream, sequence number, ... and
  one descriptor ``{name, dtype, shape}`` per following buffer);
* buffers: raw little-endian, C-ordered arrays, one frame each, in descriptor order.

``docs/protocol.md`` is the normative description; this module implements it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, TypeVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from .errors import ProtocolError
from .grid import GridUpdate

if TYPE_CHECKING:
    import supervision as sv

__all__ = [
    "BYE",
    "CREDIT",
    "HELLO",
    "KEY",
    "MAX_CREDIT",
    "PROTOCOL_VERSION",
    "Detections",
    "EndOfStream",
    "Message",
    "StatusMessage",
    "StreamInfo",
    "Timestamps",
    "TokenPacket",
    "decode",
    "encode",
    "stamp",
    "topic_for",
    "validate_stream_id",
]

PROTOCOL_VERSION: tuple[int, int] = (1, 3)

MAX_HEADER_BYTES = 1 << 20
MAX_BUFFERS = 64
MAX_NDIM = 4

# Lossless delivery's control messages, subscriber (DEALER) -> publisher (ROUTER), docs/protocol.md §8:
# [HELLO, json {"v", "streams", "credit"}], [CREDIT, ascii decimal n], [KEY, stream id], [BYE].
HELLO, CREDIT, KEY, BYE = b"HELLO", b"CREDIT", b"KEY", b"BYE"
MAX_CREDIT = 1 << 20

_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
}
# dtype (either byte order) -> wire name; a dict lookup is much cheaper than dtype.name
_WIRE_NAMES: dict[np.dtype[Any], str] = {
    **{dt: name for name, dt in _DTYPES.items()},
    **{dt.newbyteorder(">"): name for name, dt in _DTYPES.items()},
}

Policy = Literal["file", "live"]
StatusState = Literal["connecting", "online", "stalled", "reconnecting", "offline", "error"]
EndReason = Literal["end", "error", "stopped"]
STATUS_STATES: tuple[str, ...] = ("connecting", "online", "stalled", "reconnecting", "offline", "error")
END_REASONS: tuple[str, ...] = ("end", "error", "stopped")
POLICIES: tuple[str, ...] = ("file", "live")
_MAX_BYTES = 1 << 63
# the dtypes each known buffer may have on the wire (docs/protocol.md, section 5)
_BUFFER_DTYPES: dict[str, tuple[str, ...]] = {
    "det_xyxy": ("float32",),
    "det_score": ("float32",),
    "det_class": ("int32",),
    "det_track": ("int32",),
    "det_mask": ("uint8",),
    "ctx": ("float16", "float32"),
    "patches": ("float16", "float32"),
    "patch_index": ("int32",),
    "patch_values": ("float16", "float32"),
    "patch_bias": ("float16", "float32"),
    "content": ("float16", "float32"),
    "query_ctx": ("float16", "float32"),
    "query_score": ("float32",),
    "preview": ("uint8",),
    "codes": ("int16",),
    "code_index": ("int32",),
    "code_values": ("int16",),
}


def validate_stream_id(stream_id: str) -> str:
    """Return ``stream_id`` if it is a valid stream id, else raise ``ValueError``."""
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise ValueError(
            f"invalid stream id {stream_id!r}: expected 1-64 characters from "
            "[A-Za-z0-9_.-], starting with a letter or digit"
        )
    return stream_id


def topic_for(stream_id: str) -> bytes:
    """The ZeroMQ topic of a stream: its id followed by ``/``."""
    return validate_stream_id(stream_id).encode() + b"/"


def _as_array(value: Any, dtype: str, name: str) -> NDArray[Any]:
    try:
        return np.ascontiguousarray(value, dtype=_DTYPES[dtype])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be converted to {dtype}: {exc}") from exc


def _cells_along(lo: float, hi: float, pixels: int, cells: int) -> NDArray[np.intp]:
    """The mask cell of each pixel ``0 .. pixels - 1`` along one axis of a box ``[lo, hi)`` (docs/protocol.md
    §5.3): ``floor(((p + 0.5) - lo) * cells / (hi - lo))`` in double precision for a pixel whose centre
    ``p + 0.5`` lies in ``[lo, hi)`` (at most ``cells - 1``), -1 for the others."""
    lo64, hi64 = float(lo), float(hi)
    out = np.full(pixels, -1, np.intp)
    if not hi64 > lo64:  # no area (or NaN): no pixel
        return out
    centre = np.arange(pixels, dtype=np.float64) + 0.5
    inside = (centre >= lo64) & (centre < hi64)
    cell = np.floor((centre[inside] - lo64) * cells / (hi64 - lo64))
    out[inside] = np.minimum(cell, cells - 1).astype(np.intp)
    return out


@dataclass(frozen=True)
class Detections:
    """Hard tokens of one frame: ``N`` boxes in source-frame pixels.

    ``xyxy`` is ``(N, 4)`` float32, ``score`` ``(N,)`` float32, ``class_id`` ``(N,)`` int32 and
    ``track_id`` ``(N,)`` int32 (-1 where untracked) or ``None`` when no tracker ran.
    ``mask_bits`` (1.3, a segmentation model): ``(N, mh, mw / 8)`` uint8, each box's instance mask as an
    ``mh x mw`` grid of cells over the box, bit-packed (docs/protocol.md §5.3); None without masks. Read it in
    source-frame pixels with :meth:`frame_mask` and :meth:`mask_areas`, or per cell with :meth:`box_masks`.
    """

    xyxy: NDArray[np.float32]
    score: NDArray[np.float32]
    class_id: NDArray[np.int32]
    track_id: NDArray[np.int32] | None = None
    mask_bits: NDArray[np.uint8] | None = None

    def __post_init__(self) -> None:
        xyxy = _as_array(self.xyxy, "float32", "xyxy")
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy: expected shape (N, 4), got {xyxy.shape}")
        n = xyxy.shape[0]
        object.__setattr__(self, "xyxy", xyxy)
        for name, dtype in (("score", "float32"), ("class_id", "int32"), ("track_id", "int32")):
            value = getattr(self, name)
            if value is None and name == "track_id":
                continue
            arr = _as_array(value, dtype, name)
            if arr.shape != (n,):
                raise ValueError(f"{name}: expected shape ({n},) to match xyxy, got {arr.shape}")
            object.__setattr__(self, name, arr)
        if self.mask_bits is not None:
            bits = self.mask_bits
            if not isinstance(bits, np.ndarray) or bits.dtype != np.uint8:
                raise ValueError(f"mask_bits: expected a uint8 array, got {getattr(bits, 'dtype', type(bits))}")
            if bits.ndim != 3 or bits.shape[0] != n or min(bits.shape[1:]) <= 0:
                raise ValueError(f"mask_bits: expected shape ({n}, mh, mw / 8) with mh, mw > 0, got {bits.shape}")

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(cls, mask_hw: tuple[int, int] | None = None) -> Detections:
        """No detection; with ``mask_hw`` those of a segmentation model (``mask_bits`` of shape (0, mh, mw / 8))."""
        bits = None if mask_hw is None else np.zeros((0, mask_hw[0], mask_hw[1] // 8), np.uint8)
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), mask_bits=bits)

    @property
    def mask_hw(self) -> tuple[int, int] | None:
        """(mh, mw): the cells of each box's mask (mw = 8 x the bytes of a row); None without masks."""
        if self.mask_bits is None:
            return None
        return int(self.mask_bits.shape[1]), 8 * int(self.mask_bits.shape[2])

    def box_masks(self) -> NDArray[np.bool_]:
        """``(N, mh, mw)``: cell ``(r, c)`` of box ``i``'s mask (unpacked, most significant bit first)."""
        if self.mask_bits is None:
            raise ValueError("these detections have no masks (mask_bits is None: not a segmentation model)")
        return np.unpackbits(self.mask_bits, axis=-1).astype(bool)

    def _pixel_cells(self, i: int, size_wh: tuple[int, int]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """Each frame row's and column's mask cell in box ``i`` (-1 outside it)."""
        mh, mw = self.mask_hw or (0, 0)
        x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
        return _cells_along(y1, y2, int(size_wh[1]), mh), _cells_along(x1, x2, int(size_wh[0]), mw)

    def frame_mask(self, i: int, size_wh: tuple[int, int]) -> NDArray[np.bool_]:
        """Detection ``i``'s mask in source-frame pixels: ``(H, W)`` bool of a ``size_wh`` (W, H) frame (the
        packet's ``size_wh``), pixel ``(y, x)`` set when its centre lies in the box and in a set cell (§5.3)."""
        cells = self.box_masks()[i]
        rows, cols = self._pixel_cells(i, size_wh)
        out = np.zeros((int(size_wh[1]), int(size_wh[0])), bool)
        ys, xs = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
        if len(ys) and len(xs):
            out[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = cells[np.ix_(rows[ys], cols[xs])]
        return out

    def mask_areas(self, size_wh: tuple[int, int]) -> NDArray[np.int64]:
        """``(N,)``: each mask's area in source-frame pixels (the set pixels of :meth:`frame_mask`)."""
        cells = self.box_masks().astype(np.int64)
        mh, mw = cells.shape[1:] if cells.ndim == 3 else (0, 0)
        out = np.zeros(len(self), np.int64)
        for i in range(len(self)):
            rows, cols = self._pixel_cells(i, size_wh)
            per_row = np.bincount(rows[rows >= 0], minlength=mh)
            per_col = np.bincount(cols[cols >= 0], minlength=mw)
            out[i] = int(per_row @ cells[i] @ per_col)
        return out

    def to_supervision(self, class_names: Sequence[str] = (), size_wh: tuple[int, int] | None = None) -> sv.Detections:
        """These detections as a ``supervision.Detections`` (to draw, filter, count with supervision).

        ``xyxy``, ``confidence``, ``class_id``, ``tracker_id`` (None when no tracker ran; -1 where a box is
        untracked, which supervision's zones and counters ignore), ``mask`` (``(N, H, W)`` bool in source-frame
        pixels, :meth:`frame_mask`, when there are masks and ``size_wh`` (the packet's) is given; else None) and
        ``data["class_name"]`` (from
        ``class_names``, e.g. :meth:`StreamInfo.class_names`; the id as text where it has no name). The
        arrays are copies (a decoded packet's are read-only views of the message). supervision is
        imported here, not with frametok: a subscriber that does not convert does not need it.
        """
        import supervision as sv

        class_id = self.class_id.astype(np.int64)
        names = np.array([class_names[c] if 0 <= c < len(class_names) else str(c) for c in class_id.tolist()],
                         dtype=str)
        return sv.Detections(
            xyxy=self.xyxy.astype(np.float32, copy=True),
            mask=None if self.mask_bits is None or size_wh is None or not len(self)
            else np.stack([self.frame_mask(i, size_wh) for i in range(len(self))]),
            confidence=self.score.astype(np.float32, copy=True),
            class_id=class_id,
            tracker_id=None if self.track_id is None else self.track_id.astype(np.int64),
            data={"class_name": names},
        )


@dataclass(frozen=True)
class Timestamps:
    """Wall-clock times (``time.time_ns()``) of a frame's stages; 0 where not measured."""

    t_capture_ns: int = 0
    t_decode_ns: int = 0
    t_infer_ns: int = 0
    t_publish_ns: int = 0


@dataclass(frozen=True)
class TokenPacket:
    """The tokens of one frame of one stream.

    Hard tokens: ``detections``. Soft tokens: ``context_token`` (D,), ``content_tokens`` (p, p, D),
    ``query_tokens`` (Q, D) with their ``query_scores`` (Q,), and ``patch_tokens`` (gh, gw, D): the
    full grid, when known. With cross-frame compression ``grid_update`` carries what was sent (a
    keyframe, a delta, or a skip); a delta packet decodes with ``patch_tokens=None`` and the
    :class:`~frametok.Subscriber` rebuilds the grid. (1.2) ``code_grid`` (gh, gw) int16: the frame's grid hard
    tokens (each patch token's code in a codebook), when known: sent whole, or rebuilt by the Subscriber from
    the code changes a delta carries (``grid_update.code_index``/``code_values``).
    """

    stream_id: str
    frame_index: int
    pts_s: float | None
    size_wh: tuple[int, int]
    policy: Policy = "file"
    dropped: int = 0
    timestamps: Timestamps = field(default_factory=Timestamps)
    detections: Detections | None = None
    context_token: NDArray[Any] | None = None
    patch_tokens: NDArray[Any] | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    seq: int = -1
    grid_update: GridUpdate | None = None
    content_tokens: NDArray[Any] | None = None
    query_tokens: NDArray[Any] | None = None
    query_scores: NDArray[Any] | None = None
    preview_jpeg: bytes | None = None
    damaged: bool = False  # (1.2) the source's data for this frame was damaged: its pixels may be partly wrong
    reused: bool = False  # (1.2) a still frame (motion gating): the models did not run, its tokens are the last ones
    code_grid: NDArray[Any] | None = None  # (1.2) the (gh, gw) int16 code grid (codebook codes), when known

    def __post_init__(self) -> None:
        validate_stream_id(self.stream_id)
        if self.frame_index < 0:
            raise ValueError(f"frame_index: expected >= 0, got {self.frame_index}")
        if len(self.size_wh) != 2 or min(self.size_wh) <= 0:
            raise ValueError(f"size_wh: expected (width, height) > 0, got {self.size_wh}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: expected 'file' or 'live', got {self.policy!r}")
        if self.context_token is not None and np.ndim(self.context_token) != 1:
            raise ValueError(f"context_token: expected shape (D,), got {np.shape(self.context_token)}")
        if self.patch_tokens is not None and np.ndim(self.patch_tokens) != 3:
            raise ValueError(f"patch_tokens: expected shape (H, W, D), got {np.shape(self.patch_tokens)}")
        if self.code_grid is not None and np.ndim(self.code_grid) != 2:
            raise ValueError(f"code_grid: expected shape (gh, gw), got {np.shape(self.code_grid)}")
        if self.content_tokens is not None and np.ndim(self.content_tokens) != 3:
            raise ValueError(f"content_tokens: expected shape (p, p, D), got {np.shape(self.content_tokens)}")
        if (self.query_tokens is None) != (self.query_scores is None):
            raise ValueError("query_tokens and query_scores go together")
        if self.query_tokens is not None and self.query_scores is not None:
            q = np.shape(self.query_tokens)
            if len(q) != 2 or np.shape(self.query_scores) != (q[0],):
                raise ValueError(f"query tokens (Q, D) and scores (Q,): got {q} and {np.shape(self.query_scores)}")
        object.__setattr__(self, "size_wh", (int(self.size_wh[0]), int(self.size_wh[1])))


@dataclass(frozen=True)
class StatusMessage:
    """A change of a source's state (connecting, online, stalled, reconnecting, offline, error)."""

    stream_id: str
    state: StatusState
    detail: str = ""
    t_ns: int = 0
    seq: int = -1

    def __post_init__(self) -> None:
        validate_stream_id(self.stream_id)
        if self.state not in STATUS_STATES:
            raise ValueError(f"state: expected one of {STATUS_STATES}, got {self.state!r}")


@dataclass(frozen=True)
class EndOfStream:
    """The last message of a stream: ``frames`` frame packets were sent before it."""

    stream_id: str
    frames: int
    reason: EndReason = "end"
    detail: str = ""
    seq: int = -1

    def __post_init__(self) -> None:
        validate_stream_id(self.stream_id)
        if self.reason not in END_REASONS:
            raise ValueError(f"reason: expected one of {END_REASONS}, got {self.reason!r}")


@dataclass(frozen=True)
class StreamInfo:
    """What a subscriber needs to interpret a stream's packets: its models (class names, grid)."""

    stream_id: str
    policy: Policy = "file"
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seq: int = -1
    worker: int | None = None  # (1.2) the index of the worker that serves the stream
    streams: tuple[str, ...] | None = None  # (1.2) the ids of every stream the publisher serves (its run's)

    def __post_init__(self) -> None:
        validate_stream_id(self.stream_id)
        if self.policy not in POLICIES:
            raise ValueError(f"policy: expected 'file' or 'live', got {self.policy!r}")
        if self.worker is not None and (not isinstance(self.worker, int) or self.worker < 0):
            raise ValueError(f"worker: expected an integer >= 0, got {self.worker!r}")
        if self.streams is not None:
            for sid in self.streams:
                validate_stream_id(sid)
            if len(set(self.streams)) != len(self.streams):
                raise ValueError(f"streams: a stream id appears twice in {list(self.streams)!r:.200}")

    def class_names(self) -> list[str]:
        """Class names of the stream's detector (empty when it has none or they are malformed)."""
        det = self.models.get("detector")
        names = det.get("class_names") if isinstance(det, Mapping) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return []
        return list(names)


Message: TypeAlias = TokenPacket | StatusMessage | EndOfStream | StreamInfo


def stamp(message: Message, seq: int, t_publish_ns: int | None = None) -> Message:
    """Return ``message`` with its sequence number (and, for packets, publish time) set."""
    if isinstance(message, TokenPacket):
        ts = replace(message.timestamps, t_publish_ns=t_publish_ns or time.time_ns())
        return replace(message, seq=seq, timestamps=ts)
    return replace(message, seq=seq)


# --------------------------------------------------------------------------- encoding


def _buffer(name: str, array: NDArray[Any]) -> tuple[dict[str, Any], memoryview]:
    dtype_name = _WIRE_NAMES.get(array.dtype)
    if dtype_name is None:
        raise ValueError(f"buffer {name!r}: dtype {array.dtype} is not allowed on the wire")
    if array.dtype is _DTYPES[dtype_name] and array.flags.c_contiguous and array.size:
        return {"name": name, "dtype": dtype_name, "shape": list(array.shape)}, memoryview(array).cast("B")  # type: ignore[arg-type]
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
    header: dict[str, Any] = {"v": list(PROTOCOL_VERSION), "stream": message.stream_id, "seq": seq}
    arrays: list[tuple[str, NDArray[Any]]] = []
    if isinstance(message, TokenPacket):
        ts = message.timestamps
        header.update(
            kind="frame",
            frame=message.frame_index,
            pts_s=message.pts_s,
            size_wh=list(message.size_wh),
            policy=message.policy,
            dropped=message.dropped,
            t_ns={
                "capture": ts.t_capture_ns,
                "decode": ts.t_decode_ns,
                "infer": ts.t_infer_ns,
                "publish": ts.t_publish_ns if t_publish_ns is None else t_publish_ns,
            },
            models=dict(message.models),
        )
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
        header.update(kind="status", state=message.state, detail=message.detail, t_ns=message.t_ns)
    elif isinstance(message, EndOfStream):
        header.update(kind="eos", frames=message.frames, reason=message.reason, detail=message.detail)
    elif isinstance(message, StreamInfo):
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


# --------------------------------------------------------------------------- decoding


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
    for desc, part in zip(descriptors, parts[2:], strict=True):
        dtype, itemsize = _FAST_DTYPES[desc.dtype]
        shape = desc.shape
        arr = np.frombuffer(part, dtype=dtype)  # raises (-> reference) when not a buffer or not whole items
        count = shape[0] if len(shape) == 1 else math.prod(shape)
        if arr.size != count or (count == 0 and math.prod(d for d in shape if d) * itemsize >= _MAX_BYTES):
            raise _Slow
        if desc.name in out:
            raise _Slow
        out[desc.name] = arr.reshape(shape) if len(shape) != 1 else arr
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
