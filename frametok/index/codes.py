"""Frames like a given one by codes: each frame's code histogram (``code_hist``, a codebook's codes counted over
its code grid) compared with the query frame's by histogram intersection.

Intersection of the two histograms as shares, ``sum(min(p, q))``, is the share of grid cells whose codes can
be paired between the frames: 1 for the same bag of codes, 0 for none in common. It weighs every cell alike,
where cosine would be ruled by the few codes that fill most of the grid (floor, wall, sky).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from .store import Store, quote

__all__ = ["hist_matrix", "intersection", "parse_like_codes", "query_hist"]


def parse_like_codes(text: str | tuple[str, int]) -> tuple[str, int]:
    """``VIDEO:FRAME`` (VIDEO: a video id, or text of exactly one video's path) as (video, frame)."""
    if isinstance(text, tuple):
        return text[0], int(text[1])
    video, sep, frame = text.rpartition(":")
    if not sep or not video or not frame.strip().isdigit():
        raise ConfigError(f"--like-codes: expected VIDEO:FRAME (a video id or part of its path), got {text!r}")
    return video, int(frame)


def hist_matrix(hists: Sequence[Any]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Histograms of varying length (counts of codes 0..) as rows of shares, zero-padded; and which rows had one."""
    have = np.asarray([h is not None and len(h) > 0 for h in hists], bool)
    width = max((len(h) for h in hists if h is not None), default=0)
    out = np.zeros((len(hists), max(width, 1)), np.float64)
    for i in np.flatnonzero(have).tolist():
        out[i, : len(hists[i])] = hists[i]
    totals = out.sum(axis=1, keepdims=True)
    return np.divide(out, totals, out=np.zeros_like(out), where=totals > 0), have & (totals[:, 0] > 0)


def intersection(rows: NDArray[np.float64], query: NDArray[np.float64]) -> NDArray[np.float64]:
    """Histogram intersection of each row of shares with ``query`` (shares), padded to a common length."""
    width = max(rows.shape[1], query.size)
    a = np.pad(rows, ((0, 0), (0, width - rows.shape[1])))
    b = np.pad(query, (0, width - query.size))
    out: NDArray[np.float64] = np.minimum(a, b[None]).sum(axis=1)
    return out


def query_hist(store: Store, videos: dict[str, dict[str, Any]], video: str, frame: int) -> NDArray[np.float64]:
    """The code histogram (shares) of frame ``frame`` of ``video`` (a video id, or part of one video's path)."""
    frames = store.table("frames")
    if frames is None or "code_hist" not in frames.schema.names:
        raise ConfigError(f"index {store.path} has no code histograms (it was made without encoder.codebook, "
                          "or before them): --like-codes needs an index made with a codebook")
    match = [v for v in videos if v == video] or [v for v, row in videos.items() if video in row["video"]]
    if len(match) != 1:
        names = ", ".join(f"{v} ({row['video']})" for v, row in videos.items()) or "none"
        raise ConfigError(f"--like-codes: {video!r} names {'no' if not match else len(match)} video(s); "
                          f"the index holds: {names}")
    rows = store.read("frames", f"video_id = {quote(match[0])} AND frame = {int(frame)}", ["code_hist"])
    hist = rows.column("code_hist").to_pylist()[0] if rows.num_rows else None
    if not hist or not sum(hist):
        raise ConfigError(f"--like-codes: frame {frame} of {videos[match[0]]['video']} is "
                          f"{'not in the index' if not rows.num_rows else 'without a code grid'}")
    shares, _ = hist_matrix([hist])
    out: NDArray[np.float64] = shares[0]
    return out
