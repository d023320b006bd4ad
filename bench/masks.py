"""What instance masks cost: a YOLOv8n-seg detector with masks against the same model's boxes alone, and the
packet bytes per detection with and without ``det_mask``. Prints one JSON object.

The model is ``yolov8n-seg.yaml`` with **random-init** weights (torch seeded 0 by the exporter, BatchNorm
statistics measured on bus.jpg; no segmentation weights are to be had offline), exported into a temporary folder
(``--model``: an existing export instead). Its scores are ~1e-5..0.05, so the confidence threshold is the one the
export's parity check lowered to (manifest ``parity.threshold``, ``--conf`` to set another), raised on a photo
that finds more than ``--boxes`` (20) there to just below its 20th box's score: 20 boxes an image, about what
tests/exporters/test_seg_heads.py sees on bus.jpg. The figures are of cost only (time, bytes), never of accuracy.

On each shared photo (bus.jpg, zidane.jpg), round after round (a shared machine's speed drifts; the two
post-processings take turns on the same raw output): the session call (``infer``: the graph computes the
prototypes either way), ``postprocess`` with masks (boxes, NMS, each box's 32x32 cells sampled from
prototypes x coefficients, empty masks dropped) and the same boxes without masks (a Detector of the same manifest
with ``masks`` removed: it reads the same output's box and class rows). Medians in ms per frame, and the ratios,
all from this one run. Bytes: the whole encoded frame message (every part) with the detections, minus the same
message without any, per detection; with and without ``det_mask``.

    python bench/masks.py [--threads 2] [--rounds 20] [--boxes 20] [--conf 0.01] [--model DIR/yolov8n_seg.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))
PHOTOS = ("bus.jpg", "zidane.jpg")


def export(out: Path) -> Path:
    from frametok.exporters.yolo import export_yolo

    files = export_yolo("yolov8n-seg.yaml", out, name="yolov8n_seg", sample_image=SHARED / "media" / "bus.jpg")
    return files.onnx_path


def read_rgb(path: Path) -> Any:
    import cv2

    bgr = cv2.imread(str(path))
    if bgr is None:
        raise SystemExit(f"{path}: not an image (or missing)")
    return np.ascontiguousarray(bgr[..., ::-1])


def message_bytes(packet: Any) -> int:
    from frametok.packet import encode

    return sum(len(p) if isinstance(p, bytes) else memoryview(p).nbytes for p in encode(packet))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--conf", type=float, help="confidence threshold (default: the export's parity threshold)")
    parser.add_argument("--boxes", type=int, default=20, help="at most this many boxes an image (0: no limit)")
    parser.add_argument("--model", type=Path, help="a yolov8n-seg export (default: export one now)")
    args = parser.parse_args()

    from frametok.models.detector import Detector
    from frametok.models.manifest import DetectorManifest
    from frametok.models.session import create_session, locate_model
    from frametok.packet import Detections, TokenPacket

    with tempfile.TemporaryDirectory(prefix="frametok-bench-masks-") as tmp:
        files = locate_model(args.model or export(Path(tmp)))
        man = files.manifest
        if not isinstance(man, DetectorManifest) or man.masks is None:
            raise SystemExit(f"{files.onnx_path}: not a segmentation detector (manifest masks is None)")
        conf = args.conf if args.conf is not None else float((man.parity or {}).get("threshold", 0.25))
        session = create_session(files, ("cpu",), threads=args.threads)
        photos = {name: read_rgb(SHARED / "media" / name) for name in PHOTOS}
        inputs, detectors, confs = {}, {}, {}
        for name, rgb in photos.items():
            seg = Detector(man, session, conf_threshold=conf)
            tensor = np.empty((1, 3, *seg.input_hw_for(rgb.shape[:2])), np.float32)
            inputs[name] = (tensor, seg.preprocess(rgb, tensor[0]))
            score = seg.postprocess(seg.infer(tensor)[0], inputs[name][1]).score  # most confident first
            confs[name] = conf
            if args.boxes and len(score) > args.boxes:  # the next box's score: the first args.boxes stay
                confs[name] = float(np.nextafter(score[args.boxes], np.float32(1)))
            detectors[name] = (Detector(man, session, conf_threshold=confs[name]),
                               Detector(man.model_copy(update={"masks": None}), session, conf_threshold=confs[name]))
        times: dict[tuple[str, str], list[float]] = {}
        found: dict[str, tuple[Any, Any]] = {}
        for r in range(args.rounds + 1):  # round 0: warm-up, not counted
            for name, (tensor, info) in inputs.items():
                seg, boxes = detectors[name]
                t0 = time.perf_counter()
                raw = seg.infer(tensor)
                t1 = time.perf_counter()
                order = ("masks", "boxes") if r % 2 else ("boxes", "masks")
                spent = {}
                for kind in order:
                    t = time.perf_counter()
                    if kind == "masks":
                        with_masks = seg.postprocess(raw[0], info)
                    else:
                        boxes_only = boxes.postprocess(raw.preds[0], info)  # type: ignore[union-attr]
                    spent[kind] = time.perf_counter() - t
                if r:
                    times.setdefault((name, "infer"), []).append(t1 - t0)
                    for kind, s in spent.items():
                        times.setdefault((name, kind), []).append(s)
                found[name] = (with_masks, boxes_only)

    result: dict[str, Any] = {
        "bench": "masks", "model": "yolov8n-seg.yaml, random-init (seeded), exported here" if not args.model
        else str(args.model), "input_hw": list(seg.input_hw), "mask_hw": list(seg.mask_hw), "parity_conf": conf,
        "threads": args.threads, "rounds": args.rounds, "provider": session.get_providers()[0], "photos": {},
    }
    ms = {key: statistics.median(v) * 1000 for key, v in times.items()}
    for name, rgb in photos.items():
        with_masks, boxes_only = found[name]
        size_wh = (int(rgb.shape[1]), int(rgb.shape[0]))
        n = len(with_masks)
        plain = Detections(with_masks.xyxy, with_masks.score, with_masks.class_id)

        def frame(det: Detections | None, size: tuple[int, int] = size_wh) -> TokenPacket:
            return TokenPacket("cam", 0, 0.0, size, detections=det, seq=0)

        bytes_masks = message_bytes(frame(with_masks))
        bytes_plain = message_bytes(frame(plain))
        empty_masks = message_bytes(frame(Detections.empty(seg.mask_hw)))
        empty_plain = message_bytes(frame(Detections.empty()))
        infer, post_m, post_b = ms[(name, "infer")], ms[(name, "masks")], ms[(name, "boxes")]
        result["photos"][name] = {
            "frame_wh": list(size_wh), "conf": confs[name], "boxes_with_masks": n,
            "boxes_without_masks": len(boxes_only),
            "infer_ms": round(infer, 2), "postprocess_masks_ms": round(post_m, 3),
            "postprocess_boxes_ms": round(post_b, 3), "mask_decoding_ms": round(post_m - post_b, 3),
            "mask_decoding_ms_per_box": round((post_m - post_b) / max(n, 1), 4),
            "total_masks_ms": round(infer + post_m, 2), "total_boxes_ms": round(infer + post_b, 2),
            "total_masks_over_boxes": round((infer + post_m) / (infer + post_b), 3),
            "postprocess_masks_over_boxes": round(post_m / post_b, 2),
            "message_bytes_masks": bytes_masks, "message_bytes_boxes": bytes_plain,
            "bytes_per_detection_masks": round((bytes_masks - empty_masks) / max(n, 1), 1),
            "bytes_per_detection_boxes": round((bytes_plain - empty_plain) / max(n, 1), 1),
            "message_masks_over_boxes": round(bytes_masks / bytes_plain, 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
