"""YOLO detector: letterbox pre-processing, onnxruntime inference, NMS post-processing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..packet import Detections
from .manifest import DetectorManifest
from .session import SessionRunner, session_precision

__all__ = ["Detector", "LetterboxInfo", "letterbox_into"]


@dataclass(frozen=True)
class LetterboxInfo:
    """How a source frame was placed into the model input: ``input = source * gain + pad``."""

    gain: float
    pad_xy: tuple[float, float]
    size_wh: tuple[int, int]


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
        """Letterbox ``frame_rgb`` into ``out`` (3, H, W) float32, scaled as the manifest says."""
        man = self.manifest
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
        """Run the model on a preprocessed ``(B, 3, H, W)`` batch; returns ``(B, 4 + C, A)``."""
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
        """Threshold, class-aware NMS and un-letterbox one image's raw output ``(4 + C, A)``."""
        preds = output.T  # (A, 4 + C)
        scores_all = preds[:, 4 : 4 + self.num_classes]
        class_id = scores_all.argmax(axis=1)
        score = scores_all[np.arange(len(class_id)), class_id]
        keep = score > self.conf_threshold
        if not keep.any():
            return Detections.empty()
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
        xyxy[:, [0, 2]] -= info.pad_xy[0]
        xyxy[:, [1, 3]] -= info.pad_xy[1]
        xyxy /= info.gain
        w, h = info.size_wh
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        return Detections(xyxy=xyxy, score=score[idx], class_id=class_id[idx].astype(np.int32))

    def __call__(self, frames_rgb: Sequence[NDArray[np.uint8]]) -> list[Detections]:
        """Detect objects in each frame (a convenience for whole frames; the worker batches itself)."""
        h, w = self.input_hw
        batch = np.empty((len(frames_rgb), 3, h, w), np.float32)
        infos = [self.preprocess(frame, batch[i]) for i, frame in enumerate(frames_rgb)]
        raw = self.infer(batch)
        return [self.postprocess(raw[i], info) for i, info in enumerate(infos)]
