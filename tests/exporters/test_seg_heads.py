"""Instance masks (protocol 1.3 ``det_mask``): YOLOv8-seg and YOLO26-seg exported from Ultralytics 8.4 model
.yaml files, their masks checked against Ultralytics' own predict, and carried to the wire, the index and a run.

The weights are random-init (``yolov8n-seg.yaml``, ``yolo26n-seg.yaml``; torch seeded 0, so every export is the
same and a failure can be replayed): no segmentation weights are to be had offline, so these tests check the
export and frametok's reading of it (boxes, and masks: prototypes x coefficients sampled on each box's 32x32
grid) against Ultralytics, never accuracy. Random weights score every box ~1e-5..0.05: the parity threshold is
lowered until Ultralytics finds boxes (the record says which), and the BatchNorm statistics are measured on
the sample photo first so that boxes, scores and masks depend on the image at all. Mask parity: each matched
box's mask in source-frame pixels (the wire's 32x32 cells read back, docs/protocol.md §5.3) against
Ultralytics' ``retina_masks=True`` mask, by IoU (frametok/exporters/mask_parity.py): at the cells' centres
(``cell``, gated: mean >= 0.9), in pixels (``pixel``) and against the best any 32x32 grid does with
Ultralytics' own mask (``ceiling``, gated: ``pixel`` within 0.02 of it), on both shared photos. Random masks are
speckled at the prototypes' scale, so ``pixel`` (= ``ceiling``) is low for them (~0.45 on bus.jpg): a figure
of random weights, not of the token on real masks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frametok.models.detector import Detector
from frametok.models.manifest import DetectorManifest
from frametok.models.session import ModelFiles, create_session
from frametok.packet import Detections, TokenPacket, decode, encode

from ..conftest import run_cli

PHOTOS = ("bus.jpg", "zidane.jpg")


def _export(yaml: str, out: Path, name: str, sample: Path, **kwargs: Any) -> ModelFiles:
    pytest.importorskip("torch", reason="needs torch (pip install 'frametok[export]')")
    pytest.importorskip("ultralytics", reason="needs ultralytics (pip install 'frametok[export]')")
    from frametok.exporters.yolo import export_yolo

    return export_yolo(yaml, out, name=name, sample_image=sample, **kwargs)


@pytest.fixture(scope="module")
def v8seg(tmp_path_factory: pytest.TempPathFactory, shared_media: Path) -> ModelFiles:
    """Random-init YOLOv8n-seg, checked on bus.jpg: (N, 4 + 80 + 32, 8400) and prototypes (N, 32, 160, 160)."""
    return _export("yolov8n-seg.yaml", tmp_path_factory.mktemp("v8seg"), "yolov8n_seg", shared_media / "bus.jpg")


def _mask_parity(files: ModelFiles, head: str) -> dict[str, Any]:
    man = files.manifest
    assert isinstance(man, DetectorManifest) and man.output_format == head and man.source.random_init
    assert man.masks is not None and man.masks.coefficients == 32
    parity = man.parity
    assert parity is not None and parity["head"] == head
    assert parity["threshold"] < 0.25 and parity["threshold_rule"].startswith("lowered")  # random weights
    assert parity["compared"] >= 5 and parity["matched"] == parity["compared"]
    assert parity["min_iou"] >= 0.99
    # masks: most matched boxes compared (a pair of empty masks is no comparison); at the cells the token holds,
    # frametok's mask is Ultralytics' (mean IoU >= 0.9), and read back in pixels it loses nothing beyond the
    # grid's own quantisation (within 0.02 of Ultralytics' mask put through the same grid)
    assert parity["mask_hw"] == [32, 32]
    assert parity["mask_compared"] >= max(5, parity["matched"] // 2), parity
    assert parity["mask_cell_mean_iou"] >= 0.9, parity
    assert parity["mask_pixel_minus_ceiling_mean"] >= -0.02, parity
    print(f"\n{man.name} on {parity['sample']}: {json.dumps({k: v for k, v in parity.items() if k != 'rect'})}")
    return parity


@pytest.mark.parametrize("photo", PHOTOS)
def test_yolov8n_seg_export_and_mask_parity(photo: str, tmp_path: Path, shared_media: Path,
                                            v8seg: ModelFiles) -> None:
    """Random-init YOLOv8n-seg (``yolov8`` head with masks, NMS in frametok) on each shared photo: boxes and
    masks as Ultralytics' predict(retina_masks=True) gives them."""
    files = v8seg if photo == "bus.jpg" else _export("yolov8n-seg.yaml", tmp_path, "v8seg", shared_media / photo)
    _mask_parity(files, "yolov8")


@pytest.mark.parametrize("photo", PHOTOS)
def test_yolo26n_seg_end2end_export_and_mask_parity(photo: str, tmp_path: Path, shared_media: Path) -> None:
    """Random-init YOLO26n-seg, its one-to-one head (``end2end`` with masks: (N, 300, 6 + 32)), on each photo."""
    files = _export("yolo26n-seg.yaml", tmp_path, "y26seg", shared_media / photo, end2end=True)
    parity = _mask_parity(files, "end2end")
    assert "nms=False" in parity["ultralytics_predict"]


def test_yolo26n_seg_one_to_many_export_and_mask_parity(tmp_path: Path, shared_media: Path) -> None:
    """Random-init YOLO26n-seg, Ultralytics' default export (its one-to-many head with masks, NMS in frametok)."""
    _mask_parity(_export("yolo26n-seg.yaml", tmp_path, "y26seg_o2m", shared_media / "bus.jpg"), "yolov8")


def _detect(files: ModelFiles, image: Path, conf: float) -> tuple[Detections, tuple[int, int]]:
    import cv2

    assert isinstance(files.manifest, DetectorManifest)
    bgr = cv2.imread(str(image))
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    det = Detector(files.manifest, create_session(files, ("cpu",), threads=2), conf_threshold=conf)
    return det([rgb])[0], (rgb.shape[1], rgb.shape[0])


def test_masks_travel_on_the_wire(v8seg: ModelFiles, shared_media: Path) -> None:
    """The detector's masks in a packet: det_mask (N, 32, 4), 128 bytes a detection, decoded bit for bit; the
    masks lie inside their boxes in source pixels and match their areas."""
    assert v8seg.manifest.parity is not None
    dets, size_wh = _detect(v8seg, shared_media / "bus.jpg", float(v8seg.manifest.parity["threshold"]))
    assert len(dets) >= 5 and dets.mask_bits is not None and dets.mask_bits.shape == (len(dets), 32, 4)
    packet = TokenPacket(stream_id="cam", frame_index=0, pts_s=0.0, size_wh=size_wh, detections=dets, seq=0)
    parts = encode(packet)
    header = json.loads(bytes(parts[1]))
    at = [d["name"] for d in header["buffers"]].index("det_mask")
    assert header["v"] == [1, 3] and header["buffers"][at] == {"name": "det_mask", "dtype": "uint8",
                                                               "shape": [len(dets), 32, 4]}
    assert len(parts[2 + at]) == 128 * len(dets)
    back = decode([bytes(p) for p in parts])
    assert isinstance(back, TokenPacket) and back.detections is not None
    assert back.detections.mask_bits is not None and np.array_equal(back.detections.mask_bits, dets.mask_bits)
    areas = back.detections.mask_areas(size_wh)
    assert (areas > 0).all()
    for i in range(len(dets)):
        full = back.detections.frame_mask(i, size_wh)
        assert int(full.sum()) == int(areas[i])
        ys, xs = np.nonzero(full)
        x1, y1, x2, y2 = dets.xyxy[i]
        assert xs.min() + 0.5 >= x1 and xs.max() + 0.5 < x2 and ys.min() + 0.5 >= y1 and ys.max() + 0.5 < y2
    sv = back.detections.to_supervision(size_wh=size_wh)
    assert sv.mask is not None and sv.mask.shape == (len(dets), size_wh[1], size_wh[0])
    assert sv.mask.sum(axis=(1, 2)).tolist() == areas.tolist()


def test_run_carries_masks_to_the_subscriber(v8seg: ModelFiles, tmp_path: Path, synthetic_video: Path) -> None:
    """``frametok run`` with the segmentation model: every frame's detections carry their masks (cells and area
    in ``--json``), through the worker's batches and the tracker (random-init weights: threshold 0.001)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"sources: [{{id: a, uri: {synthetic_video}}}]\n"
                   f"detector: {{model: {v8seg.onnx_path}, conf_threshold: 0.001}}\n")
    result = run_cli("run", str(cfg), "--encoder", "none", "--echo", "--json", "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines() if '"kind":"frame"' in line]
    dets = [d for f in frames for d in f["detections"]]
    assert frames and len(dets) >= len(frames)
    for d in dets:
        mask = d["mask"]
        assert mask["hw"] == [32, 32] and len(mask["bits_b64"]) == 172  # 128 bytes in base64
        x1, y1, x2, y2 = d["xyxy"]
        assert 0 < mask["area"] <= (x2 - x1 + 1) * (y2 - y1 + 1) and "track_id" in d


def test_index_stores_mask_areas_and_an_old_index_opens(v8seg: ModelFiles, shared_media: Path,
                                                        tmp_path: Path) -> None:
    """The index's frames get ``det_mask_area`` (pixels in the source frame, one per detection) once masks come;
    an index written without the column opens, and the column is added there (null in its old rows)."""
    pytest.importorskip("lancedb", reason="needs lancedb (the index extra)")
    from frametok.index.store import Store
    from frametok.index.writer import FrameWriter

    assert v8seg.manifest.parity is not None
    dets, size_wh = _detect(v8seg, shared_media / "bus.jpg", float(v8seg.manifest.parity["threshold"]))
    plain = Detections(dets.xyxy, dets.score, dets.class_id)
    db = tmp_path / "idx"
    old = FrameWriter(Store(db), "v", fps=10.0, dim=0, content_tokens=0)
    old.add(TokenPacket(stream_id="v", frame_index=0, pts_s=0.0, size_wh=size_wh, detections=plain, seq=0))
    old.flush()
    assert "det_mask_area" not in Store(db).table("frames").schema.names  # type: ignore[union-attr]
    writer = FrameWriter(Store(db), "v", fps=10.0, dim=0, content_tokens=0)
    writer.add(TokenPacket(stream_id="v", frame_index=1, pts_s=0.1, size_wh=size_wh, detections=dets, seq=1))
    writer.flush()
    rows = Store(db).read("frames", columns=["frame", "det_mask_area"]).to_pylist()
    by_frame = {r["frame"]: r["det_mask_area"] for r in rows}
    assert by_frame[0] is None
    assert by_frame[1] == dets.mask_areas(size_wh).tolist() and len(by_frame[1]) == len(dets)
