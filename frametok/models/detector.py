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

from ..errors import ModelError
from ..packet import Detections
from .manifest import DetectorManifest
from .masks import DEFAULT_MASK_HW, SegmentOutput, decode_masks
from .session import SessionRunner, session_precision

# boxes (input pixels), scores, classes, and the rows of the head's output they came from (for mask coefficients)
_Found: TypeAlias = "tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64], NDArray[np.intp]] | None"
# what infer gives for a batch (a segmentation head: both its outputs), and what postprocess reads of one image
DetectorOutput: TypeAlias = "NDArray[np.float32] | SegmentOutput"
ImageOutput: TypeAlias = "NDArray[np.float32] | tuple[NDArray[np.float32], NDArray[np.float32]]"

__all__ = ["Detector", "DetectorOutput", "ImageOutput", "LetterboxInfo", "letterbox_into", "rect_input_hw",
           "squash_into"]


@dataclass(frozen=True)
class LetterboxInfo:
    """How a source frame was placed into the model input: ``input = source * gain + pad``.

    ``gain_y``: the vertical gain when it differs from ``gain`` (a squash resize); None for a letterbox.
    ``input_hw``: the (height, width) of the model input the frame was placed into: the manifest's
    ``input_size_hw``, or smaller for a rect letterbox (e.g. 480x640 for a 768x576 frame); None when not
    recorded (an info made by hand).
    """

    gain: float
    pad_xy: tuple[float, float]
    size_wh: tuple[int, int]
    gain_y: float | None = None
    input_hw: tuple[int, int] | None = None

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


def _rect_placement(size_hw: tuple[int, int], out_hw: tuple[int, int], stride: int | None
                    ) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Gain, resized (height, width) and input (height, width) of a frame of ``size_hw`` letterboxed into
    ``out_hw``: the whole of ``out_hw``, or with ``stride`` the smallest input that holds the resized frame
    and is padded by a multiple of ``stride`` on each axis (Ultralytics' ``LetterBox(auto=True)``)."""
    h, w = size_hw
    out_h, out_w = out_hw
    if h <= 0 or w <= 0:
        raise ValueError(f"frame: expected a positive (height, width), got {size_hw}")
    gain = min(out_h / h, out_w / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    if stride is None:
        return gain, (new_h, new_w), (out_h, out_w)
    return gain, (new_h, new_w), (new_h + (out_h - new_h) % stride, new_w + (out_w - new_w) % stride)


def rect_input_hw(size_hw: tuple[int, int], out_hw: tuple[int, int], stride: int = 32) -> tuple[int, int]:
    """The (height, width) of the rect letterbox input of a frame of ``size_hw`` (height, width): the frame
    scaled to fit ``out_hw`` and padded up to a multiple of ``stride``, as Ultralytics' default predict does
    (768x576 into 640x640: 480x640; 1280x720: 384x640)."""
    if stride < 1:
        raise ValueError(f"stride: expected >= 1, got {stride}")
    return _rect_placement(size_hw, out_hw, stride)[2]


def letterbox_into(
    frame: NDArray[np.uint8], out_hw: tuple[int, int], pad_value: int = 114, center: bool = True,
    stride: int | None = None,
) -> tuple[NDArray[np.uint8], LetterboxInfo]:
    """Resize ``frame`` (H, W, 3) keeping its aspect and pad it to ``out_hw``, as Ultralytics does.

    ``stride``: a rect letterbox (Ultralytics' ``rect=True`` predict, ``LetterBox(auto=True)``): the gain is
    the same, the padding only what makes each side a multiple of ``stride`` (:func:`rect_input_hw`); the
    image returned is then that size, at most ``out_hw``."""
    h, w = frame.shape[:2]
    gain, (new_h, new_w), (in_h, in_w) = _rect_placement((h, w), out_hw, stride)
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    if not center:
        dw, dh = 0.0, 0.0
    top, left = round(dh - 0.1), round(dw - 0.1)
    canvas = np.full((in_h, in_w, 3), pad_value, dtype=np.uint8)
    resized = frame if (new_w, new_h) == (w, h) else cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, LetterboxInfo(gain, (float(left), float(top)), (w, h), input_hw=(in_h, in_w))


def squash_into(frame: NDArray[np.uint8], out_hw: tuple[int, int]) -> tuple[NDArray[np.uint8], LetterboxInfo]:
    """Stretch ``frame`` (H, W, 3) to ``out_hw`` (Ultralytics' ``scale_fill``, as RT-DETR predicts)."""
    h, w = frame.shape[:2]
    out_h, out_w = out_hw
    resized = frame if (out_w, out_h) == (w, h) else cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(resized, np.uint8), LetterboxInfo(out_w / w, (0.0, 0.0), (w, h), gain_y=out_h / h,
                                                        input_hw=(out_h, out_w))


class Detector:
    """Hard tokens from frames: class id, score and ``xyxy`` box in source-frame pixels.

    ``rect``: letterbox each frame into the smallest input of its aspect (:func:`rect_input_hw`, as Ultralytics'
    default predict does: a 768x576 frame runs at 480x640) rather than the whole square ``input_size_hw``; only a
    graph of dynamic height and width takes it (manifest ``dynamic_hw``), and only with the letterbox resize.
    The input shape then depends on the frame's size (:meth:`input_hw_for`): a batch holds frames of one shape.
    """

    def __init__(
        self,
        manifest: DetectorManifest,
        session: Any,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        max_det: int = 300,
        rect: bool = False,
    ) -> None:
        if rect and (not manifest.dynamic_hw or manifest.resize != "letterbox"):
            why = (f"its resize is {manifest.resize}" if manifest.resize != "letterbox" else
                   f"its graph has a fixed {manifest.input_size_hw[0]}x{manifest.input_size_hw[1]} input "
                   "(manifest dynamic_hw false; export it with `frametok export yolo WEIGHTS.pt` for dynamic axes)")
            raise ModelError(f"detector {manifest.name}: rect letterbox asked for, but {why}")
        self.rect = rect
        self.manifest = manifest
        self.session = session
        masks = manifest.masks
        self.runner = SessionRunner(session, manifest.input_name, manifest.output_name,
                                    extra_outputs=() if masks is None else (masks.output_name,))
        self.mask_hw: tuple[int, int] = DEFAULT_MASK_HW  # cells of each box's mask (a segmentation head)
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
        """The manifest's input (height, width): every frame's input, or with ``rect`` the largest one."""
        return self.manifest.input_size_hw

    def input_hw_for(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        """The input (height, width) a frame of ``size_hw`` (height, width) is pre-processed into."""
        if not self.rect:
            return self.manifest.input_size_hw
        return rect_input_hw(size_hw, self.manifest.input_size_hw, self.manifest.stride)

    def preprocess(self, frame_rgb: NDArray[np.uint8], out: NDArray[np.float32]) -> LetterboxInfo:
        """Letterbox (or squash: ``resize``) ``frame_rgb`` into ``out`` (3, H, W) float32, scaled as said;
        ``out`` is ``(3, *input_hw_for(frame's height and width))``."""
        man = self.manifest
        if man.resize == "squash":
            img, info = squash_into(frame_rgb, man.input_size_hw)
        else:
            img, info = letterbox_into(frame_rgb, man.input_size_hw, man.letterbox.pad_value, man.letterbox.center,
                                       man.stride if self.rect else None)
        if out.shape != (3, *img.shape[:2]):
            h, w = frame_rgb.shape[:2]
            raise ValueError(f"out: a {w}x{h} frame goes into a (3, {img.shape[0]}, {img.shape[1]}) input "
                             f"(input_hw_for, rect {self.rect}), got {out.shape}")
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

    def infer(self, batch: NDArray[np.float32]) -> DetectorOutput:
        """Run the model on a preprocessed ``(B, 3, H, W)`` batch; returns its raw output ``(B, ...)``
        (``(B, 4 + C, A)`` for a ``yolov8`` head, ``(B, K, 6)`` for ``end2end``, see :class:`DetectorManifest`),
        or for a segmentation head (manifest ``masks``) a :class:`~frametok.models.masks.SegmentOutput` of that
        and the prototypes; either way ``out[i]`` is image ``i``'s, for :meth:`postprocess`."""
        outs = self.run_outputs(batch)
        return outs[0] if self.manifest.masks is None else SegmentOutput(outs[0], outs[1])

    def run_outputs(self, batch: NDArray[np.float32], runner: SessionRunner | None = None) -> list[NDArray[np.float32]]:
        """Every output ``runner`` (default: the detector's own: its output, and a segmentation head's prototypes)
        gives for a preprocessed ``(B, 3, H, W)`` batch, in one session run per graph batch (a fixed-batch graph
        runs in steps), each output joined over the steps."""
        runner = runner or self.runner
        step = len(batch) if self.manifest.batch == "dynamic" else int(self.manifest.batch)
        parts = [runner.run_all(batch[i : i + step]) for i in range(0, len(batch), step)]
        if len(parts) == 1:
            return [np.asarray(o, np.float32) for o in parts[0]]
        return [np.concatenate([np.asarray(p[j], np.float32) for p in parts]) for j in range(len(parts[0]))]

    def postprocess(self, output: ImageOutput, info: LetterboxInfo) -> Detections:
        """One image's raw output read as its head says (``output_format``), thresholded at ``conf_threshold``,
        at most ``max_det`` boxes (most confident first), boxes mapped back to the source frame through ``info``.

        A segmentation head's ``(preds, protos)``: each box also gets its mask (``Detections.mask_bits``,
        ``mask_hw`` cells over the box in the source frame, :func:`~frametok.models.masks.decode_masks`,
        through ``info``); a box whose mask has no pixel in the frame (docs/protocol.md §5.3) is dropped, as
        Ultralytics' predict drops a box whose mask is empty."""
        protos: NDArray[np.float32] | None = None
        if isinstance(output, tuple):
            output, protos = output
        if (protos is None) != (self.manifest.masks is None):
            got = "a detection output" if protos is None else "a segmentation output (preds, protos)"
            raise ValueError(f"detector {self.manifest.name}: postprocess of {got}, the manifest says masks "
                             f"{self.manifest.masks}")
        head = self.manifest.output_format
        if head == "end2end":
            found = self._end2end(output)
        elif head == "rtdetr":
            found = self._rtdetr(output)
        else:
            found = self._yolov8(output)
        if found is None:
            return Detections.empty(None if protos is None else self.mask_hw)
        xyxy, score, class_id, rows = found
        xyxy = info.to_source(xyxy)
        if protos is None:
            return Detections(xyxy=xyxy, score=score, class_id=class_id.astype(np.int32))
        return self._with_masks(output, protos, rows, info, Detections(xyxy, score, class_id.astype(np.int32)))

    def _with_masks(self, output: NDArray[np.float32], protos: NDArray[np.float32], rows: NDArray[np.intp],
                    info: LetterboxInfo, dets: Detections) -> Detections:
        """``dets`` (boxes in the source frame) with their masks, from the coefficients of their ``rows``."""
        m = self.manifest.mask_coefficients
        table = output.T if self.manifest.output_format == "yolov8" else np.asarray(output).reshape(-1, 6 + m)
        coefficients = np.ascontiguousarray(table[rows, -m:], np.float32)
        input_hw = getattr(info, "input_hw", None) or self.manifest.input_size_hw
        bits = decode_masks(coefficients, protos, dets.xyxy, info, input_hw, self.mask_hw)
        keep = Detections(dets.xyxy, dets.score, dets.class_id, mask_bits=bits).mask_areas(info.size_wh) > 0
        return Detections(dets.xyxy[keep], dets.score[keep], dets.class_id[keep], mask_bits=bits[keep])

    def _top(self, xyxy: NDArray[np.float32], score: NDArray[np.float32], class_id: NDArray[np.int64]) -> _Found:
        """The boxes over ``conf_threshold``, most confident first, at most ``max_det``; None when there is none."""
        keep = np.flatnonzero(score > self.conf_threshold)
        if not len(keep):
            return None
        keep = keep[np.argsort(-score[keep], kind="stable")][: self.max_det]
        return np.ascontiguousarray(xyxy[keep], np.float32), score[keep].astype(np.float32), class_id[keep], keep

    def _yolov8(self, output: NDArray[np.float32]) -> _Found:
        """``(4 + C, A)`` of (cx, cy, w, h, class scores) in input pixels: best class per anchor, class-aware NMS
        (a segmentation head's mask coefficients follow the class scores: ``(4 + C + M, A)``)."""
        preds = output.T  # (A, 4 + C)
        scores_all = preds[:, 4 : 4 + self.num_classes]
        class_id = scores_all.argmax(axis=1)
        score = scores_all[np.arange(len(class_id)), class_id]
        keep = score > self.conf_threshold
        if not keep.any():
            return None
        anchors = np.flatnonzero(keep)
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
        return xyxy, score[idx].astype(np.float32), class_id[idx], anchors[idx]

    def _end2end(self, output: NDArray[np.float32]) -> _Found:
        """``(K, 6)`` of (x1, y1, x2, y2, score, class) in input pixels, NMS-free: threshold and ``max_det`` only."""
        rows = np.asarray(output, np.float32).reshape(-1, 6 + self.manifest.mask_coefficients)  # (K, 6 + M): masks
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
        """Detect objects in each frame (a convenience for whole frames; the worker batches itself): one batch
        per input shape (with ``rect``, frames of another aspect run apart)."""
        shapes = [self.input_hw_for((int(f.shape[0]), int(f.shape[1]))) for f in frames_rgb]
        out: list[Detections] = [Detections.empty()] * len(frames_rgb)
        for shape in dict.fromkeys(shapes):
            rows = [i for i, s in enumerate(shapes) if s == shape]
            batch = np.empty((len(rows), 3, *shape), np.float32)
            infos = [self.preprocess(frames_rgb[i], batch[k]) for k, i in enumerate(rows)]
            raw = self.infer(batch)
            for k, i in enumerate(rows):
                out[i] = self.postprocess(raw[k], infos[k])
        return out
