"""The DINOv2 encoder from ../shared: its grid, its context token, and sensible similarities."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from frametok.models.encoder import Encoder
from frametok.models.session import create_session
from frametok.registry import resolve_model


@pytest.fixture(scope="module")
def encoder(shared_models: Path) -> Encoder:
    files = resolve_model("dinov2_vits14", "encoder", [shared_models], allow_online=False)
    return Encoder(files.manifest, create_session(files, ("cpu",), threads=2))  # type: ignore[arg-type]


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_grid_and_cls_context(encoder: Encoder, shared_media: Path) -> None:
    m = encoder.manifest
    assert (m.grid_hw, m.embed_dim, m.prefix_tokens, m.context) == ((16, 16), 384, 1, "cls")
    img = _rgb(shared_media / "bus.jpg")
    out = encoder([img, img])
    assert out.patches.shape == (2, 16, 16, 384) and out.context.shape == (2, 384)
    np.testing.assert_allclose(out.patches[0], out.patches[1], atol=1e-4)
    h, w = m.input_size_hw
    batch = np.empty((1, 3, h, w), np.float32)
    encoder.preprocess(img, batch[0])
    raw = encoder.infer(batch)
    np.testing.assert_allclose(out.context[0], raw[0, 0], atol=1e-4)  # token 0 is CLS


def test_similar_images_are_closer(encoder: Encoder, shared_media: Path) -> None:
    names = ["bus.jpg", "zidane.jpg", "chelsea.png"]
    imgs = [_rgb(shared_media / n) for n in names]
    shifted = np.roll(imgs[0], 12, axis=1)
    out = encoder([*imgs, shifted])
    pooled = out.patches.mean(axis=(1, 2))
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    sim = pooled @ pooled.T
    assert sim[0, 3] > max(sim[0, 1], sim[0, 2])  # a shifted bus is nearer the bus than a cat or people
