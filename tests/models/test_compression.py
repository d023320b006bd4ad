"""Cross-frame grid compression: rebuilt grids stay within tau of the truth, and out of sync means no grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frametok.grid import GridDecompressor, GridUpdate, cosine_per_patch
from frametok.models.compression import GridCompressor

WIRE_SLACK = 2e-3  # float16 rounding of a sent token


@st.composite
def sequences(draw: st.DrawFn) -> tuple[list[np.ndarray], float, int, list[bool], int]:
    gh, gw, d = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(2, 12))
    frames = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    drift = draw(st.floats(0.0, 0.6))
    grid = rng.standard_normal((gh, gw, d)).astype(np.float32) + 0.5
    grids = []
    for _ in range(frames):
        # most patches drift a little, some jump, sometimes everything changes (scene cut)
        grid = grid + drift * rng.standard_normal(grid.shape).astype(np.float32) * (rng.random((gh, gw, 1)) < 0.3)
        if rng.random() < 0.05:
            grid = rng.standard_normal(grid.shape).astype(np.float32) + 0.5
        grids.append(grid.copy())
    tau = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2]))
    interval = draw(st.sampled_from([0, 5, 100]))
    delivered = draw(st.lists(st.booleans(), min_size=frames, max_size=frames))  # False: lost on the way
    join = draw(st.integers(0, frames - 1))  # the subscriber joins here (late joiner)
    return grids, tau, interval, delivered, join


@settings(max_examples=400, deadline=None)
@given(sequences())
def test_rebuilt_grids_are_faithful_or_absent(case: tuple[list[np.ndarray], float, int, list[bool], int]) -> None:
    grids, tau, interval, delivered, join = case
    comp = GridCompressor(tau=tau, keyframe_interval=interval, scene_cut_share=0.5)
    dec = GridDecompressor()
    synced_through = None  # the update number up to which the subscriber has seen every update since a key
    for i, grid in enumerate(grids):
        update = comp.encode(grid)
        if i < join or not delivered[i]:
            continue
        rebuilt = dec.apply(update)
        if update.kind == "key" or (synced_through is not None and update.n == synced_through + 1):
            synced_through = update.n
        else:
            synced_through = None
        if synced_through is None:
            assert rebuilt is None, "a subscriber that missed an update must not yield a grid"
            comp.request_keyframe()  # as the SDK does on a gap
            continue
        assert rebuilt is not None
        cos = cosine_per_patch(rebuilt, grid)
        assert cos.min() >= 1.0 - tau - WIRE_SLACK, (cos.min(), tau, update.kind)


def test_static_grid_sends_nothing_after_the_keyframe() -> None:
    grid = np.random.default_rng(0).standard_normal((16, 16, 32)).astype(np.float32)
    comp = GridCompressor(tau=0.05, keyframe_interval=0)
    first = comp.encode(grid)
    assert first.kind == "key" and first.reason == "first" and first.tokens_sent == 256
    for _ in range(10):
        update = comp.encode(grid + 1e-3)
        assert update.kind == "delta" and update.tokens_sent == 0
    assert comp.tokens_sent == 256 and comp.tokens_total == 11 * 256


def test_keyframe_reasons() -> None:
    rng = np.random.default_rng(1)
    grid = rng.standard_normal((4, 4, 8)).astype(np.float32)
    comp = GridCompressor(tau=0.05, keyframe_interval=3, scene_cut_share=0.5)
    kinds = [comp.encode(grid).reason for _ in range(4)]
    assert kinds == ["first", "", "", "interval"]
    assert comp.encode(rng.standard_normal((4, 4, 8)).astype(np.float32)).reason == "scene_cut"
    comp.request_keyframe()
    assert comp.encode(grid).reason == "request"


def test_skip_keeps_the_grid_and_counts() -> None:
    grid = np.ones((2, 2, 4), np.float32)
    comp, dec = GridCompressor(), GridDecompressor()
    dec.apply(comp.encode(grid))
    skipped = comp.skip()
    assert skipped.kind == "skip" and skipped.tokens_sent == 0
    out = dec.apply(skipped)
    assert out is not None and np.allclose(out, grid)
    # a lost skip also breaks the chain: the numbering says something was missed
    comp.skip()
    assert dec.apply(comp.encode(grid)) is None


def test_update_checks_itself() -> None:
    with pytest.raises(ValueError, match="out of range"):
        GridUpdate("delta", 1, (2, 2), index=np.array([4], np.int32), values=np.zeros((1, 3), np.float16))
    with pytest.raises(ValueError, match="key update needs"):
        GridUpdate("key", 0, (2, 2), values=np.zeros((3, 2, 4)))


def test_a_delta_of_another_dimension_puts_the_subscriber_out_of_sync() -> None:
    """docs/protocol.md §5.1: a delta that does not fit the grid held leaves the subscriber out of sync
    (no grid until the next key), never an exception or a silently broadcast grid."""
    dec = GridDecompressor()
    key = np.ones((2, 2, 4), np.float16)
    assert dec.apply(GridUpdate("key", 0, (2, 2), values=key)) is not None
    for d in (1, 8):  # D 1 would broadcast into the grid; 8 would not fit
        delta = GridUpdate("delta", 1, (2, 2), index=np.array([0], np.int32), values=np.zeros((1, d), np.float16))
        assert dec.apply(delta) is None and not dec.in_sync
        dec.apply(GridUpdate("key", 0, (2, 2), values=key))
