"""An independent decoder of frametok wire protocol 1.3, written from ``docs/protocol.md`` only.

It deliberately does not import frametok: it checks that the document is enough to write a
decoder, and that ``frametok.packet`` agrees with it. ``read(parts)`` returns the decoded content
in the form of the test vectors (``docs/protocol-vectors/README.md``) or raises
:class:`Malformed` with the code of the rule (``docs/protocol.md`` §9) the message breaks.

Where the document lets a decoder choose (repeated JSON keys, integers beyond 64 bits), this
reader takes the strict option.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

MAJOR = 1
MAX_HEADER_BYTES = 1_048_576
MAX_BUFFERS = 64
MAX_NDIM = 4
INT64 = (-(2**63), 2**63 - 1)

STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
DTYPES = {  # name -> little-endian numpy dtype
    "uint8": np.dtype("<u1"), "int8": np.dtype("<i1"), "int16": np.dtype("<i2"), "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"), "float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "float64": np.dtype("<f8"),
}
POLICIES = ("file", "live")
STATES = ("connecting", "online", "stalled", "reconnecting", "offline", "error")
REASONS = ("end", "error", "stopped")
DETECTION_DTYPES = {"det_xyxy": "float32", "det_score": "float32", "det_class": "int32", "det_track": "int32",
                    "det_mask": "uint8"}
TOKEN_DTYPES = ("float16", "float32")
GRID_KINDS = ("key", "delta", "skip")


class Malformed(Exception):
    """The message breaks a rule of the protocol; ``code`` names the rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


# --------------------------------------------------------------------------- JSON helpers


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"repeated key {key!r}")
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(obj: dict[str, Any], key: str, *, minimum: int | None = None, code: str = "field") -> int:
    if key not in obj:
        raise Malformed(code, f"missing {key!r}")
    value = obj[key]
    if not _is_int(value):
        raise Malformed(code, f"{key!r} must be an integer, got {value!r:.40}")
    if not INT64[0] <= value <= INT64[1]:
        raise Malformed("value", f"{key!r} is outside the signed 64-bit range")
    if minimum is not None and value < minimum:
        raise Malformed(code, f"{key!r} must be >= {minimum}, got {value}")
    return value


def _str(obj: dict[str, Any], key: str, choices: Sequence[str] | None = None, *, code: str = "field") -> str:
    if key not in obj:
        raise Malformed(code, f"missing {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise Malformed(code, f"{key!r} must be a string, got {type(value).__name__}")
    if choices is not None and value not in choices:
        raise Malformed("value", f"{key!r} must be one of {list(choices)}, got {value!r:.40}")
    return value


def _flag(obj: dict[str, Any], key: str) -> bool:
    """An optional boolean (1.2): absent or null is false."""
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise Malformed("field", f"{key!r} must be a boolean, got {value!r:.40}")
    return bool(value)


def _stream_ids(obj: dict[str, Any], key: str) -> list[str] | None:
    """An optional array of distinct stream ids (1.2): absent or null is None."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise Malformed("field", f"{key!r} must be an array of strings")
    if not all(STREAM_ID.fullmatch(s) for s in value) or len(set(value)) != len(value):
        raise Malformed("value", f"{key!r} must hold distinct stream ids, got {value!r:.80}")
    return list(value)


def _obj(obj: dict[str, Any], key: str) -> dict[str, Any]:
    if key not in obj:
        raise Malformed("field", f"missing {key!r}")
    if not isinstance(obj[key], dict):
        raise Malformed("field", f"{key!r} must be an object")
    return obj[key]


# --------------------------------------------------------------------------- reading


def _header(part: bytes) -> dict[str, Any]:
    if len(part) > MAX_HEADER_BYTES:
        raise Malformed("header-size", f"header is {len(part)} bytes")
    try:
        text = part.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("byte-order mark")
        header = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_repeats)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Malformed("header-json", str(exc)[:200]) from None
    if not isinstance(header, dict):
        raise Malformed("header-type", f"header is a JSON {type(header).__name__}")
    return header


def _buffers(header: dict[str, Any], parts: Sequence[bytes]) -> dict[str, np.ndarray[Any, Any]]:
    descriptors = header.get("buffers")
    if not isinstance(descriptors, list) or len(descriptors) > MAX_BUFFERS:
        raise Malformed("buffers", "buffers must be an array of at most 64 descriptors")
    if len(descriptors) != len(parts):
        raise Malformed("part-count", f"{len(descriptors)} descriptors, {len(parts)} buffer parts")
    out: dict[str, np.ndarray[Any, Any]] = {}
    for desc, part in zip(descriptors, parts, strict=True):
        if not isinstance(desc, dict):
            raise Malformed("descriptor", "a descriptor must be an object")
        name, dtype_name = desc.get("name"), desc.get("dtype")
        shape = desc.get("shape")
        if not isinstance(name, str) or not isinstance(dtype_name, str) or not isinstance(shape, list):
            raise Malformed("descriptor", f"bad descriptor {desc!r:.80}")
        if dtype_name not in DTYPES:
            raise Malformed("dtype", f"{name!r}: dtype {dtype_name!r:.40}")
        dtype = DTYPES[dtype_name]
        if len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
            raise Malformed("shape", f"{name!r}: shape {shape!r:.80}")
        if math.prod(d for d in shape if d) * dtype.itemsize >= 2**63:
            raise Malformed("shape", f"{name!r}: shape {shape!r:.80} is too large")
        if len(part) != math.prod(shape) * dtype.itemsize:
            raise Malformed("size-mismatch", f"{name!r}: {len(part)} bytes for {shape} of {dtype_name}")
        if name in out:
            raise Malformed("duplicate-buffer", f"{name!r} twice")
        out[name] = np.frombuffer(part, dtype=dtype).reshape(shape)
    return out


def _array(array: np.ndarray[Any, Any], dtype_name: str) -> dict[str, Any]:
    return {"dtype": dtype_name, "shape": list(array.shape), "data": array.tolist()}


def _frame(header: dict[str, Any], buffers: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    size = header.get("size_wh")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
        raise Malformed("field", f"size_wh {size!r:.40}")
    if not all(v <= INT64[1] for v in size):
        raise Malformed("value", "size_wh is outside the signed 64-bit range")
    t_ns = _obj(header, "t_ns")
    stamps = {key: _int(t_ns, key) if key in t_ns else 0 for key in ("capture", "decode", "infer", "publish")}
    models = header.get("models")
    if models is None:
        models = {}
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
        raise Malformed("field", "models must be an object of strings")
    pts = header.get("pts_s")
    if pts is not None:
        if isinstance(pts, bool) or not isinstance(pts, (int, float)):
            raise Malformed("field", f"pts_s {pts!r:.40}")
        try:
            pts = float(pts)
        except OverflowError:
            raise Malformed("value", "pts_s is not a finite double") from None
        if not math.isfinite(pts):
            raise Malformed("value", "pts_s is not a finite double")
    content: dict[str, Any] = {
        "stream": header["stream"], "seq": header["seq"], "kind": "frame",
        "frame": _int(header, "frame", minimum=0), "pts_s": pts, "size_wh": list(size),
        "policy": _str(header, "policy", POLICIES), "dropped": _int(header, "dropped", minimum=0),
        "t_ns": stamps, "models": dict(models),
        "damaged": _flag(header, "damaged"), "reused": _flag(header, "reused"),
    }
    out: dict[str, Any] = {}
    if "det_xyxy" in buffers:
        if "det_score" not in buffers or "det_class" not in buffers:
            raise Malformed("detections", "det_xyxy without det_score and det_class")
        xyxy = buffers["det_xyxy"]
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise Malformed("detections", f"det_xyxy has shape {xyxy.shape}")
        names = [n for n in DETECTION_DTYPES if n in buffers]
        for name in names:
            arr = buffers[name]
            if name == "det_mask":  # (1.3) (N, mh, B), mh and B > 0
                if arr.ndim != 3 or arr.shape[0] != xyxy.shape[0] or 0 in arr.shape[1:]:
                    raise Malformed("detections", f"det_mask has shape {arr.shape}, det_xyxy {xyxy.shape}")
            elif name != "det_xyxy" and arr.shape != (xyxy.shape[0],):
                raise Malformed("detections", f"{name} has shape {arr.shape}, det_xyxy {xyxy.shape}")
            if arr.dtype != DTYPES[DETECTION_DTYPES[name]]:
                raise Malformed("detections", f"{name} has dtype {arr.dtype}")
            out[name] = _array(arr, DETECTION_DTYPES[name])
    for name, ndim in (("ctx", 1), ("patches", 3), ("patch_values", 2), ("patch_bias", 1), ("content", 3),
                       ("query_ctx", 2)):
        if name in buffers:
            arr = buffers[name]
            dtype_name = next((n for n in TOKEN_DTYPES if DTYPES[n] == arr.dtype), None)
            if arr.ndim != ndim or dtype_name is None:
                raise Malformed("tokens", f"{name} has shape {arr.shape} and dtype {arr.dtype}")
            out[name] = _array(arr, dtype_name)
    for name, want in (("patch_index", "int32"), ("query_score", "float32"), ("preview", "uint8"),
                       ("code_index", "int32"), ("code_values", "int16")):
        if name in buffers:
            arr = buffers[name]
            if arr.ndim != 1 or arr.dtype != DTYPES[want]:
                raise Malformed("tokens", f"{name} has shape {arr.shape} and dtype {arr.dtype}")
            out[name] = _array(arr, want)
    if "codes" in buffers:  # (1.2) the code grid
        arr = buffers["codes"]
        if arr.ndim != 2 or arr.dtype != DTYPES["int16"]:
            raise Malformed("tokens", f"codes has shape {arr.shape} and dtype {arr.dtype}")
        out["codes"] = _array(arr, "int16")
    if ("query_ctx" in out) != ("query_score" in out) or (
        "query_ctx" in out and out["query_ctx"]["shape"][0] != out["query_score"]["shape"][0]
    ):
        raise Malformed("tokens", "query_ctx (Q, D) and query_score (Q,) go together")
    grid = _grid(header, buffers)
    if grid is not None:
        content["grid"] = grid
    _codes(grid, buffers)
    content["buffers"] = out
    return content


def _codes(grid: dict[str, Any] | None, buffers: dict[str, np.ndarray[Any, Any]]) -> None:
    """(1.2) The code grid buffers (§5.2): whole (``codes``) or a delta's changed cells."""
    for name in ("codes", "code_values"):
        if name in buffers and buffers[name].size and int(buffers[name].min()) < 0:
            raise Malformed("grid", f"{name}: a code is negative")
    has_delta = {"code_index", "code_values"} & set(buffers)
    codes = buffers.get("codes")
    if grid is None:
        if has_delta:
            raise Malformed("grid", "code_index/code_values without grid")
        patches = buffers.get("patches")
        if codes is not None and patches is not None and codes.shape != patches.shape[:2]:
            raise Malformed("grid", "codes do not match the patch grid")
        return
    gh, gw = grid["hw"]
    if codes is not None and codes.shape != (gh, gw):
        raise Malformed("grid", "codes must be (gh, gw)")
    if grid["kind"] == "skip" and (codes is not None or has_delta):
        raise Malformed("grid", "a skip update carries no code buffers")
    if has_delta:
        if grid["kind"] != "delta" or codes is not None or len(has_delta) != 2:
            raise Malformed("grid", "code_index and code_values come together, in a delta without codes")
        index, values = buffers["code_index"], buffers["code_values"]
        if index.shape != values.shape:
            raise Malformed("grid", "code_index and code_values must have the same C")
        if index.size and (int(index.min()) < 0 or int(index.max()) >= gh * gw):
            raise Malformed("grid", "code_index out of range")


def _grid(header: dict[str, Any], buffers: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any] | None:
    """The optional ``grid`` field of protocol 1.1 (null: absent) and the buffers each grid kind requires."""
    delta_parts = {"patch_index", "patch_values", "patch_bias"} & set(buffers)
    if header.get("grid") is None:
        if delta_parts:
            raise Malformed("grid", "patch_index/patch_values without grid")
        return None
    grid = header["grid"]
    if not isinstance(grid, dict):
        raise Malformed("grid", "grid must be an object")
    kind = _str(grid, "kind", code="grid")
    if kind not in GRID_KINDS:  # every failure of the grid field is `grid` (docs/protocol.md §9, rule 17)
        raise Malformed("grid", f"grid.kind {kind!r:.40}")
    n = grid.get("n")
    if not _is_int(n) or not 0 <= n <= INT64[1]:
        raise Malformed("grid", f"grid.n {n!r:.40}")
    hw = grid.get("hw")
    if not isinstance(hw, list) or len(hw) != 2 or not all(_is_int(v) and 0 < v <= INT64[1] for v in hw):
        raise Malformed("grid", f"grid.hw {hw!r:.40}")
    gh, gw = hw
    if kind == "key":
        patches = buffers.get("patches")
        if patches is None or delta_parts or patches.shape[:2] != (gh, gw):
            raise Malformed("grid", "a key update carries patches of shape (gh, gw, D) and no delta buffers")
    elif kind == "delta":
        if "patches" in buffers or not {"patch_index", "patch_values"} <= delta_parts:
            raise Malformed("grid", "a delta update carries patch_index and patch_values, not patches")
        index, values = buffers["patch_index"], buffers["patch_values"]
        if values.ndim != 2 or values.shape[0] != index.shape[0]:
            raise Malformed("grid", "patch_values must be (K, D) for K indices")
        bias = buffers.get("patch_bias")
        if bias is not None and bias.shape != (values.shape[1],):
            raise Malformed("grid", "patch_bias must be (D,)")
        if index.size and (int(index.min()) < 0 or int(index.max()) >= gh * gw):
            raise Malformed("grid", "patch_index out of range")
    elif "patches" in buffers or delta_parts:
        raise Malformed("grid", "a skip update carries no patch buffers")
    return {"kind": kind, "n": n, "hw": [gh, gw]}


def mask_area(content: dict[str, Any], i: int) -> int:
    """(1.3, §5.3) The area in source-frame pixels of detection ``i``'s mask in a decoded frame's ``content``."""
    width, height = content["size_wh"]
    x1, y1, x2, y2 = (float(v) for v in content["buffers"]["det_xyxy"]["data"][i])
    rows = content["buffers"]["det_mask"]["data"][i]  # mh rows of B bytes
    mh, mw = len(rows), 8 * len(rows[0])

    def cells(lo: float, hi: float, pixels: int, n: int) -> list[int]:
        out = []
        for p in range(pixels):
            centre = p + 0.5
            out.append(min(math.floor((centre - lo) * n / (hi - lo)), n - 1) if hi > lo and lo <= centre < hi
                       else -1)
        return out

    cols, lines = cells(x1, x2, width, mw), cells(y1, y2, height, mh)
    area = 0
    for r in lines:
        if r < 0:
            continue
        for c in cols:
            if c >= 0 and rows[r][c // 8] >> (7 - c % 8) & 1:
                area += 1
    return area


def read(parts: Sequence[bytes]) -> dict[str, Any]:
    """Decode one multipart message (a sequence of byte strings) into its content."""
    if len(parts) < 2:
        raise Malformed("parts", f"{len(parts)} parts")
    header = _header(bytes(parts[1]))
    version = header.get("v")
    if not isinstance(version, list) or len(version) != 2 or not all(_is_int(v) for v in version):
        raise Malformed("version", f"v {version!r:.40}")
    if version[0] != MAJOR:
        raise Malformed("unsupported-major", f"major version {version[0]}")
    stream = header.get("stream")
    if not isinstance(stream, str) or not STREAM_ID.fullmatch(stream):
        raise Malformed("stream", f"stream {stream!r:.80}")
    if bytes(parts[0]) != stream.encode() + b"/":
        raise Malformed("topic", f"topic {bytes(parts[0])[:80]!r} for stream {stream!r}")
    seq = _int(header, "seq", minimum=0)
    kind = _str(header, "kind")
    buffers = _buffers(header, [bytes(p) for p in parts[2:]])
    if kind == "frame":
        return _frame(header, buffers)
    if buffers:
        raise Malformed("buffers", f"a {kind!r:.40} message carries no buffers")
    content: dict[str, Any] = {"stream": stream, "seq": seq, "kind": kind}
    if kind == "status":
        content.update(state=_str(header, "state", STATES), detail=_str(header, "detail"),
                       t_ns=_int(header, "t_ns"))
    elif kind == "eos":
        content.update(frames=_int(header, "frames", minimum=0), reason=_str(header, "reason", REASONS),
                       detail=_str(header, "detail"))
    elif kind == "info":
        content.update(policy=_str(header, "policy", POLICIES), models=_obj(header, "models"))
        worker = header.get("worker")
        content.update(worker=None if worker is None else _int(header, "worker", minimum=0),
                       streams=_stream_ids(header, "streams"))
    else:
        raise Malformed("kind", f"unknown kind {kind!r:.40}")
    content["buffers"] = {}
    return content
