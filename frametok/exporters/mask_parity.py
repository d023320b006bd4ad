"""Mask parity of a segmentation export: frametok's masks against Ultralytics' own.

frametok's mask of a detection is the fixed grid of cells over its box that travels on the wire
(docs/protocol.md §5.3); Ultralytics' is its ``retina_masks=True`` mask (the prototypes upsampled to the
source frame, cropped to the box). Each pair of matched boxes gives three IoUs:

* ``cell``: frametok's cells against Ultralytics' mask at the cells' centres (the source pixel holding each
  centre): whether frametok decodes the model as Ultralytics does, at the points the token holds. Gated: the
  mean must reach :data:`MASK_IOU`.
* ``pixel``: frametok's mask read back in source pixels (:meth:`~frametok.packet.Detections.frame_mask`)
  against Ultralytics' mask: what a subscriber gets, the grid's quantisation included.
* ``ceiling``: Ultralytics' own mask put through the same grid (sampled at the cells' centres) and read back,
  against itself: the best any mask of that grid can do on that object. Gated: ``pixel`` may fall short of it
  by at most :data:`CEILING_SLACK` on average (frametok loses nothing but the grid's resolution).

Random-init weights (the only segmentation weights offline) give masks speckled at the prototypes' scale, so
``ceiling`` is low there (about 0.45 for 32x32 cells on bus.jpg); real masks are smooth and it is high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..packet import Detections

__all__ = ["CEILING_SLACK", "MASK_IOU", "TINY_MASK_SHARE", "frametok_masks", "mask_figures", "mask_ious",
           "ultralytics_masks"]

MASK_IOU = 0.9  # the mean cell IoU of the matched boxes must reach this
CEILING_SLACK = 0.02  # the mean pixel IoU may fall short of the grid's ceiling by this much
TINY_MASK_SHARE = 0.01  # a mask under 1 % of its box: one side may keep the box and the other drop it (empty mask)


def ultralytics_masks(result: Any, size_hw: tuple[int, int]) -> NDArray[np.bool_]:
    """``(N, H, W)`` bool: an Ultralytics ``Results``' masks (``retina_masks=True``: at the source frame's size)."""
    n = len(result.boxes)
    if result.masks is None or not n:
        return np.zeros((n, *size_hw), bool)
    data = result.masks.data.cpu().numpy() > 0
    if data.shape[1:] != tuple(size_hw):
        raise ValueError(f"Ultralytics masks {data.shape} are not at the frame's size {size_hw} (retina_masks)")
    return np.asarray(data, bool)


def frametok_masks(dets: Detections, size_wh: tuple[int, int]) -> NDArray[np.bool_]:
    """``(N, H, W)`` bool: frametok's masks in source-frame pixels (the wire's box grids read back)."""
    return np.stack([dets.frame_mask(i, size_wh) for i in range(len(dets))]) if len(dets) else \
        np.zeros((0, size_wh[1], size_wh[0]), bool)


def mask_ious(ref: NDArray[np.bool_], got: NDArray[np.bool_], pairs: Sequence[tuple[int, int]]) -> list[float]:
    """The mask IoU of each (reference, frametok) pair whose masks are not both empty."""
    out = []
    for i, j in pairs:
        union = int(np.count_nonzero(ref[i] | got[j]))
        if union:
            out.append(int(np.count_nonzero(ref[i] & got[j])) / union)
    return out


def _at_cells(mask: NDArray[np.bool_], xyxy: NDArray[np.float32], mask_hw: tuple[int, int]) -> NDArray[np.bool_]:
    """``mask`` (H, W) at the centres of the box's ``mask_hw`` cells (the source pixel holding each centre)."""
    h, w = mask.shape
    mh, mw = mask_hw
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    cols = np.clip(np.floor(x1 + (np.arange(mw) + 0.5) * (x2 - x1) / mw).astype(np.intp), 0, w - 1)
    rows = np.clip(np.floor(y1 + (np.arange(mh) + 0.5) * (y2 - y1) / mh).astype(np.intp), 0, h - 1)
    return mask[np.ix_(rows, cols)]


def _iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float | None:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else None


def mask_figures(ref: NDArray[np.bool_], got: NDArray[np.bool_], pairs: Sequence[tuple[int, int]],
                 got_dets: Detections) -> dict[str, Any]:
    """The parity record's mask figures over the matched (reference, frametok) ``pairs``: cell, pixel and
    ceiling IoUs (module docstring), over the pairs whose masks are not both empty."""
    hw = got_dets.mask_hw
    if hw is None:
        raise ValueError("frametok's detections have no masks")
    cells = got_dets.box_masks()
    size_wh = (ref.shape[2], ref.shape[1]) if ref.ndim == 3 else (0, 0)
    cell_ious, pixel_ious, ceilings = [], [], []
    for i, j in pairs:
        pixel = _iou(ref[i], got[j])
        if pixel is None:
            continue
        box = got_dets.xyxy[j]
        at = _at_cells(ref[i], box, hw)
        cell_ious.append(_iou(at, cells[j]) or 0.0)
        pixel_ious.append(pixel)
        quantised = Detections(box[None], np.ones(1, np.float32), np.zeros(1, np.int32),
                               mask_bits=np.packbits(at, axis=-1)[None])
        ceilings.append(_iou(ref[i], quantised.frame_mask(0, size_wh)) or 0.0)

    def stat(values: list[float], how: Any) -> float | None:
        return round(float(how(values)), 4) if values else None

    return {
        "mask_hw": list(hw),
        "mask_compared": len(pixel_ious),
        "mask_cell_mean_iou": stat(cell_ious, np.mean),
        "mask_cell_min_iou": stat(cell_ious, min),
        "mask_pixel_mean_iou": stat(pixel_ious, np.mean),
        "mask_pixel_min_iou": stat(pixel_ious, min),
        "mask_ceiling_mean_iou": stat(ceilings, np.mean),
        "mask_pixel_minus_ceiling_mean": stat([p - c for p, c in zip(pixel_ious, ceilings, strict=True)], np.mean),
    }


def tiny_mask(masks: NDArray[np.bool_] | None, xyxy: NDArray[np.float32], i: int) -> bool:
    """Whether box ``i``'s mask covers under :data:`TINY_MASK_SHARE` of its box, or the box is under a pixel wide
    or high (Ultralytics crops its mask to the whole pixels ``x1 <= x < x2``: there may be none, and it drops
    the box; frametok's mask holds the pixels whose centre is in the box); False when there are no masks."""
    if masks is None:
        return False
    x1, y1, x2, y2 = (float(v) for v in xyxy[i])
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return True
    return int(np.count_nonzero(masks[i])) < TINY_MASK_SHARE * max((x2 - x1) * (y2 - y1), 1.0)
