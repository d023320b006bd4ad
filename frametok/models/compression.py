"""Cross-frame compression of patch-token grids (the publisher side).

The publisher keeps, per stream, a reference grid equal to what every in-sync subscriber holds. Each
delta first moves every patch of the reference by a common ``bias`` vector (the mean change of
the grid: image encoders such as DINOv2 shift all their tokens a little when anything in the frame
changes, and without it the stale patches make the rebuilt grid lag behind the video), then sends
the patch tokens whose cosine distance to that moved reference still exceeds ``tau``; the reference
is then set to the values sent (at wire precision). So every patch token a subscriber rebuilds has
cosine >= 1 - tau to the encoder's true output, up to the wire precision. Full grids (keyframes) go
out on the first frame, every ``keyframe_interval`` updates, on a scene cut (more than
``scene_cut_share`` of the patches changed) and when asked for.

Updates are numbered per stream (``n``): a delta ``n`` applies to the grid after update ``n - 1``;
a subscriber that missed one is out of sync and yields no grid until the next keyframe.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..grid import GridUpdate, cosine_per_patch, shift_grid

__all__ = ["GridCompressor"]


class GridCompressor:
    """The publisher's side, one per stream."""

    def __init__(
        self,
        tau: float = 0.05,
        keyframe_interval: int = 100,
        scene_cut_share: float = 0.5,
        wire_dtype: str = "float16",
    ) -> None:
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"tau: expected 0 <= tau < 1, got {tau}")
        self.tau = tau
        self.keyframe_interval = keyframe_interval
        self.scene_cut_share = scene_cut_share
        self.wire_dtype = np.dtype(wire_dtype)
        self.reference: NDArray[np.floating] | None = None  # at wire precision
        self.n = -1
        self._since_key = 0
        self._key_requested = True
        self.tokens_total = 0
        self.tokens_sent = 0
        self.keyframes = 0

    def request_keyframe(self) -> None:
        """Make the next update a keyframe (a subscriber joined or lost sync)."""
        self._key_requested = True

    def _next(self) -> int:
        self.n += 1
        return self.n

    def _key(self, grid: NDArray[np.floating], reason: str) -> GridUpdate:
        values = np.ascontiguousarray(grid, dtype=self.wire_dtype)
        self.reference = values.copy()
        self._since_key = 0
        self._key_requested = False
        self.keyframes += 1
        gh, gw = grid.shape[:2]
        self.tokens_sent += gh * gw
        return GridUpdate("key", self._next(), (gh, gw), values=values, reason=reason)

    def encode(self, grid: NDArray[np.floating]) -> GridUpdate:
        """The update that brings subscribers from the reference to within ``tau`` of ``grid`` (gh, gw, D)."""
        if grid.ndim != 3:
            raise ValueError(f"grid: expected (gh, gw, D), got {grid.shape}")
        gh, gw, _ = grid.shape
        self.tokens_total += gh * gw
        ref = self.reference
        if ref is None or ref.shape != grid.shape:
            return self._key(grid, "first" if ref is None else "shape")
        if self._key_requested:
            return self._key(grid, "request")
        if self.keyframe_interval and self._since_key + 1 >= self.keyframe_interval:
            return self._key(grid, "interval")
        bias = np.asarray((grid - ref.astype(np.float32)).mean(axis=(0, 1)), dtype=self.wire_dtype)
        moved = shift_grid(ref, bias)
        changed = (1.0 - cosine_per_patch(grid, moved)) > self.tau
        if changed.mean() > self.scene_cut_share:
            return self._key(grid, "scene_cut")
        flat = np.flatnonzero(changed.reshape(-1)).astype(np.int32)
        values = np.ascontiguousarray(grid.reshape(gh * gw, -1)[flat], dtype=self.wire_dtype)
        moved.reshape(gh * gw, -1)[flat] = values
        self.reference = moved
        self._since_key += 1
        self.tokens_sent += int(flat.size)
        return GridUpdate("delta", self._next(), (gh, gw), index=flat, values=values, bias=bias)

    def skip(self) -> GridUpdate:
        """The update for a frame whose encoder run was skipped (nothing changed)."""
        if self.reference is None:
            raise ValueError("cannot skip before the first grid was sent")
        gh, gw = self.reference.shape[:2]
        self.tokens_total += gh * gw
        self._since_key += 1
        return GridUpdate("skip", self._next(), (gh, gw))
