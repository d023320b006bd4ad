"""Soft tokens derived from a patch grid: pooled content tokens, query-conditioned context tokens,
and the cheap pixel test that lets the worker skip the encoder on frames that did not change."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["MOTION_CELL", "MOTION_THRESHOLD", "MOTION_THUMB_WH", "QueryBank", "pixel_change", "pool_grid",
           "thumbnail"]

_THUMB_WH = (32, 24)
# the worker's motion test (motion gating): calibrated with bench/motion.py so that reused tokens keep
# cosine >= 1 - tau (0.05) to the encoder's real output on its clips; a measured bound, not a constructed one
MOTION_THUMB_WH = (64, 48)
MOTION_CELL = 2
MOTION_THRESHOLD = 0.02


def pool_grid(patches: NDArray[np.floating], pool: int) -> NDArray[np.float32]:
    """Average-pool (B, gh, gw, D) grids to (B, pool, pool, D) (adaptive bins, as in adaptive pooling)."""
    b, gh, gw, d = patches.shape
    out = np.empty((b, pool, pool, d), np.float32)
    for i in range(pool):
        y0, y1 = (i * gh) // pool, math.ceil((i + 1) * gh / pool)
        for j in range(pool):
            x0, x1 = (j * gw) // pool, math.ceil((j + 1) * gw / pool)
            out[:, i, j] = patches[:, y0:y1, x0:x1].mean(axis=(1, 2))
    return out


def _unit(x: NDArray[np.floating], axis: int = -1) -> NDArray[np.float32]:
    x32 = x.astype(np.float32, copy=False)
    unit: NDArray[np.float32] = x32 / np.maximum(np.linalg.norm(x32, axis=axis, keepdims=True), 1e-12)
    return unit


@dataclass(frozen=True)
class QueryBank:
    """Query vectors in the encoder's token space; each attends over a frame's patch tokens.

    For a query ``q`` and patch tokens ``P``: weights ``softmax(cos(P_i, q) / temperature)``, the
    query-conditioned context token ``sum_i w_i P_i``, and the score ``max_i cos(P_i, q)`` (how much
    the best-matching patch looks like the query).
    """

    names: tuple[str, ...]
    vectors: NDArray[np.float32]  # (Q, D), unit length
    temperature: float = 0.1

    @classmethod
    def from_vectors(cls, names: Sequence[str], vectors: NDArray[np.floating]) -> QueryBank:
        vecs = np.asarray(vectors, np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(names):
            raise ValueError(f"expected ({len(names)}, D) query vectors, got {vecs.shape}")
        return cls(tuple(names), _unit(vecs))

    def attend(self, patches: NDArray[np.floating]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(B, gh, gw, D) grids -> query tokens (B, Q, D) and scores (B, Q)."""
        b, gh, gw, d = patches.shape
        if d != self.vectors.shape[1]:
            raise ValueError(f"queries have {self.vectors.shape[1]} dims, the encoder's tokens {d}")
        flat = patches.reshape(b, gh * gw, d).astype(np.float32, copy=False)
        sim = _unit(flat) @ self.vectors.T  # (B, N, Q)
        logits = sim / self.temperature
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        tokens = np.einsum("bnq,bnd->bqd", weights, flat)
        return tokens.astype(np.float32), sim.max(axis=1).astype(np.float32)


def thumbnail(frame_rgb: NDArray[np.uint8], size_wh: tuple[int, int] = _THUMB_WH) -> NDArray[np.float32]:
    """A tiny grey image of the frame, for :func:`pixel_change`."""
    small = cv2.resize(frame_rgb, size_wh, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), np.float32) / 255.0


def pixel_change(a: NDArray[np.float32], b: NDArray[np.float32], cell: int = 4) -> float:
    """How much the most changed region of two thumbnails changed: the largest mean absolute
    difference over ``cell`` x ``cell`` blocks (0..1). A person walking in a corner counts, even
    when the frame as a whole barely changed."""
    diff = np.abs(a - b)
    h, w = diff.shape[0] // cell * cell, diff.shape[1] // cell * cell
    blocks = diff[:h, :w].reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))
    return float(blocks.max())
