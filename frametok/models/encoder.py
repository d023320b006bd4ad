"""Image encoder (ViT, DINOv2, CLIP vision tower, ... or a CNN's feature map): frames in, context token and
patch grid out."""

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
    """Runs an ONNX image encoder and splits its output into a context token and a patch grid.

    The output must fit the manifest's ``output_layout`` (``tokens`` or ``nchw``) and grid: checked here, on
    the graph's declared output shape or, when its axes are dynamic, on one run on zeros, so that a manifest
    written for another graph is refused before any frame is encoded, naming both shapes.
    """

    def __init__(self, manifest: EncoderManifest, session: Any) -> None:
        self.manifest = manifest
        self.session = session
        self.runner = SessionRunner(session, manifest.input_name, manifest.output_name)
        self._check_output()
        m = manifest
        std = np.asarray(m.std, np.float32).reshape(3, 1, 1)
        self._scale: NDArray[np.float32] = np.float32(m.scale) / std
        self._offset: NDArray[np.float32] = np.asarray(m.mean, np.float32).reshape(3, 1, 1) / std

    def _check_output(self) -> None:
        m = self.manifest
        outputs = [o for o in self.session.get_outputs() if o.name == m.output_name]
        if not outputs:  # the session factory checks names; a hand-made session may not have
            raise ModelError(f"encoder {m.name}: output {m.output_name!r} is not a graph output")
        shape: list[Any] = list(outputs[0].shape or [])
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            n = m.batch if isinstance(m.batch, int) else 1
            probe = np.zeros((n, 3, *m.input_size_hw), np.float32)
            try:
                shape = list(np.asarray(self.session.run([m.output_name], {m.input_name: probe})[0]).shape)
            except Exception as exc:  # onnxruntime's / torch's own error types
                raise ModelError(f"encoder {m.name}: running it on a {probe.shape} input failed: {exc}") from exc
        problem = m.output_problem(shape)
        if problem is not None:
            raise ModelError(f"encoder {m.name}: {problem} (a manifest written for another graph; describe the "
                             "ONNX again with `frametok export encoder MODEL.onnx`)")

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
        """Raw output for a preprocessed batch ``(B, 3, H, W)``: tokens ``(B, T, D)``, or ``(B, D, gh, gw)``
        with ``output_layout: nchw``."""
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
        """Split raw output into context tokens and patch grids, checking the manifest's shape.

        ``nchw`` feature maps ``(B, D, gh, gw)`` become ``(B, gh, gw, D)`` grids (each position a token of
        its channels), with the mean of the grid as context.
        """
        m = self.manifest
        gh, gw = m.grid_hw
        if tokens.ndim != (4 if m.output_layout == "nchw" else 3) or m.output_problem(tokens.shape) is not None:
            raise ModelError(f"encoder {m.name}: output shape {tokens.shape}, manifest expects {m.expected_output()}")
        if m.output_layout == "nchw":
            patches = np.ascontiguousarray(tokens.transpose(0, 2, 3, 1))
            return EncodedFrames(context=patches.mean(axis=(1, 2)), patches=patches)
        patches = tokens[:, m.prefix_tokens :, :].reshape(tokens.shape[0], gh, gw, m.embed_dim)
        context = tokens[:, 0, :] if m.context == "cls" else patches.mean(axis=(1, 2))
        return EncodedFrames(context=np.ascontiguousarray(context), patches=patches)

    def __call__(self, frames_rgb: Sequence[NDArray[np.uint8]]) -> EncodedFrames:
        h, w = self.input_hw
        batch = np.empty((len(frames_rgb), 3, h, w), np.float32)
        for i, frame in enumerate(frames_rgb):
            self.preprocess(frame, batch[i])
        return self.split(self.infer(batch))
