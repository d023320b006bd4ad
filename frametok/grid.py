"""Patch-grid updates as packets carry them, and rebuilding the full grid from them (the subscriber side).

A stream's patch grid travels as updates numbered per stream (``n``): a ``key`` holds the whole grid,
a ``delta`` moves every patch by a common ``bias`` and replaces the patches listed in ``index``, a
``skip`` leaves it unchanged. A delta ``n`` applies to the grid after update ``n - 1``; a subscriber
that missed one is out of sync and yields no grid until the next keyframe. How the updates are made
(the publisher side) is ``frametok.models.compression``.

(1.2) With a codebook the same updates carry the stream's code grid ``(gh, gw)`` of int16 codes: whole
(``codes``) or, in a delta, only the cells whose code changed (``code_index``, ``code_values``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["GridDecompressor", "GridUpdate", "UpdateKind", "cosine_per_patch", "shift_grid"]

UpdateKind = Literal["key", "delta", "skip"]
_EPS = 1e-12


@dataclass(frozen=True)
class GridUpdate:
    """One frame's change to a stream's patch grid.

    ``key``: ``values`` is the whole grid (gh, gw, D). ``delta``: ``bias`` (D,) is added to every
    patch (in float32, stored back at the wire precision), then ``index`` holds the flat (row-major)
    indices of the patches sent and ``values`` their tokens (K, D). ``skip``: the encoder did not run
    for this frame; the grid is unchanged.

    Codes (1.2, a codebook configured): ``codes`` is the whole code grid (gh, gw) int16 (a key, or a delta
    that resends it); a delta's ``code_index`` (C,) int32 and ``code_values`` (C,) int16 are the cells whose
    code changed. A key without ``codes`` (one a publisher made from its reference grid for a joiner) leaves
    the subscriber without a code grid until the next ``codes``.
    """

    kind: UpdateKind
    n: int
    grid_hw: tuple[int, int]
    index: NDArray[np.int32] | None = None
    values: NDArray[np.floating] | None = None
    bias: NDArray[np.floating] | None = None
    reason: str = ""
    codes: NDArray[np.int16] | None = None
    code_index: NDArray[np.int32] | None = None
    code_values: NDArray[np.int16] | None = None

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
        self._check_codes(gh, gw)

    def _check_codes(self, gh: int, gw: int) -> None:
        if self.codes is not None and (self.kind == "skip" or self.codes.shape != (gh, gw)):
            raise ValueError(f"codes: a key or delta carries a ({gh}, {gw}) code grid, got a {self.kind} with "
                             f"{self.codes.shape}")
        if (self.code_index is None) != (self.code_values is None):
            raise ValueError("code_index and code_values go together")
        if self.code_index is not None and self.code_values is not None:
            if self.kind != "delta" or self.codes is not None:
                raise ValueError("only a delta without codes carries code_index/code_values")
            if self.code_index.ndim != 1 or self.code_values.shape != self.code_index.shape:
                raise ValueError(f"code delta: expected code_index (C,) and code_values (C,), got "
                                 f"{self.code_index.shape} and {self.code_values.shape}")
            if self.code_index.size and (int(self.code_index.min()) < 0 or int(self.code_index.max()) >= gh * gw):
                raise ValueError(f"code delta: cell index out of range for a {gh}x{gw} grid")
        for name in ("codes", "code_values"):
            arr = getattr(self, name)
            if arr is not None and arr.size and int(arr.min()) < 0:
                raise ValueError(f"{name}: codes are >= 0, got {int(arr.min())}")

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


class GridDecompressor:
    """The subscriber's side, one per stream: rebuilds the full grid, or admits it cannot."""

    def __init__(self) -> None:
        self.grid: NDArray[np.floating] | None = None
        self.n = -1
        self.in_sync = False
        self.lost_sync = 0  # how many times an update could not be applied
        self.codes: NDArray[np.int16] | None = None  # (1.2) the code grid, while in sync
        self.codes_seen = False  # the stream has carried codes (a subscriber then expects them)

    def code_grid(self) -> NDArray[np.int16] | None:
        """The code grid after the last update applied (a copy), or None (no codebook, or out of sync)."""
        return None if self.codes is None or not self.in_sync else self.codes.copy()

    def _apply_codes(self, update: GridUpdate) -> None:
        if update.codes is not None:
            self.codes, self.codes_seen = np.array(update.codes, np.int16, copy=True), True
        elif update.code_index is not None and update.code_values is not None:
            self.codes_seen = True
            if self.codes is not None:
                self.codes.reshape(-1)[update.code_index] = update.code_values
        elif update.kind == "key":
            self.codes = None  # a key without codes: no code grid until the next codes

    def apply(self, update: GridUpdate, copy: bool = True) -> NDArray[np.floating] | None:
        """Apply ``update``; the full grid after it (never an array it will change later; with
        ``copy=False`` the grid held itself, valid until the next update), or None while out of sync."""
        if update.kind == "key":
            assert update.values is not None
            self.grid = np.array(update.values, copy=True)
            self.n, self.in_sync = update.n, True
            self._apply_codes(update)
            return update.values
        fits = self.grid is not None and self.grid.shape[:2] == update.grid_hw and (
            update.kind != "delta" or update.values is None or update.values.shape[1] == self.grid.shape[2])
        if not self.in_sync or not fits or update.n != self.n + 1:  # a delta of another D: out of sync too
            if self.in_sync:
                self.lost_sync += 1
            self.in_sync = False
            self.codes = None
            return None
        assert self.grid is not None
        self._apply_codes(update)
        if update.kind == "delta":
            assert update.index is not None and update.values is not None
            gh, gw = update.grid_hw
            if update.bias is not None:
                self.grid = shift_grid(self.grid, update.bias)
            self.grid.reshape(gh * gw, -1)[update.index] = update.values
        self.n = update.n
        return self.grid.copy() if copy else self.grid
