"""Per-track rows of a finished video, aggregated from its frame rows; each with an embedding of its best
box (the encoder's context token of the crop, decoded again from the source video)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import FrametokError
from .frames import crop, read_frames
from .store import Store, quote, tracks_schema

__all__ = ["build_tracks", "detections_of", "track_embeddings", "track_rows", "write_tracks"]

log = logging.getLogger(__name__)


def detections_of(store: Store, where: str) -> dict[str, np.ndarray]:
    """Every detection of the matching frames, flattened: frame, t_s, class, score, track, xyxy (N, 4)."""
    import pyarrow.compute as pc

    table = store.read("frames", where, ["frame", "t_s", "det_class", "det_score", "det_track", "det_xyxy"])
    if table.num_rows == 0:
        empty_i = np.zeros(0, np.int64)
        return {"frame": empty_i, "t_s": np.zeros(0), "class": empty_i, "score": np.zeros(0, np.float32),
                "track": empty_i, "xyxy": np.zeros((0, 4), np.float32)}
    cls = table.column("det_class").combine_chunks()
    parent = np.asarray(pc.list_parent_indices(cls))
    frames = np.asarray(table.column("frame"))
    times = np.asarray(table.column("t_s"))
    return {
        "frame": frames[parent],
        "t_s": times[parent],
        "class": np.asarray(pc.list_flatten(cls)),
        "score": np.asarray(pc.list_flatten(table.column("det_score").combine_chunks())),
        "track": np.asarray(pc.list_flatten(table.column("det_track").combine_chunks())),
        "xyxy": np.asarray(pc.list_flatten(table.column("det_xyxy").combine_chunks())).reshape(-1, 4),
    }


def build_tracks(store: Store, video: dict[str, Any], encoder: Any | None, class_names: Sequence[str],
                 dim: int) -> int:
    """Replace the video's track rows; returns how many tracks it has. ``dim``: the index's token size
    (0: no embeddings); without an ``encoder`` (a recorded stream has no pixels) embeddings are zeros."""
    rows = track_rows(store, video, class_names)
    embeddings = None
    if dim and encoder is not None:
        embeddings = track_embeddings(video["video"], rows, encoder)
    return write_tracks(store, video, rows, dim, embeddings)


def track_rows(store: Store, video: dict[str, Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """The track rows of a video (without embeddings), aggregated from its frame rows."""
    det = detections_of(store, f"video_id = {quote(video['video_id'])}")
    tracked = det["track"] >= 0
    rows: list[dict[str, Any]] = []
    for tid in np.unique(det["track"][tracked]):
        sel = np.flatnonzero(det["track"] == tid)
        classes, counts = np.unique(det["class"][sel], return_counts=True)
        class_id = int(classes[np.argmax(counts)])
        best = sel[int(np.argmax(det["score"][sel]))]
        rows.append({
            "video_id": video["video_id"], "stream": video["stream"], "track_id": int(tid), "class_id": class_id,
            "class_name": class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id),
            "n_frames": int(np.unique(det["frame"][sel]).size),
            "first_frame": int(det["frame"][sel].min()), "last_frame": int(det["frame"][sel].max()),
            "first_s": float(det["t_s"][sel].min()), "last_s": float(det["t_s"][sel].max()),
            "best_frame": int(det["frame"][best]), "best_score": float(det["score"][best]),
            "best_xyxy": det["xyxy"][best].astype(np.float32),
        })
    return rows


def write_tracks(store: Store, video: dict[str, Any], rows: list[dict[str, Any]], dim: int,
                 embeddings: Sequence[np.ndarray] | None = None) -> int:
    """Replace the video's track rows with ``rows`` (``embeddings``: one per row; None: zeros)."""
    from .writer import rows_table

    schema = tracks_schema(dim)
    if dim:
        vectors = list(embeddings) if embeddings is not None else [np.zeros(dim, np.float32) for _ in rows]
        for row, emb in zip(rows, vectors, strict=True):
            row["embedding"] = np.asarray(emb, np.float32).reshape(dim)
    table = store.ensure("tracks", schema)
    table.delete(f"video_id = {quote(video['video_id'])}")
    if rows:
        table.add(rows_table(rows, schema))
    return len(rows)


def track_embeddings(path: str, rows: Sequence[dict[str, Any]], encoder: Any) -> list[np.ndarray]:
    """The encoder's context token of each row's best box, decoded again from ``path`` (zeros where the
    frame cannot be read); ``encoder``: an :data:`~frametok.index.encode.QueryEncoder`."""
    return _embeddings(path, list(rows), encoder)


def _embeddings(path: str, rows: list[dict[str, Any]], encoder: Any) -> list[np.ndarray]:
    from .encode import embed_dim, encode_images

    dim = embed_dim(encoder)
    zeros = [np.zeros(dim, np.float32) for _ in rows]
    if not rows:
        return zeros
    try:
        frames = read_frames(path, {r["best_frame"] for r in rows})
    except FrametokError as exc:
        log.warning("no track embeddings for %s: %s", path, exc)
        return zeros
    todo = [i for i, r in enumerate(rows) if r["best_frame"] in frames]
    crops = [crop(frames[rows[i]["best_frame"]], rows[i]["best_xyxy"]) for i in todo]
    vectors = encode_images(encoder, crops).context
    for i, vec in zip(todo, vectors, strict=True):
        zeros[i] = vec
    return zeros
