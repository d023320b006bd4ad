"""frametok against the loop a user would write with Ultralytics, on the same video, weights and threads.

Prints one JSON object. Two comparisons, each alternated over ``--rounds`` (default 2: A B A B, with the
tuned peer below: A B C A B C), one process after the other in one run, every side in a subprocess of
its own:

* ``detector_only``: ``frametok run --encoder none --no-track`` (YOLOv8n, ``yolov8n_coco.onnx``) against
  Ultralytics' ``YOLO("yolov8n_coco.pt").predict(video, stream=True)`` at its defaults (torch, CPU);
* ``detector_encoder``: ``frametok run --encoder dinov2_vits14 --no-track`` against the same predict loop
  plus onnxruntime DINOv2 ViT-S/14 on every frame (batch 1), pre-processed as its manifest says (the
  manifest frametok used: squash resize to 224x224, RGB, scale, ImageNet mean/std). Neither side tracks.

Both plain loops can lose much of their time to busy-waiting threads: torch's OpenMP threads spin at
their barriers (with T = all cores, one thread descheduled by anything else on the machine stalls the
rest) and, in the second loop, while onnxruntime runs (and onnxruntime's while torch runs). So a third
side, ``peer_tuned``, runs the same loop with ``OMP_WAIT_POLICY=PASSIVE`` and onnxruntime's spinning off
(as frametok's sessions run); ``ratio_vs_tuned`` is frametok against it (``--no-tuned-peer``: left out).
Each round runs frametok, peer, peer_tuned in that order; ``load_before`` is the 1-minute load average
before each run.

Threads: ``--threads T`` (default: one per core) is frametok's ``--threads`` (onnxruntime intra-op
threads); the peer calls ``torch.set_num_threads(T)`` (again after predict's first frame: Ultralytics'
device setup resets it to cores - 1, i.e. 1 on 2 cores) and gives its onnxruntime session T intra-op
threads. frametok's producer (decoding) runs in a process of its own, as it always does; the peer decodes
in its loop, as Ultralytics does.

fps is frames processed / wall time of the steady part, model loading and the first inference excluded:

* frametok: a live ``Subscriber`` in this process (started before ``frametok run --wait-subscribers 1``)
  stamps each packet as it arrives. The clock starts at the arrival of the first batch's last packet (the
  packets that share the first packet's ``t_infer`` stamp) and stops at the last packet; frames = frame
  index of the last packet - frame index of that first-batch packet. Counting by frame index keeps a
  packet the subscriber lost (reported as ``gaps``) from lowering the count; the subscriber's own work
  (decoding packets, rebuilding patch grids) runs on the same cores and is part of frametok's cost.
  The run summary's fps (``summary_fps``, start-up included) is kept in ``runs`` for reference.
* peer: the clock starts when the loop has finished the first frame (model built, Ultralytics' warm-up
  and the first frame done) and stops after the last one; frames = frames processed - 1. A peer run that
  is still going after ``--peer-max-s`` timed seconds (default 120) stops there (fps over what it did).

``ratio`` = mean frametok fps / mean peer fps over the rounds; ``runs`` has every run's figures.
``--frames N`` uses the first N frames of the video (packets copied, not re-encoded: the decoding cost
stays that of the original file; 0: all of it). ``--precision`` is passed to ``frametok run``
(``auto``, ``fp32``, ``int8``, ...); the precision the worker reports using is in ``runs``.
Letterbox: Ultralytics letterboxes a 768x576 frame to 640x480 (``rect``); frametok does the same with a
detector graph of dynamic height and width (``frametok export yolo yolov8n_coco.pt --out DIR``, then
``--models DIR``; ``yolov8n_coco.pt`` must be in that folder too, for the peer) and squares it to 640x640
with a fixed one (the shared ``yolov8n_coco.onnx``): the ``runs`` say which input frametok used.

    python bench/peers.py [--frames 200] [--threads 2] [--precision auto] [--rounds 2]
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))
ENCODER = "dinov2_vits14"


def trim_video(src: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` video packets of ``src`` copied (not re-encoded) into ``out``."""
    import av

    with av.open(str(src)) as source, av.open(str(out), "w") as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        copied = 0
        for packet in source.demux(stream_in):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if copied >= frames:
                break
            packet.stream = stream_out
            target.mux(packet)
            copied += 1
    return out


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def frametok_run(video: Path, models: Path, threads: int, encoder: bool, precision: str | None) -> dict[str, Any]:
    """One ``frametok run`` of ``video``, timed by a live subscriber in this process."""
    from frametok import EndOfStream, StreamInfo, Subscriber, TokenPacket

    endpoint = _free_endpoint()
    args = [sys.executable, "-m", "frametok", "run", "--models", str(models), "--source", f"v={video}",
            "--publish", endpoint, "--wait-subscribers", "1", "--no-progress", "--no-track",
            "--threads", str(threads), "--detector", "yolov8n", "--encoder", ENCODER if encoder else "none"]
    if precision:
        args += ["--precision", precision]
    arrivals: list[tuple[float, int, int]] = []  # (arrival, frame index, t_infer stamp)
    precisions: dict[str, Any] = {}
    with Subscriber(endpoint, timeout_s=2) as sub:
        t_start = last = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ended = False
        while not ended and proc.poll() is None and time.perf_counter() - last < 600:
            for msg in sub:  # returns after 2 s of silence, then frametok is asked whether it still runs
                last = time.perf_counter()
                if isinstance(msg, TokenPacket):
                    arrivals.append((last, msg.frame_index, msg.timestamps.t_infer_ns))
                elif isinstance(msg, StreamInfo):
                    precisions = {role: m.get("precision") for role, m in msg.models.items()}
                elif isinstance(msg, EndOfStream):
                    ended = True
        if proc.poll() is None and not ended:
            proc.terminate()
        out, err = proc.communicate(timeout=120)
        gaps = sum(g.missing for g in sub.gaps.values())
    if proc.returncode != 0 or len(arrivals) < 2:
        raise SystemExit(f"frametok run failed ({proc.returncode}, {len(arrivals)} packets): {err.strip()}")
    first_batch = [a for a in arrivals if a[2] == arrivals[0][2]] if arrivals[0][2] else arrivals[:1]
    if len(first_batch) == len(arrivals):  # one batch only: nothing after it to time
        first_batch = arrivals[:1]
    t0, f0, _ = first_batch[-1]
    t1, f1, _ = arrivals[-1]
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    summary_fps = re.search(r"\(([\d.]+) fps\)", summary)
    return {"side": "frametok", "fps": (f1 - f0) / (t1 - t0), "frames_timed": f1 - f0, "seconds": t1 - t0,
            "packets": len(arrivals), "gaps": gaps, "startup_s": arrivals[0][0] - t_start,
            "first_batch": len(first_batch), "precision": precisions,
            "summary_fps": float(summary_fps.group(1)) if summary_fps else None, "summary": summary}


def _encoder_manifest(models: Path) -> Path:
    """The manifest frametok used for the encoder: beside the .onnx, or the one it described in its cache."""
    beside = models / f"{ENCODER}.json"
    if beside.exists():
        return beside
    cache = Path(os.environ.get("FRAMETOK_CACHE") or Path.home() / ".cache" / "frametok").expanduser()
    found = sorted(cache.rglob(f"{ENCODER}.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no manifest for {ENCODER} beside {models} or in {cache}: run frametok with it first")
    return found[-1]


def peer_run(video: Path, models: Path, threads: int, manifest: Path | None, tuned: bool = False,
             max_s: float = 0.0) -> dict[str, Any]:
    """The loop a user would write: Ultralytics predict (+ onnxruntime DINOv2 per frame). In a child process."""
    cmd = [sys.executable, __file__, "--peer", str(video), "--models", str(models), "--threads", str(threads),
           "--peer-max-s", str(max_s)]
    if manifest is not None:
        cmd += ["--manifest", str(manifest)]
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0",
           "YOLO_CONFIG_DIR": os.environ.get("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "yolo-cfg"))}
    if tuned:  # torch's OpenMP threads sleep while onnxruntime runs, and onnxruntime's do not spin (as frametok's)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        cmd.append("--no-spin")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"peer run failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "side": "peer_tuned" if tuned else "peer"}


def _peer_main(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from ultralytics import YOLO

    model = YOLO(str(args.models / "yolov8n_coco.pt"))
    session = None
    if args.manifest is not None:
        import cv2
        import onnxruntime as ort

        m = json.loads(args.manifest.read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        if args.no_spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        onnx = Path(m["onnx_file"])  # a manifest names its graph relative to itself
        onnx = onnx if onnx.is_absolute() else args.manifest.parent / onnx
        session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        h, w = m["input_size_hw"]
        scale = np.float32(m["scale"])
        mean = np.asarray(m["mean"], np.float32)
        std = np.asarray(m["std"], np.float32)
        bgr = m["colour"] == "BGR"
    stamps: list[float] = []
    boxes = 0
    for result in model.predict(str(args.peer), stream=True, verbose=False):
        if not stamps:  # predict's device setup resets torch to Ultralytics' own count (cores - 1): set it again
            torch.set_num_threads(args.threads)
        boxes += len(result.boxes)
        if session is not None:
            img = cv2.resize(result.orig_img, (w, h), interpolation=cv2.INTER_LINEAR)  # orig_img is BGR
            if not bgr:
                img = img[..., ::-1]
            x = ((img.astype(np.float32) * scale - mean) / std).transpose(2, 0, 1)[None]
            session.run(None, {m["input_name"]: np.ascontiguousarray(x)})
        stamps.append(time.perf_counter())
        if args.peer_max_s and stamps[-1] - stamps[0] > args.peer_max_s:
            break
    print(json.dumps({"fps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
                      "frames_timed": len(stamps) - 1, "seconds": stamps[-1] - stamps[0], "packets": len(stamps),
                      "startup_s": stamps[0] - t_start, "boxes": boxes, "torch_threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=SHARED / "media" / "vtest.avi")
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--frames", type=int, default=200, help="first N frames of the video (0: all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of both sides")
    parser.add_argument("--precision", default=None, help="frametok run --precision (auto, fp32, int8, ...)")
    parser.add_argument("--rounds", type=int, default=2, help="frametok/peer pairs per comparison")
    parser.add_argument("--only", choices=["detector_only", "detector_encoder"], help="one comparison only")
    parser.add_argument("--peer", type=Path, help=argparse.SUPPRESS)  # internal: run the peer loop on this video
    parser.add_argument("--no-tuned-peer", action="store_true", help="leave out the tuned peer")
    parser.add_argument("--peer-max-s", type=float, default=120.0,
                        help="end a peer run after this many timed seconds (fps over the frames done; 0: never)")
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)  # internal: the peer's encoder manifest
    parser.add_argument("--no-spin", action="store_true", help=argparse.SUPPRESS)  # internal: onnxruntime no spinning
    args = parser.parse_args()
    if args.peer is not None:
        _peer_main(args)
        return
    with tempfile.TemporaryDirectory(prefix="frametok-peers-") as tmp:
        os.environ.setdefault("FRAMETOK_CACHE", str(Path(tmp) / "cache"))
        video = args.video
        if args.frames:
            video = trim_video(args.video, args.frames, Path(tmp) / f"clip{args.video.suffix}")
        runs: list[dict[str, Any]] = []
        results: dict[str, Any] = {}
        for name in ("detector_only", "detector_encoder"):
            if args.only and name != args.only:
                continue
            encoder = name == "detector_encoder"
            sides = ["frametok", "peer"] + ([] if args.no_tuned_peer else ["peer_tuned"])
            fps: dict[str, list[float]] = {side: [] for side in sides}
            for rnd in range(1, args.rounds + 1):
                manifest = None
                for side in sides:
                    load = round(os.getloadavg()[0], 2)
                    if side == "frametok":
                        res = frametok_run(video, args.models, args.threads, encoder, args.precision)
                        manifest = _encoder_manifest(args.models) if encoder else None
                    else:
                        res = peer_run(video, args.models, args.threads, manifest, tuned=side == "peer_tuned",
                                       max_s=args.peer_max_s)
                    fps[side].append(res["fps"])
                    runs.append({"comparison": name, "round": rnd, "load_before": load,
                                 **{k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}})
                print(f"{name} round {rnd}: " + ", ".join(f"{side} {fps[side][-1]:.2f} fps" for side in sides),
                      file=sys.stderr)
            mean = {side: sum(v) / len(v) for side, v in fps.items()}
            results[name] = {"frametok_fps": round(mean["frametok"], 2), "peer_fps": round(mean["peer"], 2),
                             "ratio": round(mean["frametok"] / mean["peer"], 3),
                             "ratio_per_round": [round(a / b, 3)
                                                 for a, b in zip(fps["frametok"], fps["peer"], strict=True)]}
            if "peer_tuned" in mean:
                results[name].update(peer_tuned_fps=round(mean["peer_tuned"], 2),
                                     ratio_vs_tuned=round(mean["frametok"] / mean["peer_tuned"], 3))
        frames = next((r["packets"] for r in runs), 0)  # the clip's frames (frametok's packets)
    print(json.dumps({**results, "threads": args.threads, "frames": frames, "precision": args.precision,
                      "video": str(args.video), "cpus": os.cpu_count(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
