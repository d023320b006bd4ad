"""The stream's encoder, loaded again (through the model registry) to encode query images and crops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, ModelError
from ..models.encoder import Encoder

__all__ = ["QueryVectors", "encode_images", "load_encoder", "read_image", "unit"]


def unit(x: NDArray[np.floating]) -> NDArray[np.float32]:
    x32 = np.asarray(x, np.float32)
    out: NDArray[np.float32] = x32 / np.maximum(np.linalg.norm(x32, axis=-1, keepdims=True), 1e-12)
    return out


@dataclass(frozen=True)
class QueryVectors:
    """Unit vectors of images: ``context`` (the encoder's context token) and ``mean`` (mean patch token,
    the space of 1x1 content tokens), each (B, D)."""

    context: NDArray[np.float32]
    mean: NDArray[np.float32]


def load_encoder(ref: str, models_dirs: Sequence[str] = (), expect_id: str | None = None) -> Encoder:
    """The encoder ``ref`` (registry name or path) on CPU; ``expect_id``: the model id the index was made
    with (other weights give tokens in another space: an error)."""
    from ..models.session import create_session
    from ..registry import resolve_model

    if not ref:
        raise ConfigError("this index has no soft tokens (it was made with --encoder none): no image search")
    files = resolve_model(ref, "encoder", tuple(models_dirs))
    if expect_id and files.manifest.model_id != expect_id:
        raise ModelError(
            f"encoder {ref} resolves to {files.manifest.model_id}, the index was made with {expect_id}; "
            "give the same model (--models DIR)"
        )
    return Encoder(files.manifest, create_session(files, ("cpu",)))  # type: ignore[arg-type]


def encode_images(encoder: Encoder, images_rgb: Sequence[NDArray[np.uint8]], batch: int = 8) -> QueryVectors:
    contexts, means = [], []
    for i in range(0, len(images_rgb), batch):
        out = encoder(images_rgb[i : i + batch])
        contexts.append(out.context)
        means.append(out.patches.mean(axis=(1, 2)))
    dim = encoder.manifest.embed_dim
    if not contexts:
        return QueryVectors(np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32))
    return QueryVectors(unit(np.concatenate(contexts)), unit(np.concatenate(means)))


def read_image(path: str | Path, crop_xyxy: Sequence[int] | None = None) -> NDArray[np.uint8]:
    """An RGB image file, optionally cropped to ``crop_xyxy`` (pixels); errors name the file and crop."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"cannot read image {path}")
    if crop_xyxy is not None:
        x1, y1, x2, y2 = (int(v) for v in crop_xyxy)
        h, w = bgr.shape[:2]
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise ConfigError(f"crop {list(crop_xyxy)} lies outside the {w}x{h} image {path}")
        bgr = bgr[y1:y2, x1:x2]
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
