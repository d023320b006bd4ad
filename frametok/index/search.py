"""Queries over an index: class and count filters, time ranges, and similarity to an example image.

Similarity has two stages. Tokens: the query image's context token is compared (LanceDB vector search,
cosine) with every frame's context token and with each track's embedding (the context token of its best
box's crop); its mean patch token with the frames' content tokens. Objects: within the best-matching
tracks, every frame's box is decoded again from the source video and compared with the query image
(normalised cross-correlation), which finds the very frame a crop came from. A frame's score is the best
of its token and object scores. With a codebook, frames can also be ranked by how like a given frame their
codes are (:mod:`frametok.index.codes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from .store import Store, quote

__all__ = ["ClassFilter", "Hit", "Index", "open_index", "parse_filter"]

_FILTER = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*(?:(>=|<=|==|=|>|<)\s*(\d+))?\s*$")
_OPS = {">=": np.greater_equal, "<=": np.less_equal, "==": np.equal, "=": np.equal, ">": np.greater,
        "<": np.less}


@dataclass(frozen=True)
class ClassFilter:
    """Frames with ``count`` (compared by ``op``) detections of class ``name``."""

    name: str
    op: str = ">="
    count: int = 1


def parse_filter(text: str | ClassFilter) -> ClassFilter:
    """``"truck"`` (at least one), ``"person >= 5"``, ``"car == 0"``, ``"dog<2"``."""
    if isinstance(text, ClassFilter):
        return text
    match = _FILTER.match(text)
    if not match:
        raise ConfigError(f"cannot read the filter {text!r}: expected CLASS or CLASS OP N, e.g. 'person >= 5'")
    name, op, count = match.groups()
    return ClassFilter(name.strip(), op or ">=", int(count) if count is not None else 1)


@dataclass(frozen=True)
class Hit:
    """One frame that matched: where (video, stream, frame, time), how well, and the boxes that matched."""

    video: str
    stream: str
    frame: int
    t_s: float
    score: float
    match: str  # classes | context | content | object | codes
    counts: dict[str, int] = field(default_factory=dict)
    boxes: list[list[float]] = field(default_factory=list)  # xyxy of the detections that matched
    video_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Index:
    """An index made by ``frametok index`` or ``frametok record`` (read-only use)."""

    def __init__(self, path: str | Path, models_dirs: Sequence[str] = ()) -> None:
        self.store = Store(path, create=False)
        self.models_dirs = tuple(models_dirs)
        self._encoders: dict[str, Any] = {}

    def videos(self) -> list[dict[str, Any]]:
        return self.store.video_rows()

    def tracks(self, where: str | None = None) -> list[dict[str, Any]]:
        table = self.store.table("tracks")
        cols = [f.name for f in table.schema] if table is not None else []
        return list(self.store.read("tracks", where, [c for c in cols if c != "embedding"]).to_pylist())

    # ------------------------------------------------------------------ search

    def search(self, filters: Sequence[str | ClassFilter] = (), *, image: str | Path | None = None,
               crop_xyxy: Sequence[int] | None = None, t_from: float | None = None, t_to: float | None = None,
               video: str | None = None, limit: int | None = 20, object_tracks: int = 64,
               like_codes: str | tuple[str, int] | None = None) -> list[Hit]:
        """Frames matching every class filter, in the time range and video (a path or part of one), ranked
        by similarity to ``image`` (cropped to ``crop_xyxy``) when given, or to the code histogram of the
        frame ``like_codes`` (``VIDEO:FRAME``: a video id or part of its path; histogram intersection, see
        :mod:`frametok.index.codes`; frames without a histogram are left out), else in time order.

        ``object_tracks``: how many tracks (the best by embedding) have their boxes compared with the query's
        pixels. Crop embeddings of small people are weak identifiers (on vtest.avi the right track ranked
        anywhere from 1st to 32nd of 38), so the default shortlist is wide."""
        parsed = [parse_filter(f) for f in filters]
        if image is not None and like_codes is not None:
            raise ConfigError("search: give --image or --like-codes, not both")
        every = {v["video_id"]: v for v in self.videos()}
        videos = {k: v for k, v in every.items() if video is None or video in v["video"]}
        like = None
        if like_codes is not None:
            from .codes import parse_like_codes, query_hist

            like = query_hist(self.store, every, *parse_like_codes(like_codes))
        if not videos:
            return []
        where = [f"video_id IN ({', '.join(quote(v) for v in videos)})"]
        if t_from is not None:
            where.append(f"t_s >= {float(t_from)!r}")
        if t_to is not None:
            where.append(f"t_s <= {float(t_to)!r}")
        sql = " AND ".join(where)
        table = self.store.read("frames", sql, ["video_id", "stream", "frame", "t_s", "det_class", "det_score",
                                               "det_xyxy", "det_track"])
        if table.num_rows == 0:
            return []
        rows = _Rows(table)
        keep = np.ones(table.num_rows, bool)
        counts: dict[str, NDArray[np.int64]] = {}
        for flt in parsed:
            n = rows.class_counts(flt.name, videos)
            counts[flt.name] = n
            keep &= _OPS[flt.op](n, flt.count)
        scores = np.where(keep, rows.class_score([f.name for f in parsed], videos), 0.0)
        kind = np.full(table.num_rows, "classes", dtype=object)
        if image is not None:
            scores, kind = self._similarity(rows, sql, image, crop_xyxy, videos, object_tracks)
        elif like is not None:
            scores, kind = self._like_codes(rows, sql, like, keep)
        order = np.flatnonzero(keep)
        if image is not None or like is not None:
            order = order[np.argsort(-scores[order], kind="stable")]
        else:
            order = order[np.lexsort((rows.frame[order], rows.video_id[order]))]
        if limit:
            order = order[:limit]
        names_of = {vid: json.loads(v["class_names"]) for vid, v in videos.items()}
        hits = []
        for i in order:
            vid = str(rows.video_id[i])
            wanted = [f.name for f in parsed]
            hits.append(Hit(
                video=videos[vid]["video"], stream=str(rows.stream[i]), frame=int(rows.frame[i]),
                t_s=float(rows.t_s[i]), score=round(float(scores[i]), 4), match=str(kind[i]),
                counts={name: int(c[i]) for name, c in counts.items()},
                boxes=rows.boxes(int(i), wanted, names_of[vid]) if wanted else [], video_id=vid,
            ))
        return hits

    # ------------------------------------------------------------------ similarity

    def _encoder(self, video: dict[str, Any]) -> Any:
        """The model that made the video's soft tokens (an encoder, or the detector with its neck), loaded once."""
        from .encode import load_query_encoder

        key = f"{video['encoder']}\0{video['models']}"
        if key not in self._encoders:
            self._encoders[key] = load_query_encoder(video, self.models_dirs)
        return self._encoders[key]

    def _like_codes(self, rows: _Rows, sql: str, like: NDArray[np.float64],
                    keep: NDArray[np.bool_]) -> tuple[NDArray[np.float64], Any]:
        """Histogram intersection of every frame's codes with ``like``; frames without codes leave ``keep``."""
        from .codes import hist_matrix, intersection

        table = self.store.read("frames", sql, ["video_id", "frame", "code_hist"])
        idx = rows.lookup(table.column("video_id").to_pylist(), table.column("frame").to_pylist())
        shares, have = hist_matrix(table.column("code_hist").to_pylist())
        scores = np.full(len(rows.frame), -1.0)
        ok = (idx >= 0) & have
        scores[idx[ok]] = intersection(shares[ok], like)
        keep &= scores >= 0.0
        return scores, np.full(len(rows.frame), "codes", dtype=object)

    def _similarity(self, rows: _Rows, sql: str, image: str | Path, crop_xyxy: Sequence[int] | None,
                    videos: dict[str, dict[str, Any]], object_tracks: int) -> tuple[NDArray[np.float64], Any]:
        from .encode import encode_images, read_image

        query_rgb = read_image(image, crop_xyxy)
        encoder = self._encoder(next(iter(videos.values())))
        q = encode_images(encoder, [query_rgb])
        n = len(rows.frame)
        scores = np.full(n, -1.0)
        kind = np.full(n, "context", dtype=object)
        frames_table: Any = self.store.table("frames")
        columns = {f.name for f in frames_table.schema}
        if "ctx" not in columns:
            raise ConfigError(f"index {self.store.path} has no soft tokens (made with --encoder none)")
        for column, vector in (("ctx", q.context[0]), ("content", q.mean[0])):
            if column not in columns or frames_table.schema.field(column).type.list_size != vector.size:
                continue
            found = (frames_table.search(vector, vector_column_name=column).metric("cosine").where(sql)
                     .select(["video_id", "frame", "_distance"]).limit(n).to_arrow())
            sim = 1.0 - np.asarray(found.column("_distance"), np.float64)
            idx = rows.lookup(found.column("video_id").to_pylist(), found.column("frame").to_pylist())
            ok = idx >= 0
            better = sim[ok] > scores[idx[ok]]
            scores[idx[ok][better]] = sim[ok][better]
            kind[idx[ok][better]] = "context" if column == "ctx" else "content"
        tracks = self.store.table("tracks")
        if tracks is not None and "embedding" in {f.name for f in tracks.schema} and object_tracks > 0:
            best = (tracks.search(q.context[0], vector_column_name="embedding").metric("cosine")
                    .where(f"video_id IN ({', '.join(quote(v) for v in videos)})").limit(object_tracks).to_arrow())
            self._rerank(best.drop_columns(["embedding"]).to_pylist(), videos, query_rgb, rows, scores, kind)
        return scores, kind

    @staticmethod
    def _rerank(tracks: list[dict[str, Any]], videos: dict[str, dict[str, Any]], query_rgb: NDArray[np.uint8],
                rows: _Rows, scores: NDArray[np.float64], kind: Any) -> None:
        """Score every box of these tracks by its pixels' match with the query (one decode per video)."""
        from .frames import read_frames

        boxes: dict[str, list[tuple[int, int, NDArray[Any]]]] = {}
        for track in tracks:
            found = rows.track_boxes(track["video_id"], int(track["track_id"]), int(track["first_frame"]),
                                     int(track["last_frame"]))
            boxes.setdefault(track["video_id"], []).extend((f, i, xyxy) for f, (i, xyxy) in found.items())
        for video_id, todo in boxes.items():
            path = videos[video_id]["video"]
            if not Path(path).is_file():
                continue  # a recorded stream, or a file that moved: token scores only
            try:
                frames = read_frames(path, {f for f, _, _ in todo})
            except Exception:  # a file that changed or broke since: token scores only
                continue
            for frame, i, xyxy in todo:
                if frame not in frames:
                    continue
                score = _ncc(query_rgb, frames[frame], xyxy)
                if score > scores[i]:
                    scores[i] = score
                    kind[i] = "object"


def _ncc(query_rgb: NDArray[np.uint8], frame_rgb: NDArray[np.uint8], xyxy: Any) -> float:
    """How well the query image matches the box (and a margin around it) of a frame: the best normalised
    cross-correlation over the box grown by half its size per side, of the query at the frame's own scale
    (a crop of a frame of this video) and of the query stretched to the box (an image from elsewhere)."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    bw, bh = max(x2 - x1, 2.0), max(y2 - y1, 2.0)
    qh, qw = query_rgb.shape[:2]
    scale = 64.0 / max(bw, bh)  # compare at about 64 pixels
    h, w = frame_rgb.shape[:2]
    mx, my = bw * 0.5, bh * 0.5
    c0, r0 = int(max(0, x1 - mx)), int(max(0, y1 - my))
    c1, r1 = int(min(w, x2 + mx)), int(min(h, y2 + my))
    if c1 - c0 < 2 or r1 - r0 < 2:
        return -1.0
    region = cv2.resize(frame_rgb[r0:r1, c0:c1], (max(1, round((c1 - c0) * scale)), max(1, round((r1 - r0) * scale))),
                        interpolation=cv2.INTER_AREA)
    best = -1.0
    for tw, th in {(round(qw * scale), round(qh * scale)), (round(bw * scale), round(bh * scale))}:
        if tw < 4 or th < 4 or tw > region.shape[1] or th > region.shape[0]:
            continue
        template = cv2.resize(query_rgb, (tw, th), interpolation=cv2.INTER_AREA)
        result = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)
        if result.size:
            best = max(best, float(np.nanmax(result)))
    return best


class _Rows:
    """The frame rows of a query, as numpy columns, with their detections flattened."""

    def __init__(self, table: Any) -> None:
        import pyarrow.compute as pc

        self.video_id = np.asarray(table.column("video_id").to_pylist(), dtype=object)
        self.stream = np.asarray(table.column("stream").to_pylist(), dtype=object)
        self.frame = np.asarray(table.column("frame"))
        self.t_s = np.asarray(table.column("t_s"))
        cls = table.column("det_class").combine_chunks()
        self.parent = np.asarray(pc.list_parent_indices(cls))
        self.cls = np.asarray(pc.list_flatten(cls))
        self.score = np.asarray(pc.list_flatten(table.column("det_score").combine_chunks()))
        self.xyxy = np.asarray(pc.list_flatten(table.column("det_xyxy").combine_chunks())).reshape(-1, 4)
        self.offsets = np.asarray(cls.offsets)
        self._where = {(v, int(f)): i for i, (v, f) in enumerate(zip(self.video_id, self.frame, strict=True))}
        self._tracks: NDArray[np.int64] | None = None
        self._table = table

    def _class_ids(self, name: str, videos: dict[str, dict[str, Any]]) -> NDArray[np.bool_]:
        """Per detection: is it of class ``name`` (per video: its detector's class names)?"""
        mine = np.zeros(self.cls.size, bool)
        det_video = self.video_id[self.parent] if self.cls.size else np.zeros(0, object)
        known = False
        for vid, video in videos.items():
            names = json.loads(video["class_names"] or "[]")
            if name in names:
                known = True
                mine |= (det_video == vid) & (self.cls == names.index(name))
        if not known:
            all_names = sorted({n for v in videos.values() for n in json.loads(v["class_names"] or "[]")})
            raise ConfigError(f"unknown class {name!r}; the index knows: {', '.join(all_names) or 'none'}")
        return mine

    def class_counts(self, name: str, videos: dict[str, dict[str, Any]]) -> NDArray[np.int64]:
        mine = self._class_ids(name, videos)
        return np.bincount(self.parent[mine], minlength=len(self.frame)).astype(np.int64)

    def class_score(self, names: Sequence[str], videos: dict[str, dict[str, Any]]) -> NDArray[np.float64]:
        """Per frame: the best score of a detection of these classes (1.0 without class filters)."""
        if not names:
            return np.ones(len(self.frame))
        mine = np.zeros(self.cls.size, bool)
        for name in names:
            mine |= self._class_ids(name, videos)
        best = np.zeros(len(self.frame))
        np.maximum.at(best, self.parent[mine], self.score[mine].astype(np.float64))
        return best

    def boxes(self, i: int, names: Sequence[str], class_names: Sequence[str]) -> list[list[float]]:
        ids = {class_names.index(n) for n in names if n in class_names}
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return [[round(float(v), 1) for v in self.xyxy[j]] for j in range(lo, hi) if int(self.cls[j]) in ids]

    def lookup(self, video_ids: Sequence[str], frames: Sequence[int]) -> NDArray[np.int64]:
        return np.asarray([self._where.get((v, int(f)), -1) for v, f in zip(video_ids, frames, strict=True)],
                          dtype=np.int64)

    def track_boxes(self, video_id: str, track_id: int, first: int, last: int) -> dict[int, tuple[int, NDArray[Any]]]:
        """frame -> (row, xyxy) of one track's box in every frame of the query that has it."""
        import pyarrow.compute as pc

        if self._tracks is None:
            self._tracks = np.asarray(pc.list_flatten(self._table.column("det_track").combine_chunks()))
        out: dict[int, tuple[int, NDArray[Any]]] = {}
        sel = np.flatnonzero(self._tracks == track_id)
        for j in sel:
            i = int(self.parent[j])
            if self.video_id[i] == video_id and first <= int(self.frame[i]) <= last:
                out[int(self.frame[i])] = (i, self.xyxy[j])
        return out


def open_index(path: str | Path, models_dirs: Sequence[str] = ()) -> Index:
    """The index at ``path`` (a ConfigError when there is none or its schema version differs)."""
    return Index(path, models_dirs)
