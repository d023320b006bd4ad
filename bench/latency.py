"""Latency of a live source that is faster than the worker: does it stay bounded over a long run?

Prints one JSON object. A loopback camera (MPEG-TS over TCP, served by PyAV in a subprocess, paced at
``--fps``) feeds ``frametok run`` (live policy: the newest frame wins) with the real models; a subscriber
records every packet for ``--seconds`` (default 60) after the first one. Reported:

* ``latency_ms``: capture (the frame's arrival at the producer) to the subscriber's receive, p50/p99/max,
  in the first and the last ``--window`` seconds (and capture to publish);
* ``drop_rate``: frames the producer dropped (newest frame wins) over frames that arrived;
* ``worker``: the worker's own per-batch time in the same run, from the packets' ``t_infer`` stamps
  (one per batch): the time between consecutive batches while the worker is saturated, and the frames
  per batch; and, as a cross-check, the models alone (pre/post-processing and inference of one frame in
  this process, after the run);
* ``own_batch``: each packet's latency over its own batch's time (from the batch before to its own), and
  the latency less that batch (about the frame's age when the worker took it): what pacing decides, apart
  from how long the machine took for that batch;
* ``target``: p99 latency below twice the per-batch time, and no growth from the first to the last window.

    python bench/latency.py --models ../shared/models [--seconds 60] [--fps 30] [--detector yolov8n]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _stats(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    a = np.asarray(values_ms)
    return {"n": len(values_ms), "p50": round(float(np.percentile(a, 50)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


def models_only_ms(args: argparse.Namespace, frames: int = 40) -> float | None:
    """Milliseconds per frame of the models alone, one frame per batch (as the live run batches them):
    pre-processing, inference and post-processing in this process, without the pipeline."""
    from frametok.models.detector import Detector
    from frametok.models.encoder import Encoder
    from frametok.models.session import create_session
    from frametok.registry import resolve_model

    threads = args.threads or 0
    det = enc = None
    if args.detector != "none":
        files = resolve_model(args.detector, "detector", [args.models])
        det = Detector(files.manifest, create_session(files, ("cpu",), threads))  # type: ignore[arg-type]
    if args.encoder != "none":
        files = resolve_model(args.encoder, "encoder", [args.models])
        enc = Encoder(files.manifest, create_session(files, ("cpu",), threads))  # type: ignore[arg-type]
    if det is None and enc is None:
        return None
    w, h = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), np.uint8) for _ in range(4)]
    det_in = np.empty((1, 3, *det.input_hw), np.float32) if det else None
    enc_in = np.empty((1, 3, *enc.input_hw), np.float32) if enc else None
    times = []
    for i in range(frames + 3):
        t = time.perf_counter()
        img = images[i % len(images)]
        if det is not None and det_in is not None:
            info = det.preprocess(img, det_in[0])
            det.postprocess(det.infer(det_in)[0], info)
        if enc is not None and enc_in is not None:
            enc.preprocess(img, enc_in[0])
            enc.split(enc.infer(enc_in))
        times.append(time.perf_counter() - t)
    return float(np.median(times[3:]) * 1000)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from frametok import Subscriber, TokenPacket
    from tests.streamer.netserve import NetServer

    endpoint = _free_endpoint()
    w, h = (int(v) for v in args.size.split("x"))
    rows: list[tuple[int, int, int, int, int, int]] = []  # recv, capture, decode, infer, publish ns; frame
    dropped: list[int] = []
    reused = 0  # still frames (motion gating, on for live sources): the models did not run on them
    with NetServer(fps=args.fps, clip=args.clip, size_wh=(w, h)) as server, \
            Subscriber(endpoint, timeout_s=30) as sub:
        cmd = [sys.executable, "-m", "frametok", "run", "--source", f"cam={server.uri}", "--publish", endpoint,
               "--wait-subscribers", "1", "--no-progress", "--models", str(args.models),
               "--detector", args.detector, "--encoder", args.encoder, "--max-batch", str(args.max_batch)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            end: float | None = None
            while end is None or time.monotonic() < end:
                msg = sub.recv(30)
                if msg is None:
                    raise SystemExit(f"no packet for 30 s; frametok run: {proc.poll()}")
                if not isinstance(msg, TokenPacket):
                    continue
                now = time.time_ns()
                if end is None:
                    end = time.monotonic() + args.seconds
                t = msg.timestamps
                rows.append((now, t.t_capture_ns, t.t_decode_ns, t.t_infer_ns, t.t_publish_ns, msg.frame_index))
                dropped.append(msg.dropped)
                reused += msg.reused
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"frametok run exited with {proc.returncode}: {err}")
    data = np.asarray(rows, np.int64)
    t0 = data[0, 0]
    since_s = (data[:, 0] - t0) / 1e9
    latency = (data[:, 0] - data[:, 1]) / 1e6
    to_publish = (data[:, 4] - data[:, 1]) / 1e6
    first = since_s < args.window
    last = since_s >= since_s[-1] - args.window
    # the worker stamps t_infer once per batch: distinct stamps are batches
    infer = data[:, 3]
    batch_ends = np.unique(infer)
    cycles_ms = np.diff(batch_ends) / 1e6
    frames_per_batch = len(infer) / len(batch_ends)
    batch_ms = float(np.median(cycles_ms)) if len(cycles_ms) else float("nan")
    # each packet against its own batch (the time from the batch before it to its own t_infer): on a shared
    # machine the batch time itself varies, and a slow batch makes its frames late whatever the pacing.
    # ``age_at_take``: latency less its own batch, about the frame's age when the worker took it
    j = np.searchsorted(batch_ends, infer)
    own = np.where(j > 0, (infer - batch_ends[np.maximum(j - 1, 0)]) / 1e6, np.nan)
    ok = np.isfinite(own) & (own > 0)
    own_ratio = latency[ok] / own[ok]
    age_at_take = latency[ok] - own[ok]
    arrived = int(data[-1, 5] - data[0, 5] + 1)
    drops = dropped[-1] - dropped[0]
    result: dict[str, Any] = {
        "source": {"fps": args.fps, "size_wh": [w, h], "clip": args.clip},
        "models": {"detector": args.detector, "encoder": args.encoder, "max_batch": args.max_batch},
        "seconds": round(float(since_s[-1]), 1),
        "packets": len(rows),
        "published_fps": round(len(rows) / float(since_s[-1]), 2),
        "frames_arrived": arrived,
        "dropped": drops,
        "drop_rate": round(drops / arrived, 3),
        "reused": reused,
        "latency_ms": {
            "first_window": _stats(latency[first].tolist()),
            "last_window": _stats(latency[last].tolist()),
            "all": _stats(latency.tolist()),
            "capture_to_publish_all": _stats(to_publish.tolist()),
        },
        "worker": {
            "batch_ms_p50": round(batch_ms, 1),
            "batch_ms_p99": round(float(np.percentile(cycles_ms, 99)), 1) if len(cycles_ms) else None,
            "frames_per_batch": round(frames_per_batch, 2),
            "infer_to_publish_ms_p50": round(float(np.median((data[:, 4] - data[:, 3]) / 1e6)), 2),
        },
        "own_batch": {
            "latency_over_own_batch_p50": round(float(np.percentile(own_ratio, 50)), 2),
            "latency_over_own_batch_p99": round(float(np.percentile(own_ratio, 99)), 2),
            "age_at_take_ms": _stats(age_at_take.tolist()),
        },
        "window_s": args.window,
        "summary": out.strip().splitlines()[-1] if out.strip() else "",
    }
    if not args.no_models_only:
        models_ms = models_only_ms(args)
        result["worker"]["models_only_ms_per_frame"] = round(models_ms, 1) if models_ms else None
    p99_first = result["latency_ms"]["first_window"]["p99"]
    p99_last = result["latency_ms"]["last_window"]["p99"]
    result["target"] = {
        "p99_over_batch": round(float(np.percentile(latency, 99)) / batch_ms, 2),
        "p99_below_2x_batch": bool(float(np.percentile(latency, 99)) < 2 * batch_ms),
        "growth_p99_ms": round(p99_last - p99_first, 1),
        "no_growth": bool(p99_last <= p99_first + 0.25 * batch_ms),
    }
    models_ms = result["worker"].get("models_only_ms_per_frame")
    if models_ms:
        result["target"]["p99_over_models_only"] = round(float(np.percentile(latency, 99)) / models_ms, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to record after the first packet")
    parser.add_argument("--window", type=float, default=10.0, help="first/last window, seconds")
    parser.add_argument("--fps", type=float, default=30.0, help="the loopback camera's frame rate")
    parser.add_argument("--size", default="640x480", help="its frame size (synthetic frames)")
    parser.add_argument("--clip", default=None, help="loop this video instead of synthetic frames")
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--detector", default="yolov8n")
    parser.add_argument("--encoder", default="dinov2_vits14")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-models-only", action="store_true",
                        help="skip timing the models alone after the run (a cross-check of the batch time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="frametok-bench-") as tmp:
        os.environ.setdefault("FRAMETOK_CACHE", str(Path(tmp) / "cache"))
        print(json.dumps(measure(args), indent=1))


if __name__ == "__main__":
    main()
