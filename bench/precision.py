"""fp16 against fp32 graphs of the shared models on onnxruntime's CPU provider. Prints one JSON object.

Both models are exported with ``--half`` into a temporary folder (the exporter's own parity check on
the shared photos runs then; its figures are reported), then each model's fp32 and fp16 graphs run
the same batch of real frames from vtest.avi, taking turns round after round (a shared machine's
speed drifts), and the median ms per batch is reported with the ratio fp16 / fp32. Accuracy over
``--frames`` frames of the video: detections (twins: same class, IoU >= 0.9, score within 0.02)
and encoder tokens (cosine per token).

    python bench/precision.py [--threads 2] [--batch 4] [--rounds 10] [--frames 60]
"""

from __future__ import annotations

import argparse
import json
import os
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
SAMPLES = ("bus.jpg", "zidane.jpg", "astronaut.png", "chelsea.png", "coffee.png", "fruits.jpg", "grace_hopper.jpg")


def export_half(models: Path, media: Path, out: Path) -> None:
    samples = [a for name in SAMPLES for a in ("--sample", str(media / name))]
    for args in (["yolo", str(models / "yolov8n_coco.onnx")],
                 ["encoder", str(models / "dinov2_vits14.onnx"), "--prefix-tokens", "1", "--context", "cls"]):
        subprocess.run([sys.executable, "-m", "frametok", "export", *args, "--out", str(out), "--half", *samples],
                       check=True, cwd=ROOT, capture_output=True)


def timed(fn: Any, batch: np.ndarray) -> float:
    start = time.perf_counter()
    fn(batch)
    return (time.perf_counter() - start) * 1000.0


def speed(runners: dict[str, Any], batch: np.ndarray, rounds: int) -> dict[str, float]:
    for run in runners.values():  # warm-up
        run(batch)
        run(batch)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(timed(run, batch))
    result = {f"{name}_ms_per_batch": round(float(np.median(t)), 1) for name, t in times.items()}
    result["fp16_over_fp32"] = round(result["fp16_ms_per_batch"] / result["fp32_ms_per_batch"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--frames", type=int, default=60, help="video frames for the accuracy figures")
    args = parser.parse_args()

    from frametok.exporters.half import detector_parity
    from frametok.models.detector import Detector
    from frametok.models.encoder import Encoder
    from frametok.models.session import create_session, locate_model
    from frametok.streamer.source.decode import decode_frames

    frames = []
    for frame in decode_frames(str(SHARED / "media" / "vtest.avi")):
        if frame.index >= args.frames:
            break
        frames.append(frame.frame_rgb)
    report: dict[str, Any] = {"threads": args.threads, "batch": args.batch, "rounds": args.rounds,
                              "frames": len(frames), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="frametok-precision-") as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        export_half(SHARED / "models", SHARED / "media", out)
        report["export_half_s"] = round(time.perf_counter() - start, 1)

        det_files = locate_model(out / "yolov8n_coco.json")
        enc_files = locate_model(out / "dinov2_vits14.json")
        dets = {p: Detector(det_files.manifest, create_session(det_files, ("cpu",), args.threads, precision=p))  # type: ignore[arg-type]
                for p in ("fp32", "fp16")}
        encs = {p: Encoder(enc_files.manifest, create_session(enc_files, ("cpu",), args.threads, precision=p))  # type: ignore[arg-type]
                for p in ("fp32", "fp16")}
        det_batch = np.empty((args.batch, 3, *dets["fp32"].input_hw), np.float32)
        enc_batch = np.empty((args.batch, 3, *encs["fp32"].input_hw), np.float32)
        for i in range(args.batch):
            dets["fp32"].preprocess(frames[i], det_batch[i])
            encs["fp32"].preprocess(frames[i], enc_batch[i])
        report["detector_speed"] = speed({p: d.infer for p, d in dets.items()}, det_batch, args.rounds)
        report["encoder_speed"] = speed({p: e.infer for p, e in encs.items()}, enc_batch, args.rounds)

        # accuracy on the video: the exporter's own parity rule, and token cosines
        import cv2

        paths = []
        for i, frame in enumerate(frames):
            paths.append(out / f"frame{i:04d}.png")
            cv2.imwrite(str(paths[-1]), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        assert det_files.fp16_onnx_path is not None
        video_parity = detector_parity(det_files.manifest, det_files.onnx_path, det_files.fp16_onnx_path,  # type: ignore[arg-type]
                                       paths)
        video_parity.pop("samples")
        report["detector_parity_photos"] = {k: v for k, v in (det_files.manifest.fp16.parity or {}).items()  # type: ignore[union-attr]
                                            if k != "samples"}
        report["detector_parity_video"] = video_parity
        cos: list[np.ndarray] = []
        diff = 0.0
        for start_i in range(0, len(frames), args.batch):
            chunk = frames[start_i : start_i + args.batch]
            batch = np.empty((len(chunk), 3, *encs["fp32"].input_hw), np.float32)
            for i, frame in enumerate(chunk):
                encs["fp32"].preprocess(frame, batch[i])
            a = encs["fp32"].infer(batch).astype(np.float64)
            b = encs["fp16"].infer(batch).astype(np.float64)
            cos.append(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).ravel())
            diff = max(diff, float(np.abs(a - b).max()))
        all_cos = np.concatenate(cos)
        report["encoder_parity_photos"] = {k: v for k, v in (enc_files.manifest.fp16.parity or {}).items()  # type: ignore[union-attr]
                                           if k != "samples"}
        report["encoder_parity_video"] = {"tokens": int(all_cos.size), "min_cosine": round(float(all_cos.min()), 6),
                                          "mean_cosine": round(float(all_cos.mean()), 6),
                                          "max_abs_diff": round(diff, 4)}
        report["sizes_mb"] = {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(out.glob("*.onnx"))}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
