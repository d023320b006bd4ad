"""The index database: a LanceDB folder with a ``meta``, a ``videos``, a ``frames`` and a ``tracks`` table.

``frames``: one row per indexed frame (video, stream, frame index, pts, time, detections with track ids,
context token, content tokens, and with a codebook ``code_hist``: how often each code occurs in the frame's
code grid). ``tracks``: one row per track of a finished video (class, first and last
frame and time, best box, and an embedding of the best box's crop). ``videos``: what was indexed from
which file (its fingerprint, state, models, class names). ``meta``: the schema version.

LanceDB is imported lazily: the runtime works without the ``index`` extra.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["OPTIONAL_FRAME_COLUMNS", "SCHEMA_VERSION", "Store", "frames_schema", "quote", "tracks_schema",
           "videos_schema"]

# Version 1 still: ``code_hist`` is an optional column (like ``ctx``), absent from an index made without a
# codebook or before it existed; such an index opens and is searched as before (not by codes), and a run
# with a codebook that writes into it adds the column (null in the rows already there): see Store.ensure.
# ``det_mask_area`` (a segmentation detector's mask areas) is optional the same way.
SCHEMA_VERSION = 1
OPTIONAL_FRAME_COLUMNS = ("code_hist", "det_mask_area")


def _lancedb() -> Any:
    os.environ.setdefault("LANCE_LOG", "error")  # lance logs a warning for every new table otherwise
    try:
        import lancedb
    except ImportError as exc:
        raise ConfigError(
            "the index needs LanceDB: pip install 'frametok[index]' (lancedb, pyarrow)"
        ) from exc
    return lancedb


def quote(value: str) -> str:
    """A string literal for a LanceDB (SQL) filter."""
    return "'" + value.replace("'", "''") + "'"


def videos_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        pa.field("video_id", pa.string()),  # the fingerprint: size, mtime and hashes of head and tail
        pa.field("video", pa.string()),  # absolute path (record: the endpoint)
        pa.field("stream", pa.string()),
        pa.field("state", pa.string()),  # indexing | frames (all frames in, tracks pending) | complete
        pa.field("size_bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("every", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("frames", pa.int64()),  # frames indexed (complete: all)
        pa.field("class_names", pa.string()),  # JSON list
        pa.field("models", pa.string()),  # JSON: the stream info's models (names, ids, manifests' info)
        pa.field("encoder", pa.string()),  # the encoder as configured (registry name or path), "" if none;
        # detector:REF for soft tokens from the neck of the detector REF (encoder.model: detector)
        pa.field("updated_ns", pa.int64()),
    ])


def frames_schema(dim: int, content_tokens: int, codes: bool = False, masks: bool = False) -> Any:
    """``dim``: the encoder's token size (0: no encoder); ``content_tokens``: pool x pool (0: none);
    ``codes``: a code histogram per frame (a codebook); ``masks``: each detection's mask area (a segmentation
    detector, protocol 1.3)."""
    import pyarrow as pa

    fields = [
        pa.field("video_id", pa.string()),
        pa.field("stream", pa.string()),
        pa.field("frame", pa.int64()),
        pa.field("pts_s", pa.float64()),
        pa.field("t_s", pa.float64()),  # pts, or frame / fps where the frame has none
        pa.field("n_det", pa.int32()),
        pa.field("det_class", pa.list_(pa.int32())),
        pa.field("det_score", pa.list_(pa.float32())),
        pa.field("det_xyxy", pa.list_(pa.float32())),  # N boxes, flattened (x1, y1, x2, y2, ...)
        pa.field("det_track", pa.list_(pa.int32())),  # -1: not tracked
    ]
    if dim:
        fields.append(pa.field("ctx", pa.list_(pa.float32(), dim)))
        if content_tokens:
            fields.append(pa.field("content", pa.list_(pa.float32(), dim * content_tokens)))
    if codes:
        # counts of codes 0, 1, ... up to the highest code in the frame (they sum to gh x gw); null: the frame
        # had no code grid (a live subscriber out of sync)
        fields.append(pa.field("code_hist", pa.list_(pa.int32())))
    if masks:
        # each detection's mask area in source-frame pixels (in det_class's order); null: the frame's detections
        # carry no masks
        fields.append(pa.field("det_mask_area", pa.list_(pa.int64())))
    return pa.schema(fields, metadata={"dim": str(dim), "content_tokens": str(content_tokens)})


def tracks_schema(dim: int) -> Any:
    import pyarrow as pa

    fields = [
        pa.field("video_id", pa.string()),
        pa.field("stream", pa.string()),
        pa.field("track_id", pa.int32()),
        pa.field("class_id", pa.int32()),
        pa.field("class_name", pa.string()),
        pa.field("n_frames", pa.int64()),
        pa.field("first_frame", pa.int64()),
        pa.field("last_frame", pa.int64()),
        pa.field("first_s", pa.float64()),
        pa.field("last_s", pa.float64()),
        pa.field("best_frame", pa.int64()),
        pa.field("best_score", pa.float32()),
        pa.field("best_xyxy", pa.list_(pa.float32(), 4)),
    ]
    if dim:
        # the encoder's context token of the best box's crop (zeros when the source could not be read)
        fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    return pa.schema(fields)


class Store:
    """An index folder; checks the schema version on open (an incompatible one is a ConfigError)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_dir():
            raise ConfigError(f"no index at {self.path} (make one with `frametok index VIDEO --db {self.path}`)")
        lancedb = _lancedb()
        self.db = lancedb.connect(str(self.path))
        self._tables: dict[str, Any] = {}
        self._check_version(create)

    # ------------------------------------------------------------------ tables

    def names(self) -> list[str]:
        return list(self.db.list_tables().tables)

    def table(self, name: str) -> Any | None:
        if name not in self._tables:
            if name not in self.names():
                return None
            self._tables[name] = self.db.open_table(name)
        return self._tables[name]

    def ensure(self, name: str, schema: Any) -> Any:
        """The table ``name``, created with ``schema``; an existing one must have the same columns, but for
        the optional frame columns: one ``schema`` has and the table lacks is added (null in the rows there);
        one the table has and ``schema`` lacks is kept (the caller writes the table's schema, nulls there)."""
        table = self.table(name)
        if table is None:
            table = self.db.create_table(name, schema=schema)
            self._tables[name] = table
            return table
        have = [(f.name, str(f.type)) for f in table.schema]
        want = [(f.name, str(f.type)) for f in schema]
        optional = OPTIONAL_FRAME_COLUMNS if name == "frames" else ()
        core = [c for c in want if c[0] not in optional]
        if have != want and [c for c in have if c[0] not in optional] == core:
            missing = [schema.field(c[0]) for c in want if c not in have]
            if all(c in want for c in have if c[0] in optional) or not missing:
                if missing:
                    table.add_columns(missing)  # an index from before the column (or without it): migrated
                return table
        if have != want:
            raise ConfigError(
                f"index {self.path}: table {name!r} holds columns {have}, this run writes {want} "
                "(a different encoder or pool size?); index into a new --db folder"
            )
        return table

    def read(self, name: str, where: str | None = None, columns: Sequence[str] | None = None) -> Any:
        """Rows of a table as a pyarrow Table (empty table when it does not exist yet)."""
        import pyarrow as pa

        table = self.table(name)
        if table is None:
            return pa.table({c: [] for c in columns or ()})
        query = table.search()
        if where:
            query = query.where(where)
        if columns is not None:
            query = query.select(list(columns))
        return query.limit(None).to_arrow()

    def delete(self, name: str, where: str) -> None:
        table = self.table(name)
        if table is not None:
            table.delete(where)

    # ------------------------------------------------------------------ videos

    def video_rows(self, where: str | None = None) -> list[dict[str, Any]]:
        return list(self.read("videos", where).to_pylist()) if self.table("videos") is not None else []

    def put_video(self, row: dict[str, Any]) -> None:
        import pyarrow as pa

        table = self.ensure("videos", videos_schema())
        data = pa.Table.from_pylist([row], schema=videos_schema())
        # one commit: a run killed meanwhile leaves the old row or the new one, never none
        table.merge_insert("video_id").when_matched_update_all().when_not_matched_insert_all().execute(data)

    def forget_video(self, video_id: str) -> None:
        """Every row of a video (a changed file is indexed again from scratch)."""
        where = f"video_id = {quote(video_id)}"
        for name in ("frames", "tracks", "videos"):
            self.delete(name, where)

    # ------------------------------------------------------------------ version

    def _check_version(self, create: bool) -> None:
        import pyarrow as pa

        meta = self.table("meta")
        if meta is None:
            if self.names():
                raise ConfigError(f"{self.path} holds LanceDB tables {self.names()} but is no frametok index")
            if not create:
                raise ConfigError(f"no index at {self.path} (make one with `frametok index VIDEO --db {self.path}`)")
            schema = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.string())])
            meta = self.db.create_table("meta", schema=schema)
            meta.add(pa.Table.from_pylist([{"key": "schema_version", "value": json.dumps(SCHEMA_VERSION)}],
                                          schema=schema))
            self._tables["meta"] = meta
            return
        rows = {r["key"]: r["value"] for r in meta.to_arrow().to_pylist()}
        try:
            version = json.loads(rows.get("schema_version", "null"))
        except ValueError:
            version = rows.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"index {self.path} has schema version {version}, this frametok reads version {SCHEMA_VERSION}: "
                "index into a new --db folder (or delete this one)"
            )

    def compact(self) -> None:
        """Merge the small fragments that many appends leave, and drop old versions."""
        import datetime

        for name in ("frames", "tracks", "videos"):
            table = self.table(name)
            if table is None:
                continue
            try:
                with warnings.catch_warnings():  # "removes every version except the latest": what we want
                    warnings.simplefilter("ignore", UserWarning)
                    table.optimize(cleanup_older_than=datetime.timedelta(seconds=0))
            except Exception:  # compaction is an optimisation; a failure leaves a valid (bigger) index
                continue

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
