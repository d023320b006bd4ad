"""Turn the configured queries (exemplar images, crops, .npy vectors) into a QueryBank."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ...config import QueryConfig
from ...errors import ConfigError
from ...models.encoder import Encoder
from ...models.soft_tokens import QueryBank

__all__ = ["build_query_bank"]


def _image_vector(query: QueryConfig, encoder: Encoder) -> np.ndarray:
    path = Path(query.image or "")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"query {query.name!r}: cannot read image {path}")
    if query.crop_xyxy is not None:
        x1, y1, x2, y2 = query.crop_xyxy
        h, w = bgr.shape[:2]
        if x2 > w or y2 > h:
            raise ConfigError(
                f"query {query.name!r}: crop_xyxy {query.crop_xyxy} lies outside the {w}x{h} image {path}"
            )
        bgr = bgr[y1:y2, x1:x2]
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    # the mean of the exemplar's patch tokens: the same space as the frame's patch tokens
    return np.asarray(encoder([rgb]).patches[0].mean(axis=(0, 1)), np.float32)


def _npy_vector(query: QueryConfig, dim: int) -> np.ndarray:
    path = Path(query.vector or "")
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"query {query.name!r}: cannot read vector file {path}: {exc}") from exc
    vector = np.asarray(vector, np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise ConfigError(
            f"query {query.name!r}: {path} holds {vector.size} values, the encoder's tokens have {dim}"
        )
    return vector


def build_query_bank(queries: Sequence[QueryConfig], encoder: Encoder) -> QueryBank:
    """Encode exemplar images with ``encoder`` and read vectors; errors name the query and file."""
    dim = encoder.manifest.embed_dim
    vectors = [_image_vector(q, encoder) if q.image else _npy_vector(q, dim) for q in queries]
    return QueryBank.from_vectors([q.name for q in queries], np.stack(vectors))
