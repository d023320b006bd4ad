"""Image encoder (ViT, DINOv2, CLIP vision tower, ...): frames in, context token and patch grid out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import ModelError
from .manifest import EncoderManifest
from .session import SessionRunner, session_precision

__all__ = ["EncodedFrames", "Encoder"]


@dataclass(frozen=True)
class EncodedFrames:
    """Soft tokens of a batch: ``context`` (B, D) and ``patches`` (B, gh, gw, D), float32."""

    context: NDArray[np.float32]
    patches: NDArray[np.float32]


class Encoder:
    """Runs an ONNX image encoder and splits its tokens into a context token and a patch grid."""

    def __init__(self, manifest: EncoderManifest, session: Any) -> None:
        self.manifest = manifest
        self.session = session
        self.runner = SessionRunner(session, manifest.input_name, manifest.output_name)
        m = manifest
        std = np.asarray(m.std, np.float32).reshape(3, 1, 1)
        self._scale: NDArray[np.float32] = np.float32(m.scale) / std
        self._offset: NDArray[np.float32] = np.asarray(m.mean, np.float32).reshape(3, 1, 1) / std

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"fp16"``: the graph the session runs (the manifest's fp16 variant or not)."""
        return session_precision(self.session)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.manifest.input_size_hw

    def preprocess(self, frame_rgb: NDArray[np.uint8], out: NDArray[np.float32]) -> None:
        """Resize the whole frame to the input size and normalise it into ``out`` (3, H, W)."""
        h, w = self.manifest.input_size_hw
        img: NDArray[np.uint8] = frame_rgb
        if img.shape[:2] != (h, w):
            img = np.asarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), np.uint8)
        if self.manifest.colour == "BGR":
            img = img[..., ::-1]
        np.multiply(img.transpose(2, 0, 1), self._scale, out=out, casting="unsafe")
        out -= self._offset

    def infer(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Raw tokens ``(B, T, D)`` for a preprocessed batch ``(B, 3, H, W)``."""
        m = self.manifest
        if m.batch == "dynamic" or batch.shape[0] == m.batch:
            return np.asarray(self.runner(batch), np.float32)
        step = int(m.batch)
        outs = [
            self.runner(batch[i : i + step])
            for i in range(0, batch.shape[0], step)
        ]
        return np.concatenate(outs, axis=0).astype(np.float32, copy=False)

    def split(self, tokens: NDArray[np.float32]) -> EncodedFrames:
        """Split raw tokens into context tokens and patch grids, checking the manifest's shape."""
        m = self.manifest
        gh, gw = m.grid_hw
        expected = (m.prefix_tokens + gh * gw, m.embed_dim)
        if tokens.ndim != 3 or tokens.shape[1:] != expected:
            raise ModelError(
                f"encoder {m.name}: output shape {tokens.shape}, manifest expects (B, {expected[0]}, {expected[1]}) "
                f"({m.prefix_tokens} prefix tokens + {gh}x{gw} grid)"
            )
        patches = tokens[:, m.prefix_tokens :, :].reshape(tokens.shape[0], gh, gw, m.embed_dim)
        context = tokens[:, 0, :] if m.context == "cls" else patches.mean(axis=(1, 2))
        return EncodedFrames(context=np.ascontiguousarray(context), patches=patches)

    def __call__(self, frames_rgb: Sequence[NDArray[np.uint8]]) -> EncodedFrames:
        h, w = self.input_hw
        batch = np.empty((len(frames_rgb), 3, h, w), np.float32)
        for i, frame in enumerate(frames_rgb):
            self.preprocess(frame, batch[i])
        return self.split(self.infer(batch))
