"""The detector at the square 640x640 input against the rect 640x480 one (vtest.avi, 768x576). Prints one JSON object.

YOLOv8n (the shared ``yolov8n_coco.pt``) is exported with dynamic axes into a temporary folder (``--model``: an
existing dynamic export instead). The same vtest frames run through one onnxruntime CPU session, letterboxed
square (``rect: false``) and rect (the default for such a graph, as Ultralytics' predict): pre-processing and
the session call timed apart, taking turns round after round (a shared machine's speed drifts); the median ms
per frame of each, at batch 1 and ``--batch``, and the rect/square ratios, all from this one run.

    python bench/rect.py [--threads 2] [--batch 4] [--rounds 15] [--model DIR/yolov8n_coco.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))


def export(out: Path) -> Path:
    weights = SHARED / "models" / "yolov8n_coco.pt"
    done = subprocess.run([sys.executable, "-m", "frametok", "export", "yolo", str(weights), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"export failed: {done.stderr}")
    return out / "yolov8n_coco.onnx"


def vtest_frames(count: int) -> list[Any]:
    import av

    frames = []
    with av.open(str(SHARED / "media" / "vtest.avi")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 50 == 0:
                frames.append(np.asarray(frame.to_ndarray(format="rgb24")))
            if len(frames) >= count:
                break
    return frames


def time_round(det: Any, frames: list[Any], batch: int) -> tuple[float, float]:
    """Seconds per frame of pre-processing and of the session over ``frames`` in batches of ``batch``."""
    shape = det.input_hw_for(frames[0].shape[:2])
    tensor = np.empty((batch, 3, *shape), np.float32)
    pre = infer = 0.0
    for i in range(0, len(frames) - batch + 1, batch):
        t0 = time.perf_counter()
        for k, frame in enumerate(frames[i : i + batch]):
            det.preprocess(frame, tensor[k])
        t1 = time.perf_counter()
        det.infer(tensor)
        infer += time.perf_counter() - t1
        pre += t1 - t0
    n = (len(frames) // batch) * batch
    return pre / n, infer / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--frames", type=int, default=8, help="vtest frames per round (a multiple of --batch)")
    parser.add_argument("--model", type=Path, help="a dynamic-axes detector export (default: export one now)")
    args = parser.parse_args()

    from frametok.models.detector import Detector
    from frametok.models.session import create_session, locate_model

    with tempfile.TemporaryDirectory(prefix="frametok-bench-rect-") as tmp:
        onnx = args.model or export(Path(tmp))
        files = locate_model(onnx)
        session = create_session(files, ("cpu",), threads=args.threads)
        dets = {"square": Detector(files.manifest, session), "rect": Detector(files.manifest, session, rect=True)}  # type: ignore[arg-type]
        frames = vtest_frames(args.frames)
        inputs = {k: "x".join(str(v) for v in d.input_hw_for(frames[0].shape[:2])[::-1]) for k, d in dets.items()}
        times: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for batch in (1, args.batch):
            for det in dets.values():
                time_round(det, frames, batch)  # warm-up (onnxruntime plans each input shape once)
        for _ in range(args.rounds):
            for batch in (1, args.batch):
                for name, det in dets.items():
                    times.setdefault((name, batch), []).append(time_round(det, frames, batch))
    result: dict[str, Any] = {
        "bench": "rect", "frame_wh": [int(frames[0].shape[1]), int(frames[0].shape[0])], "inputs_wh": inputs,
        "threads": args.threads, "rounds": args.rounds, "frames_per_round": len(frames),
        "provider": session.get_providers()[0],
    }
    for batch in (1, args.batch):
        for name in dets:
            pre = statistics.median(t[0] for t in times[(name, batch)]) * 1000
            infer = statistics.median(t[1] for t in times[(name, batch)]) * 1000
            result[f"{name}_b{batch}_infer_ms_per_frame"] = round(infer, 2)
            result[f"{name}_b{batch}_preprocess_ms_per_frame"] = round(pre, 2)
        result[f"rect_over_square_b{batch}_infer"] = round(
            result[f"rect_b{batch}_infer_ms_per_frame"] / result[f"square_b{batch}_infer_ms_per_frame"], 3)
        result[f"rect_over_square_b{batch}_total"] = round(
            (result[f"rect_b{batch}_infer_ms_per_frame"] + result[f"rect_b{batch}_preprocess_ms_per_frame"])
            / (result[f"square_b{batch}_infer_ms_per_frame"] + result[f"square_b{batch}_preprocess_ms_per_frame"]), 3)
    result["pixel_ratio"] = round((480 * 640) / (640 * 640), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
