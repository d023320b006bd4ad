"""Motion gating: the bound reused tokens keep, and what gating buys on a clip with idle stretches.

Prints one JSON object.

* ``calibration``: on vtest.avi (static camera, people walking), the pan/zoom clip of bench/compression.py
  and a clip made here from vtest.avi with frozen segments (``--run`` frames moving, then as many frames
  of the last one, re-encoded: 50% still), the motion test of each candidate (thumbnail size, region
  size, threshold) is run the worker's way (a frame is still when no region of its grey thumbnail changed
  by more than the threshold since the last frame the models ran on), and every still frame's reused
  tokens (the encoder's output for that last frame) are compared with the encoder's real output for the
  still frame: the minimum per-patch cosine (``reused_cos_min``; the bound is 1 - tau) and of the context
  token, and the share of frames still. ``chosen``: the thumbnail and region the worker uses, with the
  threshold it uses for live sources; ``rebuilt_cos_min``: what a subscriber's grid (cross-frame
  compression on) has against the real output, over every frame, gated and not.
* ``pipeline``: ``frametok run`` on the frozen-segment clip with YOLOv8n + DINOv2, once with motion gating
  at the chosen threshold and once without (lossless subscriber, every packet): effective frames/s of
  each, their ratio, frames reused, and whether every moving frame's tokens (detections, track ids,
  context and content tokens: what the models made) equal the full run's. (The patch grid a subscriber
  rebuilds is compressed across frames, so it depends on the frames before; its bound is the
  ``rebuilt_cos_min`` above.)

    python bench/motion.py [--frames 795] [--run 30] [--still-frames 240] [--no-pipeline]
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

THUMBS = [(32, 24), (48, 36), (64, 48)]
CELLS = [1, 2, 4]
THRESHOLDS = [0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06]


def frozen_clip(video: Path, out: Path, frames: int, run: int, fps: int = 10) -> Path:
    """vtest.avi's frames with frozen segments: ``run`` moving frames, then ``run`` repeats of the last one
    (``frames`` in all, half of them still), MPEG-4 encoded like a camera's recording."""
    import av

    from frametok.streamer.source.decode import decode_frames

    src = decode_frames(str(video))
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 6_000_000
        written = 0
        last = None
        while written < frames:
            moving = (written // run) % 2 == 0
            if moving or last is None:
                last = next(src).frame_rgb
            if written == 0:
                stream.height, stream.width = last.shape[:2]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(last, format="rgb24")))
            written += 1
        container.mux(stream.encode(None))
    src.close()
    return out


def decode(video: Path, limit: int) -> list[np.ndarray]:
    from frametok.streamer.source.decode import decode_frames

    frames = []
    for f in decode_frames(str(video)):
        if f.index >= limit:
            break
        frames.append(f.frame_rgb)
    return frames


def encode(frames: list[np.ndarray], models: Path) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's real output for every frame: patch grids (N, gh, gw, D) and context tokens (N, D)."""
    from frametok.models.encoder import Encoder
    from frametok.models.session import create_session
    from frametok.registry import resolve_model

    files = resolve_model("dinov2_vits14", "encoder", [models], allow_online=False)
    enc = Encoder(files.manifest, create_session(files, ("cpu",), threads=0))  # type: ignore[arg-type]
    grids, ctx = [], []
    for start in range(0, len(frames), 4):
        out = enc(frames[start : start + 4])
        grids.append(out.patches)
        ctx.append(out.context)
    return np.concatenate(grids), np.concatenate(ctx)


def gate_mask(thumbs: list[np.ndarray], cell: int, threshold: float) -> tuple[list[bool], list[int]]:
    """The worker's decision per frame (True: still), and the frame whose tokens each frame carries."""
    from frametok.models.soft_tokens import pixel_change

    mask, source = [], []
    ref = -1
    for i, thumb in enumerate(thumbs):
        still = ref >= 0 and pixel_change(thumb, thumbs[ref], cell) < threshold
        if not still:
            ref = i
        mask.append(still)
        source.append(ref)
    return mask, source


def reused_bound(grids: np.ndarray, ctx: np.ndarray, mask: list[bool], source: list[int]) -> dict[str, Any]:
    from frametok.grid import cosine_per_patch

    patch_min = ctx_min = 1.0
    for i, still in enumerate(mask):
        if still:
            patch_min = min(patch_min, float(cosine_per_patch(grids[source[i]], grids[i]).min()))
            a, b = ctx[source[i]], ctx[i]
            ctx_min = min(ctx_min, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {"still_share": round(sum(mask) / len(mask), 4), "reused_cos_min": round(patch_min, 5),
            "reused_ctx_cos_min": round(ctx_min, 5)}


def calibrate(clips: dict[str, tuple[list[np.ndarray], np.ndarray, np.ndarray]], tau: float) -> dict[str, Any]:
    from frametok.models.soft_tokens import thumbnail

    table = []
    for wh in THUMBS:
        thumbs = {name: [thumbnail(f, wh) for f in frames] for name, (frames, _, _) in clips.items()}
        for cell in CELLS:
            for thr in THRESHOLDS:
                row: dict[str, Any] = {"thumb_wh": list(wh), "cell": cell, "threshold": thr}
                for name, (_, grids, ctx) in clips.items():
                    mask, source = gate_mask(thumbs[name], cell, thr)
                    row[name] = reused_bound(grids, ctx, mask, source)
                row["within_bound"] = all(row[n]["reused_cos_min"] >= 1 - tau for n in clips)
                table.append(row)
    return {"candidates": table}


def rebuilt_min(grids: np.ndarray, ctx: np.ndarray, tau: float, mask: list[bool] | None) -> float:
    """The worker's own soft-token state (cross-frame compression, reuse of still frames) fed the real
    outputs: the minimum cosine of the grid a subscriber rebuilds to the encoder's real output, every frame."""
    from frametok.config import EncoderConfig
    from frametok.grid import GridDecompressor, cosine_per_patch
    from frametok.streamer.worker.tokens import SoftTokenStream

    soft = SoftTokenStream(EncoderConfig(tau=tau, keyframe_interval=100, scene_cut_share=0.5))
    dec = GridDecompressor()
    worst = 1.0
    for i in range(len(grids)):
        tokens = soft.skip(reused=True) if mask is not None and mask[i] else soft.encoded(ctx[i], grids[i])
        assert tokens.grid_update is not None
        grid = dec.apply(tokens.grid_update)
        assert grid is not None
        worst = min(worst, float(cosine_per_patch(grid, grids[i]).min()))
    return worst


def _config(path: Path, clip: Path, models: Path, endpoint: str, lossless: str, threshold: float) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "sources": [{"id": "v", "uri": str(clip), "motion_threshold": threshold}],
        "publisher": {"endpoint": endpoint, "lossless_endpoint": lossless, "wait_subscribers": 1},
        "models_dir": str(models),
    }))
    return path


def _free() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def pipeline_run(clip: Path, models: Path, threshold: float, tmp: Path) -> tuple[list[Any], float]:
    """Every packet of a run over ``clip`` (lossless), and its frames/s from the first packet to the last."""
    from frametok import Subscriber, TokenPacket

    endpoint, lossless = _free(), _free()
    cfg = _config(tmp / f"run-{threshold}.yaml", clip, models, endpoint, lossless, threshold)
    packets: list[Any] = []
    times: list[float] = []
    with Subscriber(lossless, mode="lossless", timeout_s=300) as sub:
        proc = subprocess.Popen([sys.executable, "-m", "frametok", "run", str(cfg), "--no-progress"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for msg in sub:
                if isinstance(msg, TokenPacket):
                    packets.append(msg)
                    times.append(time.monotonic())
            _out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    if proc.returncode != 0:
        raise SystemExit(f"frametok run exited with {proc.returncode}: {err}")
    fps = (len(times) - 1) / (times[-1] - times[0])
    return packets, fps


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def compare(gated: list[Any], full: list[Any]) -> dict[str, Any]:
    """Moving frames of the gated run against the same frames of the full run."""
    by_frame = {p.frame_index: p for p in full}
    moving = [p for p in gated if not p.reused]
    fields = {"detections": 0, "track_ids": 0, "context": 0, "content": 0}
    worst_det = 0.0
    for p in moving:
        q = by_frame[p.frame_index]
        d, e = p.detections, q.detections
        same_det = (d is None and e is None) or (d is not None and e is not None and _same(d.xyxy, e.xyxy)
                                                 and _same(d.score, e.score) and _same(d.class_id, e.class_id))
        if not same_det and d is not None and e is not None and d.xyxy.shape == e.xyxy.shape:
            worst_det = max(worst_det, float(np.abs(d.xyxy - e.xyxy).max(initial=0.0)))
        fields["detections"] += same_det
        fields["track_ids"] += d is not None and e is not None and _same(d.track_id, e.track_id)
        fields["context"] += _same(p.context_token, q.context_token)
        fields["content"] += _same(p.content_tokens, q.content_tokens)
    return {"moving_frames": len(moving), "identical": {k: v == len(moving) for k, v in fields.items()},
            "identical_counts": fields, "det_xyxy_max_abs_diff_px": round(worst_det, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--frames", type=int, default=795, help="frames of vtest.avi for the calibration")
    parser.add_argument("--pan-frames", type=int, default=120)
    parser.add_argument("--still-frames", type=int, default=240, help="frames of the frozen-segment clip")
    parser.add_argument("--run", type=int, default=30, help="frames per moving / frozen segment")
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--media", type=Path, default=SHARED / "media")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the encoder's outputs of the clips here (the clips are made the same way again)")
    args = parser.parse_args()
    from frametok.models.soft_tokens import MOTION_CELL, MOTION_THRESHOLD, MOTION_THUMB_WH, thumbnail

    sys.path.insert(0, str(ROOT / "bench"))
    from compression import pan_clip

    out: dict[str, Any] = {"tau": args.tau}
    with tempfile.TemporaryDirectory(prefix="frametok-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ.setdefault("FRAMETOK_CACHE", str(tmp / "cache"))
        still_clip = frozen_clip(args.media / "vtest.avi", tmp / "frozen.mp4", args.still_frames, args.run)
        pan = pan_clip(args.media / "astronaut.png", tmp / "pan.mp4", args.pan_frames)
        clips = {}
        for name, video, limit in (("vtest", args.media / "vtest.avi", args.frames),
                                   ("pan_zoom", pan, args.pan_frames),
                                   ("frozen_segments", still_clip, args.still_frames)):
            frames = decode(video, limit)
            cached = args.cache / f"{name}-{limit}.npz" if args.cache is not None else None
            if cached is not None and cached.exists():
                with np.load(cached) as got:
                    grids, ctx = got["grids"], got["ctx"]
            else:
                grids, ctx = encode(frames, args.models)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(cached, grids=grids, ctx=ctx)
            clips[name] = (frames, grids, ctx)
            print(f"{name}: {len(frames)} frames encoded", file=sys.stderr)
        out["calibration"] = calibrate(clips, args.tau)
        chosen: dict[str, Any] = {"thumb_wh": list(MOTION_THUMB_WH), "cell": MOTION_CELL,
                                  "threshold": MOTION_THRESHOLD}
        for name, (frames, grids, ctx) in clips.items():
            thumbs = [thumbnail(f, MOTION_THUMB_WH) for f in frames]
            mask, source = gate_mask(thumbs, MOTION_CELL, MOTION_THRESHOLD)
            chosen[name] = {**reused_bound(grids, ctx, mask, source),
                            "rebuilt_cos_min_gated": round(rebuilt_min(grids, ctx, args.tau, mask), 5),
                            "rebuilt_cos_min_full": round(rebuilt_min(grids, ctx, args.tau, None), 5)}
        chosen["reused_cos_min"] = min(chosen[n]["reused_cos_min"] for n in clips)
        chosen["within_bound"] = chosen["reused_cos_min"] >= 1 - args.tau
        out["chosen"] = chosen
        if not args.no_pipeline:
            gated, fps_gated = pipeline_run(still_clip, args.models, MOTION_THRESHOLD, tmp)
            full, fps_full = pipeline_run(still_clip, args.models, 0.0, tmp)
            out["pipeline"] = {
                "clip": {"frames": args.still_frames, "run": args.run, "still_share": 0.5},
                "fps_gated": round(fps_gated, 2), "fps_full": round(fps_full, 2),
                "fps_ratio": round(fps_gated / fps_full, 3),
                "packets": [len(gated), len(full)],
                "reused_frames": sum(bool(p.reused) for p in gated),
                "moving_vs_full_run": compare(gated, full),
            }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
