"""The message types packets carry, their checks, and the protocol's constants."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from ..grid import GridUpdate

if TYPE_CHECKING:
    import supervision as sv



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


