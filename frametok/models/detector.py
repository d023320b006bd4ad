"""Detectors: letterbox (or squash) pre-processing, onnxruntime inference, post-processing per head.

Pre-processing (:func:`letterbox_into`, :func:`squash_into`, :meth:`Detector.preprocess`) only places the
frame into the model input and says how (:class:`LetterboxInfo`); the head's post-processing
(:meth:`Detector.postprocess`, one reader per ``output_format``) works on boxes in input pixels and
maps them back to the source frame through that :class:`LetterboxInfo` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import cv2
import numpy as np
from numpy.typing import NDArray

from ..packet import Detections
from .manifest import DetectorManifest
from .session import SessionRunner, session_precision

_Found: TypeAlias = "tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]] | None"

__all__ = ["Detector", "LetterboxInfo", "letterbox_into", "squash_into"]


@dataclass(frozen=True)
class LetterboxInfo:
    """How a source frame was placed into the model input: ``input = source * gain + pad``.

    ``gain_y``: the vertical gain when it differs from ``gain`` (a squash resize); None for a letterbox.
    """

    gain: float
    pad_xy: tuple[float, float]
    size_wh: tuple[int, int]
    gain_y: float | None = None

    def to_source(self, xyxy: NDArray[np.float32]) -> NDArray[np.float32]:
        """``xyxy`` boxes in input pixels mapped (in place) into the source frame, clipped to it."""
        xyxy[:, [0, 2]] -= self.pad_xy[0]
        xyxy[:, [1, 3]] -= self.pad_xy[1]
        xyxy[:, [0, 2]] /= self.gain
        xyxy[:, [1, 3]] /= self.gain if self.gain_y is None else self.gain_y
        w, h = self.size_wh
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        return xyxy


def letterbox_into(
    frame: NDArray[np.uint8], out_hw: tuple[int, int], pad_value: int = 114, center: bool = True
) -> tuple[NDArray[np.uint8], LetterboxInfo]:
    """Resize ``frame`` (H, W, 3) keeping its aspect and pad it to ``out_hw``, as Ultralytics does."""
    h, w = frame.shape[:2]
    out_h, out_w = out_hw
    gain = min(out_h / h, out_w / w)
    new_w, new_h = round(w * gain), round(h * gain)
    dw, dh = (out_w - new_w) / 2, (out_h - new_h) / 2
    if not center:
        dw, dh = 0.0, 0.0
    top, left = round(dh - 0.1), round(dw - 0.1)
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    resized = frame if (new_w, new_h) == (w, h) else cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, LetterboxInfo(gain, (float(left), float(top)), (w, h))


def squash_into(frame: NDArray[np.uint8], out_hw: tuple[int, int]) -> tuple[NDArray[np.uint8], LetterboxInfo]:
    """Stretch ``frame`` (H, W, 3) to ``out_hw`` (Ultralytics' ``scale_fill``, as RT-DETR predicts)."""
    h, w = frame.shape[:2]
    out_h, out_w = out_hw
    resized = frame if (out_w, out_h) == (w, h) else cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(resized, np.uint8), LetterboxInfo(out_w / w, (0.0, 0.0), (w, h), gain_y=out_h / h)


class Detector:
    """Hard tokens from frames: class id, score and ``xyxy`` box in source-frame pixels."""

    def __init__(
        self,
        manifest: DetectorManifest,
        session: Any,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        max_det: int = 300,
    ) -> None:
        self.manifest = manifest
        self.session = session
        self.runner = SessionRunner(session, manifest.input_name, manifest.output_name)
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.max_det = max_det
        self.num_classes = len(manifest.class_names)

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"fp16"``: the graph the session runs (the manifest's fp16 variant or not)."""
        return session_precision(self.session)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.manifest.input_size_hw

    def preprocess(self, frame_rgb: NDArray[np.uint8], out: NDArray[np.float32]) -> LetterboxInfo:
        """Letterbox (or squash: ``resize``) ``frame_rgb`` into ``out`` (3, H, W) float32, scaled as said."""
        man = self.manifest
        if man.resize == "squash":
            img, info = squash_into(frame_rgb, man.input_size_hw)
        else:
            img, info = letterbox_into(frame_rgb, man.input_size_hw, man.letterbox.pad_value, man.letterbox.center)
        if man.colour == "BGR":
            img = img[..., ::-1]
        chw = img.transpose(2, 0, 1)
        if man.mean == (0.0, 0.0, 0.0) and man.std == (1.0, 1.0, 1.0):
            np.multiply(chw, np.float32(man.scale), out=out, casting="unsafe")
        else:
            mean = np.asarray(man.mean, np.float32)[:, None, None]
            std = np.asarray(man.std, np.float32)[:, None, None]
            np.subtract(chw * np.float32(man.scale), mean, out=out)
            out /= std
        return info

    def infer(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Run the model on a preprocessed ``(B, 3, H, W)`` batch; returns its raw output ``(B, ...)``
        (``(B, 4 + C, A)`` for a ``yolov8`` head, ``(B, K, 6)`` for ``end2end``, see :class:`DetectorManifest`)."""
        man = self.manifest
        if man.batch == "dynamic" or batch.shape[0] == man.batch:
            return np.asarray(self.runner(batch))
        step = int(man.batch)
        outs = [
            self.runner(batch[i : i + step])
            for i in range(0, batch.shape[0], step)
        ]
        return np.concatenate(outs, axis=0)

    def postprocess(self, output: NDArray[np.float32], info: LetterboxInfo) -> Detections:
        """One image's raw output read as its head says (``output_format``), thresholded at ``conf_threshold``,
        at most ``max_det`` boxes (most confident first), boxes mapped back to the source frame through ``info``."""
        head = self.manifest.output_format
        if head == "end2end":
            found = self._end2end(output)
        elif head == "rtdetr":
            found = self._rtdetr(output)
        else:
            found = self._yolov8(output)
        if found is None:
            return Detections.empty()
        xyxy, score, class_id = found
        return Detections(xyxy=info.to_source(xyxy), score=score, class_id=class_id.astype(np.int32))

    def _top(self, xyxy: NDArray[np.float32], score: NDArray[np.float32], class_id: NDArray[np.int64]) -> _Found:
        """The boxes over ``conf_threshold``, most confident first, at most ``max_det``; None when there is none."""
        keep = np.flatnonzero(score > self.conf_threshold)
        if not len(keep):
            return None
        keep = keep[np.argsort(-score[keep], kind="stable")][: self.max_det]
        return np.ascontiguousarray(xyxy[keep], np.float32), score[keep].astype(np.float32), class_id[keep]

    def _yolov8(self, output: NDArray[np.float32]) -> _Found:
        """``(4 + C, A)`` of (cx, cy, w, h, class scores) in input pixels: best class per anchor, class-aware NMS."""
        preds = output.T  # (A, 4 + C)
        scores_all = preds[:, 4 : 4 + self.num_classes]
        class_id = scores_all.argmax(axis=1)
        score = scores_all[np.arange(len(class_id)), class_id]
        keep = score > self.conf_threshold
        if not keep.any():
            return None
        boxes_cxcywh, score, class_id = preds[keep, :4], score[keep], class_id[keep]
        xywh = boxes_cxcywh.copy()
        xywh[:, 0] -= xywh[:, 2] / 2
        xywh[:, 1] -= xywh[:, 3] / 2
        kept = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), score.tolist(), class_id.tolist(), self.conf_threshold, self.iou_threshold
        )
        idx = np.asarray(kept, dtype=np.int64).reshape(-1)
        idx = idx[np.argsort(-score[idx], kind="stable")][: self.max_det]
        xyxy = np.empty((len(idx), 4), np.float32)
        xyxy[:, :2] = xywh[idx, :2]
        xyxy[:, 2:] = xywh[idx, :2] + xywh[idx, 2:]
        return xyxy, score[idx].astype(np.float32), class_id[idx]

    def _end2end(self, output: NDArray[np.float32]) -> _Found:
        """``(K, 6)`` of (x1, y1, x2, y2, score, class) in input pixels, NMS-free: threshold and ``max_det`` only."""
        rows = np.asarray(output, np.float32).reshape(-1, 6)
        return self._top(rows[:, :4], rows[:, 4], np.rint(rows[:, 5]).astype(np.int64))

    def _rtdetr(self, output: NDArray[np.float32]) -> _Found:
        """``(K, 6)`` of (cx, cy, w, h, score, class), or ``(K, 4 + C)`` of (cx, cy, w, h, class scores), boxes
        normalised to the input (0..1): best class per query (the latter), threshold and ``max_det``, no NMS."""
        rows = np.asarray(output, np.float32)
        if rows.shape[-1] == 6:
            score, class_id = rows[:, 4], np.rint(rows[:, 5]).astype(np.int64)
        else:
            scores_all = rows[:, 4 : 4 + self.num_classes]
            class_id = scores_all.argmax(axis=1)
            score = scores_all[np.arange(len(class_id)), class_id]
        h, w = self.input_hw
        cx, cy, bw, bh = (rows[:, i] for i in range(4))
        xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], axis=1)
        return self._top(xyxy.astype(np.float32), score, class_id)

    def __call__(self, frames_rgb: Sequence[NDArray[np.uint8]]) -> list[Detections]:
        """Detect objects in each frame (a convenience for whole frames; the worker batches itself)."""
        h, w = self.input_hw
        batch = np.empty((len(frames_rgb), 3, h, w), np.float32)
        infos = [self.preprocess(frame, batch[i]) for i, frame in enumerate(frames_rgb)]
        raw = self.infer(batch)
        return [self.postprocess(raw[i], info) for i, info in enumerate(infos)]
