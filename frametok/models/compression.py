"""Cross-frame compression of patch-token grids (the publisher side and the subscriber side).

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

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["GridCompressor", "GridDecompressor", "GridUpdate", "cosine_per_patch", "shift_grid"]

UpdateKind = Literal["key", "delta", "skip"]
_EPS = 1e-12


@dataclass(frozen=True)
class GridUpdate:
    """One frame's change to a stream's patch grid.

    ``key``: ``values`` is the whole grid (gh, gw, D). ``delta``: ``bias`` (D,) is added to every
    patch (in float32, stored back at the wire precision), then ``index`` holds the flat (row-major)
    indices of the patches sent and ``values`` their tokens (K, D). ``skip``: the encoder did not run
    for this frame; the grid is unchanged.
    """

    kind: UpdateKind
    n: int
    grid_hw: tuple[int, int]
    index: NDArray[np.int32] | None = None
    values: NDArray[np.floating] | None = None
    bias: NDArray[np.floating] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("key", "delta", "skip"):
            raise ValueError(f"kind: expected key, delta or skip, got {self.kind!r}")
        if self.n < 0:
            raise ValueError(f"n: expected >= 0, got {self.n}")
        gh, gw = self.grid_hw
        if gh <= 0 or gw <= 0:
            raise ValueError(f"grid_hw: expected positive (gh, gw), got {self.grid_hw}")
        if self.kind == "key":
            if self.values is None or self.values.ndim != 3 or self.values.shape[:2] != (gh, gw):
                shape = None if self.values is None else self.values.shape
                raise ValueError(f"a key update needs values of shape ({gh}, {gw}, D), got {shape}")
        elif self.kind == "delta":
            if self.index is None or self.values is None:
                raise ValueError("a delta update needs index and values")
            if self.index.ndim != 1 or self.values.ndim != 2 or self.values.shape[0] != self.index.shape[0]:
                raise ValueError(
                    f"delta: expected index (K,) and values (K, D), got {self.index.shape} and {self.values.shape}"
                )
            if self.index.size and (int(self.index.min()) < 0 or int(self.index.max()) >= gh * gw):
                raise ValueError(f"delta: patch index out of range for a {gh}x{gw} grid")
            if self.bias is not None and (self.bias.ndim != 1 or self.bias.shape[0] != self.values.shape[1]):
                raise ValueError(f"delta: bias must be (D,) = ({self.values.shape[1]},), got {self.bias.shape}")
        if self.bias is not None and self.kind != "delta":
            raise ValueError("only a delta update has a bias")

    @property
    def tokens_sent(self) -> int:
        if self.kind == "key":
            return self.grid_hw[0] * self.grid_hw[1]
        return 0 if self.index is None else int(self.index.shape[0])


def cosine_per_patch(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float32]:
    """Cosine similarity of corresponding tokens of two (..., D) arrays (two zero tokens: 1; one: 0)."""
    a32 = a.astype(np.float32, copy=False)
    b32 = b.astype(np.float32, copy=False)
    aa = np.einsum("...d,...d->...", a32, a32)
    bb = np.einsum("...d,...d->...", b32, b32)
    cos = np.einsum("...d,...d->...", a32, b32) / np.sqrt(np.maximum(aa * bb, _EPS))
    a0, b0 = aa <= _EPS, bb <= _EPS
    return np.where(a0 & b0, 1.0, np.where(a0 | b0, 0.0, cos)).astype(np.float32)


def shift_grid(grid: NDArray[np.floating], bias: NDArray[np.floating]) -> NDArray[np.floating]:
    """``grid + bias`` on every patch, computed in float32 and stored at ``grid``'s precision.

    Both sides of the wire compute it exactly so (IEEE float32), so their grids stay identical.
    """
    return (grid.astype(np.float32) + bias.astype(np.float32)).astype(grid.dtype)


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


class GridDecompressor:
    """The subscriber's side, one per stream: rebuilds the full grid, or admits it cannot."""

    def __init__(self) -> None:
        self.grid: NDArray[np.floating] | None = None
        self.n = -1
        self.in_sync = False
        self.lost_sync = 0  # how many times an update could not be applied

    def apply(self, update: GridUpdate) -> NDArray[np.floating] | None:
        """Apply ``update``; the full grid after it (never an array it will change later), or None
        while out of sync."""
        if update.kind == "key":
            assert update.values is not None
            self.grid = np.array(update.values, copy=True)
            self.n, self.in_sync = update.n, True
            return update.values
        if not self.in_sync or self.grid is None or update.n != self.n + 1 or self.grid.shape[:2] != update.grid_hw:
            if self.in_sync:
                self.lost_sync += 1
            self.in_sync = False
            return None
        if update.kind == "delta":
            assert update.index is not None and update.values is not None
            gh, gw = update.grid_hw
            if update.bias is not None:
                self.grid = shift_grid(self.grid, update.bias)
            self.grid.reshape(gh * gw, -1)[update.index] = update.values
        self.n = update.n
        return self.grid.copy()
