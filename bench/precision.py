"""int8 and fp16 against fp32 graphs of the shared models on onnxruntime's CPU provider. Prints one JSON object.

Both models are exported into a temporary folder with ``--int8 --calibrate vtest.avi`` (the exporter's
own gate runs then, on held-out vtest frames: its figures are reported as ``*_int8_gate``) and, unless
``--no-fp16``, ``--half`` (checked on the shared photos). Besides, the detector is quantised once with
every node in int8, head included (``int8_all``: what keeping the head's ops in float costs and saves).
Each model's graphs then run the same batch of real vtest frames, taking turns round after round (a
shared machine's speed drifts); the median ms per batch is reported with the ratio to fp32. Accuracy
over the first ``--frames`` frames of the video that were not calibration frames: detections (twins:
same class, IoU >= 0.9, score within 0.05, both ways, as the exporter's gate) and encoder tokens
(cosine per token).

    python bench/precision.py [--threads 2] [--batch 4] [--rounds 10] [--frames 60] [--no-fp16]
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


def export(models: Path, media: Path, out: Path, half: bool) -> None:
    samples = [a for name in SAMPLES for a in ("--sample", str(media / name))] if half else []
    flags = ["--int8", "--calibrate", str(media / "vtest.avi"), *(["--half", *samples] if half else [])]
    for args in (["yolo", str(models / "yolov8n_coco.onnx")],
                 ["encoder", str(models / "dinov2_vits14.onnx"), "--prefix-tokens", "1", "--context", "cls"]):
        done = subprocess.run([sys.executable, "-m", "frametok", "export", *args, "--out", str(out), *flags],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"export failed: {done.stderr}")


def video_frames(path: Path, count: int, skip: set[int]) -> list[Any]:
    """The first ``count`` frames of ``path`` whose index is not in ``skip`` (RGB)."""
    import av

    from frametok.exporters.int8 import Frame

    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index not in skip:
                frames.append(Frame(f"{path.name}#{index}", np.asarray(frame.to_ndarray(format="rgb24"))))
            if len(frames) >= count:
                break
    return frames


def speed(runners: dict[str, Any], batch: np.ndarray, rounds: int) -> dict[str, float]:
    for run in runners.values():  # warm-up
        run(batch)
        run(batch)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            times[name].append((time.perf_counter() - start) * 1000.0)
    result = {f"{name}_ms_per_batch": round(float(np.median(t)), 1) for name, t in times.items()}
    for name in runners:
        if name != "fp32":
            result[f"{name}_over_fp32"] = round(result[f"{name}_ms_per_batch"] / result["fp32_ms_per_batch"], 3)
    return result


def figures(parity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parity.items() if not k.endswith("_samples") and k != "gate"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--frames", type=int, default=60, help="video frames for the accuracy figures")
    parser.add_argument("--no-fp16", action="store_true", help="int8 only (the fp16 export takes a minute)")
    args = parser.parse_args()

    from frametok.errors import ExportError
    from frametok.exporters.int8 import (
        DetectorGate,
        EncoderGate,
        detector_int8_parity,
        encoder_int8_parity,
        quantize_detector,
    )
    from frametok.models.detector import Detector
    from frametok.models.encoder import Encoder
    from frametok.models.session import Precision, create_session, locate_model

    video = SHARED / "media" / "vtest.avi"
    precisions: list[Precision] = ["fp32", "int8"] if args.no_fp16 else ["fp32", "fp16", "int8"]
    report: dict[str, Any] = {"threads": args.threads, "batch": args.batch, "rounds": args.rounds,
                              "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="frametok-precision-") as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        export(SHARED / "models", SHARED / "media", out, half=not args.no_fp16)
        report["export_s"] = round(time.perf_counter() - start, 1)
        det_files, enc_files = locate_model(out / "yolov8n_coco.json"), locate_model(out / "dinov2_vits14.json")
        det_int8, enc_int8 = det_files.manifest.int8, enc_files.manifest.int8
        assert det_int8 is not None and enc_int8 is not None and det_files.int8_onnx_path and enc_files.int8_onnx_path
        calib = {int(label.rsplit("#", 1)[1]) for label in det_int8.parity["calibration_samples"]}
        frames = video_frames(video, max(args.frames, args.batch), calib)
        report["frames"] = len(frames)

        dets = {p: Detector(det_files.manifest, create_session(det_files, ("cpu",), args.threads,  # type: ignore[arg-type]
                                                               precision=p)) for p in precisions}
        encs = {p: Encoder(enc_files.manifest, create_session(enc_files, ("cpu",), args.threads,  # type: ignore[arg-type]
                                                              precision=p)) for p in precisions}
        # every node in int8, head included, calibrated on the same frames
        det_batch = np.empty((args.batch, 3, *dets["fp32"].input_hw), np.float32)
        enc_batch = np.empty((args.batch, 3, *encs["fp32"].input_hw), np.float32)
        for i in range(args.batch):
            dets["fp32"].preprocess(frames[i].rgb, det_batch[i])
            encs["fp32"].preprocess(frames[i].rgb, enc_batch[i])
        calib_frames = video_frames(video, len(calib), set(range(max(calib) + 1)) - calib)  # exactly those
        calib_batches = []
        for frame in calib_frames:
            b = np.empty((1, 3, *dets["fp32"].input_hw), np.float32)
            dets["fp32"].preprocess(frame.rgb, b[0])
            calib_batches.append(b)
        all_int8 = out / "yolov8n_coco.int8_all.onnx"
        quantize_detector(det_files.onnx_path, all_int8, det_files.manifest.input_name, calib_batches,
                          keep_float=False)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        dets_all = Detector(det_files.manifest,  # type: ignore[arg-type]
                            ort.InferenceSession(str(all_int8), options, providers=["CPUExecutionProvider"]))
        report["detector_speed"] = speed({**{p: d.infer for p, d in dets.items()}, "int8_all": dets_all.infer},
                                         det_batch, args.rounds)
        report["encoder_speed"] = speed({p: e.infer for p, e in encs.items()}, enc_batch, args.rounds)

        report["detector_int8_gate"] = {**figures(det_int8.parity), "calibration_frames": det_int8.calibration_frames,
                                        "heldout_frames": det_int8.heldout_frames}
        report["encoder_int8_gate"] = {**figures(enc_int8.parity), "heldout_frames": enc_int8.heldout_frames}
        never = DetectorGate(min_matched=0.0, min_reference_boxes=0)  # figures, not a verdict: judged below
        default = DetectorGate()
        for key, graph in (("detector_int8_video", det_files.int8_onnx_path), ("detector_int8_all_video", all_int8)):
            record = figures(detector_int8_parity(det_files.manifest, det_files.onnx_path, graph,  # type: ignore[arg-type]
                                                  frames, never))
            record.pop("passed")
            record["passes_gate"] = min(record["matched_fp32"], record["matched_int8"]) >= default.min_matched
            report[key] = record
        try:
            record = encoder_int8_parity(enc_files.manifest, enc_files.onnx_path, enc_files.int8_onnx_path,  # type: ignore[arg-type]
                                         frames, EncoderGate(min_cosine=-1.0, median_cosine=-1.0))
        except ExportError as exc:  # only non-finite tokens fail this gate
            raise SystemExit(str(exc)) from exc
        record.pop("passed")
        enc_gate = EncoderGate()
        passes = record["min_cosine"] >= enc_gate.min_cosine and record["median_cosine"] >= enc_gate.median_cosine
        report["encoder_int8_video"] = {**figures(record), "passes_gate": passes}
        if not args.no_fp16:
            report["fp16_parity_photos"] = {
                "detector": {k: v for k, v in (det_files.manifest.fp16.parity or {}).items() if k != "samples"},  # type: ignore[union-attr]
                "encoder": {k: v for k, v in (enc_files.manifest.fp16.parity or {}).items() if k != "samples"},  # type: ignore[union-attr]
            }
        report["sizes_mb"] = {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(out.glob("*.onnx"))}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
