"""Frame packets into ``frames`` rows, appended to the index in batches (one LanceDB commit each)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..models.codebook import code_counts
from ..packet import TokenPacket
from .store import OPTIONAL_FRAME_COLUMNS, Store, frames_schema

__all__ = ["FrameRows", "FrameWriter", "rows_table", "token_dims"]


def token_dims(models: dict[str, Any]) -> tuple[int, int]:
    """(token size, content tokens per frame) of a stream, from its info's encoder entry (0, 0: none)."""
    enc = models.get("encoder") or {}
    dim = int(enc.get("embed_dim") or 0)
    pool = int(enc.get("pool") or 0)
    return dim, pool * pool


def rows_table(rows: list[dict[str, Any]], schema: Any) -> Any:
    """Row dicts as a pyarrow Table of ``schema`` (fixed-size vector columns from numpy arrays)."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for field in schema:
        values: list[Any] = [r.get(field.name) if field.name in OPTIONAL_FRAME_COLUMNS else r[field.name]
                             for r in rows]
        if isinstance(field.type, pa.FixedSizeListType):
            flat = (np.concatenate(values).astype(np.float32, copy=False) if values
                    else np.zeros(0, np.float32))
            columns[field.name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), field.type.list_size)
        else:
            columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=schema)


class FrameRows:
    """Frame packets of one video into ``frames`` rows (kept in memory; :class:`FrameWriter` appends them).

    ``track_offset`` is added to every track id (a resumed run's tracker counts from 1 again). ``codes``: the
    stream carries code grids (a codebook): each row gets the counts of its packet's ``code_grid``. Detections
    with masks (protocol 1.3) give the row ``det_mask_area`` (from the first such packet on: ``masks``).
    """

    def __init__(self, video_id: str, *, fps: float | None, dim: int, content_tokens: int,
                 track_offset: int = 0, codes: bool = False) -> None:
        self.video_id = video_id
        self.fps = fps
        self.dim = dim
        self.content_tokens = content_tokens
        self.track_offset = track_offset
        self.codes = codes
        self.masks = False
        self.schema = frames_schema(dim, content_tokens, codes)
        self.rows: list[dict[str, Any]] = []
        self.last_frame = -1
        self.max_track = -1

    def row(self, packet: TokenPacket) -> dict[str, Any]:
        """The ``frames`` row of ``packet`` (also appended to :attr:`rows`)."""
        det = packet.detections
        n = len(det) if det is not None else 0
        tracks: list[int] = []
        if det is not None and n:
            raw = det.track_id if det.track_id is not None else np.full(n, -1, np.int32)
            shifted = np.where(raw >= 0, raw.astype(np.int64) + self.track_offset, -1)
            tracks = [int(t) for t in shifted]
            self.max_track = max(self.max_track, max(tracks))
        t_s = packet.pts_s if packet.pts_s is not None else (
            packet.frame_index / self.fps if self.fps else float(packet.frame_index))
        row: dict[str, Any] = {
            "video_id": self.video_id,
            "stream": packet.stream_id,
            "frame": packet.frame_index,
            "pts_s": packet.pts_s,
            "t_s": t_s,
            "n_det": n,
            "det_class": det.class_id.tolist() if det is not None else [],
            "det_score": det.score.tolist() if det is not None else [],
            "det_xyxy": det.xyxy.reshape(-1).tolist() if det is not None else [],
            "det_track": tracks,
        }
        if det is not None and det.mask_bits is not None:
            row["det_mask_area"] = det.mask_areas(packet.size_wh).tolist()
            if not self.masks:
                self.masks = True
                self.schema = frames_schema(self.dim, self.content_tokens, self.codes, True)
        if self.dim:
            row["ctx"] = self._vector(packet.context_token, self.dim)
            if self.content_tokens:
                row["content"] = self._vector(packet.content_tokens, self.dim * self.content_tokens)
        if self.codes:
            grid = packet.code_grid
            row["code_hist"] = code_counts(grid).tolist() if grid is not None and grid.size else None
        self.rows.append(row)
        self.last_frame = packet.frame_index
        return row

    @staticmethod
    def _vector(value: Any, size: int) -> Any:
        if value is None:
            return np.zeros(size, np.float32)
        flat = np.asarray(value, np.float32).reshape(-1)
        if flat.size != size:
            raise ValueError(f"expected {size} token values, got {flat.size}")
        return flat

    def take(self) -> Any:
        """The rows so far as a pyarrow Table (None when there are none); they are forgotten here."""
        if not self.rows:
            return None
        table = rows_table(self.rows, self.schema)
        self.rows = []
        return table


class FrameWriter(FrameRows):
    """Buffers frame rows of one video and appends them every ``batch`` frames or ``interval_s`` seconds.

    An append is atomic: an index run killed at any moment leaves a prefix of the video's frames.
    ``track_offset`` is added to every track id (a resumed run's tracker counts from 1 again).
    """

    def __init__(self, store: Store, video_id: str, *, fps: float | None, dim: int, content_tokens: int,
                 track_offset: int = 0, codes: bool = False, batch: int = 256, interval_s: float = 10.0) -> None:
        super().__init__(video_id, fps=fps, dim=dim, content_tokens=content_tokens, track_offset=track_offset,
                         codes=codes)
        self.store = store
        self.batch = batch
        self.interval_s = interval_s
        self.table = store.ensure("frames", self.schema)
        names = self.table.schema.names
        if (not codes and "code_hist" in names) or "det_mask_area" in names:  # the table's optional columns
            self.codes = self.codes or "code_hist" in names  # an index with codes: null rows here
            self.masks = "det_mask_area" in names
            self.schema = frames_schema(dim, content_tokens, self.codes, self.masks)
        self.written = 0
        self._last_flush = time.monotonic()

    def add(self, packet: TokenPacket) -> None:
        self.row(packet)
        if len(self.rows) >= self.batch or time.monotonic() - self._last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        n = len(self.rows)
        table = self.take()
        if table is None:
            return
        if self.masks and "det_mask_area" not in self.table.schema.names:  # the first masks into this index
            self.table = self.store.ensure("frames", self.schema)
        self.table.add(table)
        self.written += n
