"""Pipeline throughput against the same models run directly through onnxruntime, in one run.

Prints one JSON object. For each stream count (default 1, 2, 4) and worker count (``--workers 1,2``; results
keyed ``STREAMSxWORKERS`` then), ``frametok run`` processes that many copies of the video in
``file`` mode (every frame) while a subscriber counts packets; its frames/s
(first to last packet, start-up excluded) is compared with a hand-rolled loop over the same decoded
frames: the same Detector/Encoder pre-processing (the rect letterbox too, when the detector graph takes any
height and width, as the worker then does: ``detector_input_hw``), onnxruntime sessions, batch size and threads,
without processes, shared memory or sockets. The raw loop runs right before and right after each
pipeline run and ``ratio`` = pipeline / mean of those two (a shared machine's speed drifts over minutes).
``models_busy`` is the share of the worker's active time its models ran (from the run's summary).
Peak resident memory (VmHWM) of every pipeline process is sampled while it runs.

    python bench/pipeline.py --models ../shared/models --video ../shared/media/vtest.avi
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))


def trim_video(src: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` frames of ``src``, re-encoded (MPEG-4, high bit rate) to ``out``."""
    import av

    from frametok.streamer.source.decode import decode_frames

    with av.open(str(out), "w") as container:
        stream = None
        for frame in decode_frames(str(src)):
            if frame.index >= frames:
                break
            if stream is None:
                h, w = frame.frame_rgb.shape[:2]
                stream = container.add_stream("mpeg4", rate=10)
                stream.width, stream.height, stream.pix_fmt, stream.bit_rate = w, h, "yuv420p", 8_000_000
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.frame_rgb, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode(None))
    return out


def raw_fps(video: Path, models_dir: Path, max_batch: int, threads: int,
            providers: tuple[str, ...] = ("cpu",), precision: str | None = None) -> dict[str, float]:
    """Frames/s of the models alone on in-memory decoded frames (and per-model ms per frame)."""
    from frametok.models.detector import Detector
    from frametok.models.encoder import Encoder
    from frametok.models.session import create_session
    from frametok.registry import resolve_model
    from frametok.streamer.source.decode import decode_frames
    from frametok.streamer.worker.models import detector_rect

    det_files = resolve_model("yolov8n", "detector", [models_dir], allow_online=False)
    enc_files = resolve_model("dinov2_vits14", "encoder", [models_dir], allow_online=False)
    precision = precision or "auto"  # as the worker chooses
    rect = detector_rect(None, det_files)  # the worker's default: the rect letterbox when the graph allows it
    det = Detector(det_files.manifest, create_session(det_files, providers, threads, precision=precision),  # type: ignore[arg-type]
                   rect=rect)
    enc = Encoder(enc_files.manifest, create_session(enc_files, providers, threads, precision=precision))  # type: ignore[arg-type]
    frames = [f.frame_rgb for f in decode_frames(str(video))]
    det_hw = det.input_hw_for(frames[0].shape[:2]) if rect else det.input_hw  # the video's frames share a size
    det_batch = np.empty((max_batch, 3, *det_hw), np.float32)
    enc_batch = np.empty((max_batch, 3, *enc.input_hw), np.float32)
    t_pre = t_det = t_enc = 0.0
    # warm-up
    det.infer(det_batch[:1].copy())
    enc.infer(enc_batch[:1].copy())
    t0 = time.perf_counter()
    for start in range(0, len(frames), max_batch):
        chunk = frames[start : start + max_batch]
        n = len(chunk)
        a = time.perf_counter()
        infos = [det.preprocess(f, det_batch[i]) for i, f in enumerate(chunk)]
        for i, f in enumerate(chunk):
            enc.preprocess(f, enc_batch[i])
        b = time.perf_counter()
        raw = det.infer(det_batch[:n])
        [det.postprocess(raw[i], info) for i, info in enumerate(infos)]
        c = time.perf_counter()
        out = enc.split(enc.infer(enc_batch[:n]))
        out.context.astype(np.float16), out.patches.astype(np.float16)
        d = time.perf_counter()
        t_pre, t_det, t_enc = t_pre + b - a, t_det + c - b, t_enc + d - c
    total = time.perf_counter() - t0
    n = len(frames)
    return {
        "providers": det.session.get_providers()[0],
        "detector_input_hw": list(det_hw),
        "frames": n,
        "fps": n / total,
        "models_only_fps": n / (t_det + t_enc),
        "preprocess_ms_per_frame": 1000 * t_pre / n,
        "detector_ms_per_frame": 1000 * t_det / n,
        "encoder_ms_per_frame": 1000 * t_enc / n,
    }


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _peak_rss(root_pid: int, peaks: dict[str, float], stop: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(root_pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                name = proc.name()
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0)
            role = ("supervisor" if proc.pid == root_pid
                    else "worker" if name == "frametok-worker" or re.fullmatch(r"frametok-w\d+", name)
                    else "hub" if name == "frametok-hub"
                    else "producer" if name.startswith("frametok-src-") else "other")
            key = f"{role}:{proc.pid}"
            peaks[key] = max(peaks.get(key, 0.0), hwm / 1024)
        stop.wait(0.25)


def pipeline_fps(video: Path, models_dir: Path, streams: int, max_batch: int, threads: int,
                 providers: tuple[str, ...] = ("cpu",), precision: str | None = None,
                 workers: int = 1) -> dict[str, Any]:
    from frametok import StreamInfo, Subscriber, TokenPacket

    endpoint = _free_endpoint()
    args = [sys.executable, "-m", "frametok", "run", "--models", str(models_dir), "--publish", endpoint,
            "--wait-subscribers", "1", "--no-progress", "--max-batch", str(max_batch), "--threads", str(threads),
            "--providers", ",".join(providers), "--workers", str(workers)]
    if precision is not None:
        args += ["--precision", precision]
    for i in range(streams):
        args += ["--source", f"s{i}={video}"]
    times: list[float] = []
    per_stream: dict[str, int] = {}
    used: dict[str, list[str]] = {}
    peaks: dict[str, float] = {}
    stop = threading.Event()
    with Subscriber(endpoint, timeout_s=600) as sub:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = threading.Thread(target=_peak_rss, args=(proc.pid, peaks, stop), daemon=True)
        sampler.start()
        for msg in sub:
            if isinstance(msg, StreamInfo):
                used = {role: list(m.get("providers", [])) for role, m in msg.models.items()}
            if isinstance(msg, TokenPacket):
                times.append(time.perf_counter())
                per_stream[msg.stream_id] = per_stream.get(msg.stream_id, 0) + 1
        out, err = proc.communicate(timeout=120)
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"frametok run failed ({proc.returncode}): {err}")
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    by_role: dict[str, float] = {}
    for key, mb in peaks.items():
        role = key.split(":")[0]
        by_role[role] = max(by_role.get(role, 0.0), round(mb, 1))
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    busy = re.search(r"models busy (\d+)%", summary)
    return {"packets": len(times), "per_stream": per_stream, "fps": fps, "peak_rss_mb": by_role, "providers": used,
            "models_busy": int(busy.group(1)) / 100 if busy else None, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=SHARED / "media" / "vtest.avi")
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument("--workers", default="1", help="worker counts to run each stream count with, e.g. 1,2 "
                        "(workers split --threads; the raw loop keeps all of them)")
    parser.add_argument("--frames", type=int, default=200, help="frames per stream (the video is trimmed)")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    parser.add_argument("--providers", default="cpu", help="execution providers in order, e.g. tensorrt,cuda,cpu")
    parser.add_argument("--precision", default=None, choices=["auto", "fp32", "fp16", "int8"],
                        help="the worker's model precision (default: the run's default); int8: the graphs are "
                        "exported first (`export --int8 --calibrate VIDEO`), and each ratio is also given against "
                        "the fp32 raw loop (ratio_vs_fp32_raw)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="frametok-bench-") as tmp:
        os.environ.setdefault("FRAMETOK_CACHE", str(Path(tmp) / "cache"))
        clip = trim_video(args.video, args.frames, Path(tmp) / "clip.mp4")
        providers = tuple(args.providers.split(","))
        models = args.models
        if args.precision == "int8":  # int8 graphs beside copies of the models, gated as `export --int8` does
            sys.path.insert(0, str(ROOT / "bench"))
            from precision import export  # type: ignore[import-not-found]

            models = Path(tmp) / "models"
            export(args.models, args.video.parent, models, half=False)
        fp32_raws: list[dict[str, Any]] = []

        def raw() -> dict[str, Any]:
            if args.precision == "int8":
                fp32_raws.append(raw_fps(clip, models, args.max_batch, args.threads, providers, "fp32"))
            return raw_fps(clip, models, args.max_batch, args.threads, providers, args.precision)

        raws = [raw()]
        results: dict[str, Any] = {}
        worker_counts = [int(w) for w in args.workers.split(",")]
        runs = [(int(s), w) for s in args.streams.split(",") for w in worker_counts]
        for count, workers in runs:
            res = pipeline_fps(clip, models, count, args.max_batch, args.threads, providers, args.precision,
                               workers)
            raws.append(raw())
            before, after = raws[-2], raws[-1]
            raw_mean = (before["fps"] + after["fps"]) / 2
            res["raw_fps_before_after"] = [round(before["fps"], 2), round(after["fps"], 2)]
            res["ratio"] = round(res["fps"] / raw_mean, 3)
            if fp32_raws:  # int8 pipeline against the fp32 models alone (the gain int8 brings)
                fp32_mean = (fp32_raws[-2]["fps"] + fp32_raws[-1]["fps"]) / 2
                res["fp32_raw_fps_before_after"] = [round(fp32_raws[-2]["fps"], 2), round(fp32_raws[-1]["fps"], 2)]
                res["ratio_vs_fp32_raw"] = round(res["fps"] / fp32_mean, 3)
            models_only = (before["models_only_fps"] + after["models_only_fps"]) / 2
            res["ratio_models_only"] = round(res["fps"] / models_only, 3)
            res["fps"] = round(res["fps"], 2)
            res["workers"] = workers
            results[str(count) if len(worker_counts) == 1 else f"{count}x{workers}"] = res
            print(f"{count} stream(s), {workers} worker(s): {res['fps']:.2f} fps, raw {raw_mean:.2f}, "
                  f"ratio {res['ratio']}", file=sys.stderr)
    raw: dict[str, Any] = {k: sum(r[k] for r in raws) / len(raws) if isinstance(v, float) else v
                           for k, v in raws[0].items()}
    print(json.dumps({
        "video": str(args.video), "frames_per_stream": args.frames, "max_batch": args.max_batch,
        "threads": args.threads, "precision": args.precision, "cpus": os.cpu_count(),
        "raw": {k: round(v, 2) if isinstance(v, float) else v for k, v in raw.items()},
        "streams": results,
        "min_ratio": min(r["ratio"] for r in results.values()),
    }, indent=1))


if __name__ == "__main__":
    main()
