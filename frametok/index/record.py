"""``frametok record``: write a live token stream from any publisher into an index (same schema)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..packet import EndOfStream, StreamInfo, TokenPacket
from .store import Store
from .tracks import build_tracks
from .writer import FrameWriter, token_dims

__all__ = ["RecordReport", "record"]


@dataclass
class RecordReport:
    frames: dict[str, int] = field(default_factory=dict)  # stream -> frames written
    ended: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = ", ".join(f"{s}: {n}" for s, n in self.frames.items()) or "nothing"
        return f"frametok record: {sum(self.frames.values())} frames ({parts})"


def record(endpoint: str | Sequence[str], db: str | Path, *, streams: Sequence[str] | None = None,
           lossless: bool = False, count: int = 0, timeout_s: float | None = None,
           batch_rows: int = 64) -> RecordReport:
    """Record until every stream ended, ``count`` frames, ``timeout_s`` of silence, or Ctrl-C.

    ``endpoint``: one publisher or several (stream ids unique across them). Each recorded stream is one
    ``video`` (named ``ENDPOINT#STREAM`` after the publisher it came from, keyed by its start time); its tracks
    are written when it ends (without crop embeddings: a stream carries no pixels).
    """
    from ..sdk.subscriber import Subscriber

    store = Store(db, create=True)
    report = RecordReport()
    writers: dict[str, FrameWriter] = {}
    bases: dict[str, dict[str, Any]] = {}
    infos: dict[str, StreamInfo] = {}

    def base_for(sid: str) -> dict[str, Any]:
        if sid not in bases:
            info = infos.get(sid)
            started = time.time_ns()
            bases[sid] = {
                "video_id": f"rec-{sid}-{started}", "video": f"{sub.endpoint_of(sid)}#{sid}", "stream": sid,
                "size_bytes": 0,
                "mtime_ns": started, "fps": None, "every": 1, "width": 0, "height": 0, "frames": 0,
                "class_names": json.dumps(info.class_names() if info else []),
                "models": json.dumps(dict(info.models) if info else {}), "encoder": "",
            }
            store.put_video({**bases[sid], "state": "recording", "updated_ns": started})
        return bases[sid]

    def close(sid: str) -> None:
        writer, base = writers.pop(sid, None), bases.get(sid)
        if writer is None or base is None:
            return
        writer.flush()
        base["frames"] = writer.written
        dim = token_dims(json.loads(base["models"]))[0]
        build_tracks(store, base, None, json.loads(base["class_names"]), dim)
        store.put_video({**base, "state": "complete", "updated_ns": time.time_ns()})

    total = 0
    with Subscriber(endpoint, streams=streams, mode="lossless" if lossless else "live", timeout_s=timeout_s) as sub:
        try:
            for msg in sub:
                sid = msg.stream_id
                if isinstance(msg, StreamInfo):
                    infos[sid] = msg
                elif isinstance(msg, TokenPacket):
                    if sid not in writers:
                        base = base_for(sid)
                        if base["width"] == 0:
                            base["width"], base["height"] = msg.size_wh
                        dim, content = token_dims(json.loads(base["models"]))
                        # a codebook's code grids (rebuilt by the Subscriber): their histograms are stored
                        codes = msg.code_grid is not None or (
                            msg.grid_update is not None and msg.grid_update.codes is not None)
                        writers[sid] = FrameWriter(store, base["video_id"], fps=None, dim=dim,
                                                   content_tokens=content, codes=codes, batch=batch_rows,
                                                   interval_s=2.0)
                    writers[sid].add(msg)
                    report.frames[sid] = report.frames.get(sid, 0) + 1
                    total += 1
                    if count and total >= count:
                        break
                elif isinstance(msg, EndOfStream):
                    close(sid)
                    bases.pop(sid, None)
                    report.ended.append(sid)
        except KeyboardInterrupt:
            pass
        finally:
            for sid in list(writers):
                close(sid)
            store.compact()
    return report
