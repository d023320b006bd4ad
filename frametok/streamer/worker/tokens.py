"""Per-stream soft-token state in the worker: compression, the encoder skip test, and the tokens
repeated for frames whose encoder run was skipped."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ...config import EncoderConfig
from ...grid import GridUpdate
from ...models.codebook import Codebook, load_codebook
from ...models.compression import GridCompressor
from ...models.soft_tokens import QueryBank, pixel_change, pool_grid, thumbnail

__all__ = ["SoftTokenStream", "SoftTokens"]


@dataclass(frozen=True)
class SoftTokens:
    """One frame's soft tokens, at wire precision, ready for a TokenPacket."""

    context: NDArray[Any] | None = None
    content: NDArray[Any] | None = None
    query_tokens: NDArray[Any] | None = None
    query_scores: NDArray[np.float32] | None = None
    patches: NDArray[Any] | None = None  # the full grid, when not compressed
    grid_update: GridUpdate | None = None


class SoftTokenStream:
    """What the worker remembers of one stream's soft tokens between frames."""

    def __init__(self, config: EncoderConfig, queries: QueryBank | None = None) -> None:
        self.config = config
        self.queries = queries
        self.wire = np.dtype(config.dtype)
        self.compressor = (
            GridCompressor(config.tau, config.keyframe_interval, config.scene_cut_share, config.dtype)
            if config.patches and config.compress else None
        )
        # (1.2) grid hard tokens: each patch's code, sent with the grid updates (whole in keys, changes in deltas)
        self.codebook: Codebook | None = (
            load_codebook(config.codebook) if config.codebook and self.compressor is not None else None)
        self._codes: NDArray[np.int16] | None = None  # the code grid subscribers hold
        self._last_thumb: NDArray[np.float32] | None = None
        self._undo_thumb: NDArray[np.float32] | None = None
        self._last: SoftTokens | None = None
        self._settle: NDArray[np.floating] | None = None  # the last grid the encoder made, until a frame follows
        self.skipped = 0
        self.reused = 0  # still frames (motion gating)

    def wants_encoder(self, frame_rgb: NDArray[np.uint8]) -> bool:
        """False when the frame barely differs from the last one chosen for encoding (skipping on).

        Frames are published in order, so the frame a skip refers to is encoded before it is needed.
        """
        if self.config.skip_threshold <= 0.0:
            return True
        thumb = thumbnail(frame_rgb)
        if self._last_thumb is not None and pixel_change(thumb, self._last_thumb) < self.config.skip_threshold:
            return False
        self._undo_thumb, self._last_thumb = self._last_thumb, thumb
        return True

    def discard(self) -> None:
        """The frame just chosen for encoding was overwritten before it was read (live): forget it."""
        self._last_thumb = self._undo_thumb

    def request_keyframe(self) -> None:
        if self.compressor is not None:
            self.compressor.request_keyframe()

    def encoded(self, context: NDArray[np.floating], patches: NDArray[np.floating]) -> SoftTokens:
        """Tokens of a frame the encoder ran on: ``context`` (D,), ``patches`` (gh, gw, D) float32."""
        cfg = self.config
        content = pool_grid(patches[None], cfg.pool)[0].astype(self.wire) if cfg.pool else None
        q_tokens = q_scores = None
        if self.queries is not None:
            attended, scores = self.queries.attend(patches[None])
            q_tokens, q_scores = attended[0].astype(self.wire), scores[0]
        grid = update = None
        if self.compressor is not None:
            update = self._with_codes(self.compressor.encode(patches), patches)
        elif cfg.patches:
            grid = patches.astype(self.wire)
        tokens = SoftTokens(context.astype(self.wire), content, q_tokens, q_scores, grid, update)
        self._last = tokens
        self._settle = patches if self.compressor is not None else None
        return tokens

    def skip(self, reused: bool = False) -> SoftTokens:
        """Tokens of a frame whose encoder run was skipped (its pixels barely changed; ``reused``: a still
        frame of motion gating): the last ones again, the grid unchanged."""
        assert self._last is not None, "a skip always follows an encoded frame of the stream"
        if reused:
            self.reused += 1
        else:
            self.skipped += 1
        last = self._last
        settle, self._settle = self._settle, None
        comp = self.compressor
        if comp is not None:
            update = self._settled_grid(comp, settle) if reused and settle is not None else self._unchanged_grid(comp)
            update = self._codes_unchanged(update)
            return SoftTokens(last.context, last.content, last.query_tokens, last.query_scores, None, update)
        return last

    def _with_codes(self, update: GridUpdate, patches: NDArray[np.floating]) -> GridUpdate:
        """``update`` with the codes of ``patches`` (the encoder's output): whole in a key, else the changed cells."""
        if self.codebook is None:
            return update
        codes = self.codebook.assign(patches)
        previous, self._codes = self._codes, codes
        if update.kind == "key" or previous is None:
            return replace(update, codes=codes)
        changed = np.flatnonzero(codes.reshape(-1) != previous.reshape(-1)).astype(np.int32)
        return replace(update, code_index=changed, code_values=codes.reshape(-1)[changed])

    def _codes_unchanged(self, update: GridUpdate) -> GridUpdate:
        """A frame the encoder did not run on: a key carries the code grid whole, a delta no code change."""
        if self._codes is None or update.kind == "skip":
            return update
        if update.kind == "key":
            return replace(update, codes=self._codes)
        return replace(update, code_index=np.zeros(0, np.int32), code_values=np.zeros(0, np.int16))

    @staticmethod
    def _settled_grid(comp: GridCompressor, grid: NDArray[np.floating]) -> GridUpdate:
        """The first still frame after the models ran: a delta at half of tau towards the grid they made,
        so that the grid subscribers hold through the still stretch is within tau/2 of a real output
        (deltas alone keep it within tau, and reuse adds its own distance on top of that)."""
        tau = comp.tau
        comp.tau = tau / 2
        try:
            return comp.encode(grid)
        finally:
            comp.tau = tau

    @staticmethod
    def _unchanged_grid(comp: GridCompressor) -> GridUpdate:
        """A skip, or, when a keyframe is due (asked for by a joiner, or the interval), the grid subscribers
        hold sent whole: a stream that stays still for long still gives joiners their grid."""
        due = comp._key_requested or (comp.keyframe_interval and comp._since_key + 1 >= comp.keyframe_interval)
        if due and comp.reference is not None:
            return comp.encode(comp.reference.astype(np.float32))  # a key of the reference, bit for bit
        return comp.skip()

    def stats(self) -> dict[str, Any]:
        comp = self.compressor
        return {
            "skipped": self.skipped,
            "reused": self.reused,
            "tokens_total": comp.tokens_total if comp else 0,
            "tokens_sent": comp.tokens_sent if comp else 0,
            "keyframes": comp.keyframes if comp else 0,
        }
