"""Human and JSON renderings of messages, for ``frametok subscribe`` and ``frametok run --echo``."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..packet import EndOfStream, Message, StatusMessage, StreamInfo, TokenPacket

__all__ = ["message_dict", "message_json", "message_line"]


def _name(names: Sequence[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def _model_name(model: Any) -> str:
    """What an info message's model entry is called: its ``name``, else its ``kind`` (the tracker's
    entry has a kind, ``bytetrack``, and no name)."""
    if not isinstance(model, Mapping):
        return "?"
    for key in ("name", "kind"):
        value = model.get(key)
        if isinstance(value, str) and value:
            return value
    return "?"


def _latency_ms(packet: TokenPacket) -> float | None:
    if not packet.timestamps.t_capture_ns:
        return None
    return (time.time_ns() - packet.timestamps.t_capture_ns) / 1e6


def message_line(msg: Message, class_names: Sequence[str] = ()) -> str:
    """One line per message: stream, frame, pts, detections by class, token shapes."""
    if isinstance(msg, TokenPacket):
        pts = f"{msg.pts_s:.3f}s" if msg.pts_s is not None else "-"
        parts = [f"{msg.stream_id} #{msg.frame_index} pts={pts} {msg.size_wh[0]}x{msg.size_wh[1]}"]
        if msg.detections is not None:
            counts = Counter(_name(class_names, int(c)) for c in msg.detections.class_id)
            dets = ", ".join(f"{n} {name}" for name, n in counts.most_common()) or "none"
            parts.append(f"det: {dets}")
            if msg.detections.mask_hw is not None:
                mh, mw = msg.detections.mask_hw
                parts.append(f"masks {mh}x{mw}")
        tokens = []
        if msg.context_token is not None:
            tokens.append(f"ctx {msg.context_token.shape[0]}")
        if msg.patch_tokens is not None:
            gh, gw, d = msg.patch_tokens.shape
            tokens.append(f"patches {gh}x{gw}x{d} {msg.patch_tokens.dtype}")
        if tokens:
            parts.append(" ".join(tokens))
        latency = _latency_ms(msg)
        if latency is not None:
            parts.append(f"latency {latency:.0f} ms")
        if msg.dropped:
            parts.append(f"dropped {msg.dropped}")
        return " | ".join(parts)
    if isinstance(msg, StatusMessage):
        return f"{msg.stream_id} status {msg.state}" + (f": {msg.detail}" if msg.detail else "")
    if isinstance(msg, EndOfStream):
        tail = f": {msg.detail}" if msg.detail else ""
        return f"{msg.stream_id} end of stream ({msg.reason}) after {msg.frames} frames{tail}"
    models = ", ".join(f"{role} {_model_name(m)}" for role, m in msg.models.items())
    return f"{msg.stream_id} info: policy {msg.policy}; models: {models or 'none'}"


def message_dict(msg: Message, class_names: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON-ready dict of a message (token arrays as shapes, detections in full)."""
    base: dict[str, Any] = {"stream": msg.stream_id, "seq": msg.seq}
    if isinstance(msg, TokenPacket):
        ts = msg.timestamps
        base.update(kind="frame", frame=msg.frame_index, pts_s=msg.pts_s, size_wh=list(msg.size_wh),
                    policy=msg.policy, dropped=msg.dropped, models=dict(msg.models),
                    t_ns={"capture": ts.t_capture_ns, "decode": ts.t_decode_ns, "infer": ts.t_infer_ns,
                          "publish": ts.t_publish_ns})
        if msg.detections is not None:
            det = msg.detections
            tracks = det.track_id
            base["detections"] = [
                {"class_id": int(c), "class": _name(class_names, int(c)), "score": round(float(s), 4),
                 "xyxy": [round(float(v), 2) for v in box],
                 **({"track_id": int(tracks[i])} if tracks is not None else {})}
                for i, (box, s, c) in enumerate(zip(det.xyxy, det.score, det.class_id, strict=True))
            ]
            if det.mask_bits is not None:  # (1.3) each box's mask: its cells (bit-packed, base64) and pixel area
                hw = det.mask_hw
                areas = det.mask_areas(msg.size_wh)
                for i, d in enumerate(base["detections"]):
                    bits = base64.b64encode(det.mask_bits[i].tobytes()).decode()
                    d["mask"] = {"hw": list(hw or ()), "bits_b64": bits, "area": int(areas[i])}
        base["context_shape"] = None if msg.context_token is None else list(msg.context_token.shape)
        base["patch_shape"] = None if msg.patch_tokens is None else list(msg.patch_tokens.shape)
        base["latency_ms"] = _latency_ms(msg)
    elif isinstance(msg, StatusMessage):
        base.update(kind="status", state=msg.state, detail=msg.detail, t_ns=msg.t_ns)
    elif isinstance(msg, EndOfStream):
        base.update(kind="eos", frames=msg.frames, reason=msg.reason, detail=msg.detail)
    elif isinstance(msg, StreamInfo):
        base.update(kind="info", policy=msg.policy, models=dict(msg.models), worker=msg.worker)
    return base


def message_json(msg: Message, class_names: Sequence[str] = ()) -> str:
    return json.dumps(message_dict(msg, class_names), separators=(",", ":"))
