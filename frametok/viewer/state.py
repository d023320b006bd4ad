"""What the viewer knows of each stream: its state, its last frame, and rolling statistics.

The subscriber thread applies every message (:meth:`Board.apply`); each browser connection waits
for streams whose version changed (:meth:`Board.changes`) and gets their latest snapshot only, so a
slow browser skips frames instead of queueing them (newest frame wins, as for a live subscriber).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..packet import EndOfStream, Message, StatusMessage, StreamInfo, TokenPacket
from ..sdk.costs import packet_cost, wire_bytes
from ..sdk.render import message_dict

__all__ = ["Board", "StreamState"]

WINDOW_S = 2.0  # rates are averaged over this many seconds of publish time (and at least two frames)
_MODEL_KEYS = frozenset({"name", "id", "providers", "precision", "grid_hw", "embed_dim", "compression", "dtype"})


@dataclass(frozen=True)
class _Sample:
    t_publish_ns: int
    latency_ms: float | None  # publish - capture
    viewer_latency_ms: float | None  # received here - capture
    tokens_sent: int
    tokens_full: int
    bytes_sent: int  # the whole message, preview excluded
    preview_bytes: int
    patch_bytes_sent: int
    patch_bytes_full: int


@dataclass
class StreamState:
    stream_id: str
    state: str = "waiting"  # until a status message arrives: connecting, online, ..., or ended
    detail: str = ""
    policy: str = ""
    class_names: list[str] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    frame: dict[str, Any] | None = None
    frames: int = 0
    gaps: int = 0
    version: int = 0
    window: deque[_Sample] = field(default_factory=deque)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("tokens_sent", "tokens_full", "bytes_sent", "preview_bytes", "patch_bytes_sent", "patch_bytes_full"), 0))

    def stats(self) -> dict[str, Any]:
        """Rates over the last ``WINDOW_S`` seconds of publish time, and totals since the viewer started."""
        w = list(self.window)
        out: dict[str, Any] = {"frames": self.frames, "gaps": self.gaps, "totals": dict(self.totals)}
        span_s = (w[-1].t_publish_ns - w[0].t_publish_ns) / 1e9 if len(w) >= 2 else 0.0
        if span_s > 0:
            per_s = (len(w) - 1) / span_s / len(w)  # per-frame averages -> per second
            out["fps"] = (len(w) - 1) / span_s
            for key in ("tokens_sent", "tokens_full", "bytes_sent", "preview_bytes", "patch_bytes_sent",
                        "patch_bytes_full"):
                out[f"{key}_per_s"] = sum(getattr(s, key) for s in w) * per_s
        for key in ("latency_ms", "viewer_latency_ms"):
            values = [v for s in w if (v := getattr(s, key)) is not None]
            if values:
                out[key] = sum(values) / len(values)
        full = self.totals["patch_bytes_full"]
        if full:
            out["patch_bytes_saved"] = 1.0 - self.totals["patch_bytes_sent"] / full
        if self.totals["tokens_full"]:
            out["tokens_saved"] = 1.0 - self.totals["tokens_sent"] / self.totals["tokens_full"]
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"stream": self.stream_id, "version": self.version, "state": self.state, "detail": self.detail,
                "policy": self.policy, "class_names": self.class_names, "models": self.models, "frame": self.frame,
                "stats": self.stats()}


def _frame_payload(packet: TokenPacket, names: list[str], received_ns: int) -> dict[str, Any]:
    d = message_dict(packet, names)
    ts = packet.timestamps
    return {
        "frame": packet.frame_index, "seq": packet.seq, "pts_s": packet.pts_s, "size_wh": list(packet.size_wh),
        "dropped": packet.dropped, "detections": d.get("detections"),
        "grid": packet.grid_update.kind if packet.grid_update is not None else None,
        "t_capture_ms": ts.t_capture_ns / 1e6, "t_publish_ms": ts.t_publish_ns / 1e6,
        "t_received_ms": received_ns / 1e6,
        "preview_jpeg": base64.b64encode(packet.preview_jpeg).decode() if packet.preview_jpeg else None,
    }


class Board:
    """Every stream's state, shared by the subscriber thread and the browser connections."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamState] = {}
        self.closed = False
        self._cond = threading.Condition()

    def _stream(self, stream_id: str) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            st = self.streams[stream_id] = StreamState(stream_id)
        return st

    def apply(self, msg: Message, received_ns: int | None = None, gaps: int = 0) -> None:
        received_ns = received_ns or time.time_ns()
        sample = None
        if isinstance(msg, TokenPacket):  # the costly part outside the lock
            cost = packet_cost(msg)
            ts = msg.timestamps
            sample = _Sample(
                ts.t_publish_ns,
                (ts.t_publish_ns - ts.t_capture_ns) / 1e6 if ts.t_capture_ns and ts.t_publish_ns else None,
                (received_ns - ts.t_capture_ns) / 1e6 if ts.t_capture_ns else None,
                cost.tokens_sent, cost.tokens_full, wire_bytes(msg) - cost.preview_bytes, cost.preview_bytes,
                cost.patch_bytes_sent, cost.patch_bytes_full)
        with self._cond:
            st = self._stream(msg.stream_id)
            st.gaps = gaps
            if isinstance(msg, TokenPacket) and sample is not None:
                st.frame = _frame_payload(msg, st.class_names, received_ns)
                st.frames += 1
                if st.state in ("waiting", "ended"):
                    st.state, st.detail = "online", ""
                st.window.append(sample)
                while len(st.window) > 2 and sample.t_publish_ns - st.window[0].t_publish_ns > WINDOW_S * 1e9:
                    st.window.popleft()
                for key in st.totals:
                    st.totals[key] += getattr(sample, key)
            elif isinstance(msg, StatusMessage):
                st.state, st.detail = msg.state, msg.detail
            elif isinstance(msg, EndOfStream):
                st.state = "ended"
                st.detail = f"{msg.reason} after {msg.frames} frames" + (f": {msg.detail}" if msg.detail else "")
            elif isinstance(msg, StreamInfo):
                st.policy, st.class_names = msg.policy, msg.class_names()
                st.models = {role: {k: v for k, v in m.items() if k in _MODEL_KEYS} for role, m in msg.models.items()}
            st.version += 1
            self._cond.notify_all()

    def changes(self, seen: dict[str, int], timeout_s: float) -> list[dict[str, Any]]:
        """Snapshots of the streams changed since the versions in ``seen`` (updated); [] on timeout."""
        def changed() -> list[StreamState]:
            return [st for sid, st in self.streams.items() if seen.get(sid) != st.version]

        with self._cond:
            self._cond.wait_for(lambda: self.closed or bool(changed()), timeout_s)
            out = []
            for st in changed():
                seen[st.stream_id] = st.version
                out.append(st.snapshot())
            return out

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
