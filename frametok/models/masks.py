"""Instance masks of a segmentation head: prototypes times coefficients, sampled on a fixed grid in each box.

A YOLO segmentation model (YOLOv8-seg, YOLO26-seg) gives each detection ``M`` mask coefficients and each image
``M`` prototypes ``(M, ph, pw)`` at a fraction of the input size (a quarter: 160 x 160 for a 640 input). A
detection's mask logit at a point of the input is its coefficients dotted with the prototypes there,
bilinearly interpolated (what Ultralytics' ``F.interpolate(mode="bilinear")`` upsampling gives); the mask is
where that logit is above 0, inside the box.

frametok keeps a detection's mask as a hard token of fixed size (docs/protocol.md §5.3): an ``mh x mw`` grid of
cells laid over its box **in the source frame** (the box as it travels, clipped to the frame), each cell set
when the logit at its centre is above 0, bit-packed row by row (``det_mask``). The centre is mapped into the
model input through the frame's placement (``input = source * gain + pad``, :class:`Placement`: a
letterbox of any input shape, square or not, or a squash) and from there onto the prototype grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_MASK_HW", "Placement", "SegmentOutput", "box_mask_logits", "decode_masks"]

DEFAULT_MASK_HW = (32, 32)  # 128 bytes a detection on the wire (docs/protocol.md §5.3)


class Placement(Protocol):
    """How a source frame was placed into the model input (``input = source * gain + pad``), as
    :class:`~frametok.models.detector.LetterboxInfo` says; ``gain_y``: the vertical gain of a squash (else None)."""

    @property
    def gain(self) -> float: ...
    @property
    def pad_xy(self) -> tuple[float, float]: ...
    @property
    def gain_y(self) -> float | None: ...


@dataclass(frozen=True)
class SegmentOutput:
    """A segmentation head's raw outputs for a batch of ``B`` images: ``preds`` (its detection output,
    ``(B, ...)``) and ``protos`` ``(B, M, ph, pw)``. Indexed like the batch: ``out[i]`` is image ``i``'s
    ``(preds, protos)``, what :meth:`~frametok.models.detector.Detector.postprocess` reads."""

    preds: NDArray[np.float32]
    protos: NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.protos.ndim != 4 or len(self.protos) != len(self.preds):
            raise ValueError(f"protos: expected (B, M, ph, pw) with B = {len(self.preds)} (preds "
                             f"{tuple(self.preds.shape)}), got {tuple(self.protos.shape)}")

    def __len__(self) -> int:
        return len(self.preds)

    def __getitem__(self, i: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        return self.preds[i], self.protos[i]

    @property
    def shape(self) -> tuple[int, ...]:
        """The detection output's shape (as a single-output head's array has)."""
        return tuple(self.preds.shape)


def _interp(coords: NDArray[np.float64], length: int) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Bilinear taps of ``coords`` (prototype cells, centre-based) into an axis of ``length``: the lower tap
    and the upper tap's weight, clamped at the edges as ``F.interpolate(align_corners=False)`` does."""
    c = np.clip(coords, 0.0, length - 1)
    lo = np.minimum(np.floor(c).astype(np.intp), length - 1)
    return lo, c - lo


def _weights(lo: NDArray[np.intp], frac: NDArray[np.float64], first: int, size: int) -> NDArray[np.float64]:
    """The ``(len(lo), size)`` interpolation matrix of the taps, over prototype cells ``first .. first + size``."""
    w = np.zeros((len(lo), size))
    rows = np.arange(len(lo))
    np.add.at(w, (rows, lo - first), 1.0 - frac)
    hi = np.minimum(lo + 1, first + size - 1)
    np.add.at(w, (rows, hi - first), np.where(lo + 1 <= first + size - 1, frac, 0.0))
    return w


def box_mask_logits(coefficients: NDArray[np.float32], protos: NDArray[np.float32],
                    xyxy_source: NDArray[np.float32], placement: Placement, input_hw: tuple[int, int],
                    mask_hw: tuple[int, int] = DEFAULT_MASK_HW) -> NDArray[np.float32]:
    """The mask logits ``(K, mh, mw)`` at the centres of each box's cells: cell ``(r, c)`` of box
    ``(x1, y1, x2, y2)`` (source pixels) has its centre at ``x1 + (c + 0.5) (x2 - x1) / mw``,
    ``y1 + (r + 0.5) (y2 - y1) / mh``; mapped into the input through ``placement`` and onto the
    ``(ph, pw)`` prototypes (``input_hw`` scaled to them), where the coefficients meet the bilinearly
    interpolated prototypes."""
    k, (mh, mw) = len(coefficients), mask_hw
    m, ph, pw = protos.shape
    if coefficients.shape != (k, m) or xyxy_source.shape != (k, 4):
        raise ValueError(f"coefficients {coefficients.shape} and boxes {xyxy_source.shape}: expected ({k}, {m}) "
                         f"and ({k}, 4) for prototypes {protos.shape}")
    out = np.zeros((k, mh, mw), np.float32)
    if not k:
        return out
    in_h, in_w = input_hw
    gain_x, gain_y = placement.gain, placement.gain_y if placement.gain_y is not None else placement.gain
    pad_x, pad_y = placement.pad_xy
    box = xyxy_source.astype(np.float64)
    u_c, u_r = (np.arange(mw) + 0.5) / mw, (np.arange(mh) + 0.5) / mh
    xs = box[:, :1] + u_c * (box[:, 2:3] - box[:, :1])  # (K, mw) cell centres, source pixels
    ys = box[:, 1:2] + u_r * (box[:, 3:4] - box[:, 1:2])  # (K, mh)
    px = (xs * gain_x + pad_x) * (pw / in_w) - 0.5  # prototype cells, centre-based
    py = (ys * gain_y + pad_y) * (ph / in_h) - 0.5
    flat = protos.reshape(m, ph, pw)
    for i in range(k):
        x_lo, x_frac = _interp(px[i], pw)
        y_lo, y_frac = _interp(py[i], ph)
        x0, x1 = int(x_lo.min()), min(int(x_lo.max()) + 2, pw)
        y0, y1 = int(y_lo.min()), min(int(y_lo.max()) + 2, ph)
        crop = np.tensordot(coefficients[i].astype(np.float32), flat[:, y0:y1, x0:x1], axes=1)  # (h, w) logits
        wy, wx = _weights(y_lo, y_frac, y0, y1 - y0), _weights(x_lo, x_frac, x0, x1 - x0)
        out[i] = wy @ crop.astype(np.float64) @ wx.T
    return out


def decode_masks(coefficients: NDArray[np.float32], protos: NDArray[np.float32], xyxy_source: NDArray[np.float32],
                 placement: Placement, input_hw: tuple[int, int],
                 mask_hw: tuple[int, int] = DEFAULT_MASK_HW) -> NDArray[np.uint8]:
    """The boxes' masks as they travel: ``(K, mh, mw / 8)`` uint8, cell ``(r, c)`` set (logit > 0, see
    :func:`box_mask_logits`) in bit ``7 - c % 8`` of byte ``c // 8`` of row ``r`` (most significant bit first)."""
    if mask_hw[1] % 8 or min(mask_hw) <= 0:
        raise ValueError(f"mask_hw: expected (mh, mw) > 0 with mw a multiple of 8, got {mask_hw}")
    logits = box_mask_logits(coefficients, protos, xyxy_source, placement, input_hw, mask_hw)
    return np.packbits(logits > 0, axis=-1)
