"""Cross-frame token compression on real video with the real DINOv2 encoder. Prints one JSON object.

For (a) vtest.avi (static camera, people walking) and (b) a pan/zoom clip made here from a still
photo: the share of patch tokens not sent, bytes per frame (encoded packets, soft tokens only)
against full grids, the min and mean cosine of every rebuilt patch token to the encoder's output,
the time compression adds per frame next to the encoder's own time, and, with the encoder skip
on, the share of frames whose encoder run was skipped (and the rebuilt cosine then). Retrieval on
vtest.avi: each frame's uncompressed mean-pooled grid queries all frames' rebuilt grids; the share
of queries whose own frame (or one within +-1) ranks first.

    python bench/compression.py [--tau 0.05] [--frames 795]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))


def encode_all(video: Path, models: Path, limit: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, float]:
    """Frames (RGB), their true grids (N, gh, gw, D) float32 and CLS tokens, and encoder ms per frame."""
    from frametok.models.encoder import Encoder
    from frametok.models.session import create_session
    from frametok.registry import resolve_model
    from frametok.streamer.source.decode import decode_frames

    files = resolve_model("dinov2_vits14", "encoder", [models], allow_online=False)
    enc = Encoder(files.manifest, create_session(files, ("cpu",), threads=0))  # type: ignore[arg-type]
    frames = []
    for f in decode_frames(str(video)):
        if f.index >= limit:
            break
        frames.append(f.frame_rgb)
    grids, ctx = [], []
    t0 = time.perf_counter()
    for start in range(0, len(frames), 4):
        out = enc(frames[start : start + 4])
        grids.append(out.patches)
        ctx.append(out.context)
    ms = 1000 * (time.perf_counter() - t0) / len(frames)
    return frames, np.concatenate(grids), np.concatenate(ctx), ms


def run_compression(grids: np.ndarray, ctx: np.ndarray, tau: float, skip: list[bool] | None = None) -> dict[str, Any]:
    from frametok.grid import GridDecompressor, cosine_per_patch
    from frametok.models.compression import GridCompressor
    from frametok.packet import TokenPacket, encode

    comp = GridCompressor(tau=tau, keyframe_interval=100, scene_cut_share=0.5, wire_dtype="float16")
    dec = GridDecompressor()
    n = grids.shape[0]
    rebuilt = np.empty_like(grids, dtype=np.float16)
    cos_min, cos_sum = 1.0, 0.0
    bytes_comp = bytes_full = 0
    t_comp = 0.0
    keyframes = 0
    for i in range(n):
        t0 = time.perf_counter()
        update = comp.skip() if skip is not None and skip[i] else comp.encode(grids[i])
        grid = dec.apply(update)
        t_comp += time.perf_counter() - t0
        assert grid is not None
        rebuilt[i] = grid
        cos = cosine_per_patch(grid, grids[i])
        cos_min = min(cos_min, float(cos.min()))
        cos_sum += float(cos.mean())
        keyframes += update.kind == "key"
        ctx16 = ctx[i].astype(np.float16)
        packet = TokenPacket("cam", i, None, (768, 576), context_token=ctx16, grid_update=update, seq=i)
        full = TokenPacket("cam", i, None, (768, 576), context_token=ctx16,
                           patch_tokens=grids[i].astype(np.float16), seq=i)
        bytes_comp += sum(len(p) if isinstance(p, bytes) else p.nbytes for p in encode(packet))
        bytes_full += sum(len(p) if isinstance(p, bytes) else p.nbytes for p in encode(full))
    return {
        "frames": n,
        "patch_tokens_not_sent": round(1 - comp.tokens_sent / comp.tokens_total, 4),
        "keyframes": keyframes,
        "bytes_per_frame": round(bytes_comp / n),
        "bytes_per_frame_full_grid": round(bytes_full / n),
        "bytes_ratio": round(bytes_comp / bytes_full, 4),
        "rebuilt_cos_min": round(cos_min, 5),
        "rebuilt_cos_mean": round(cos_sum / n, 5),
        "compression_ms_per_frame": round(1000 * t_comp / n, 3),
        "_rebuilt": rebuilt,
    }


def skip_mask(frames: list[np.ndarray], threshold: float) -> list[bool]:
    """The worker's encoder-skip decision for each frame (the pixel test of SoftTokenStream)."""
    from frametok.models.soft_tokens import pixel_change, thumbnail

    mask, last = [], None
    for frame in frames:
        thumb = thumbnail(frame)
        if last is not None and pixel_change(thumb, last) < threshold:
            mask.append(True)
        else:
            mask.append(False)
            last = thumb
    return mask


def retrieval(grids: np.ndarray, rebuilt: np.ndarray) -> dict[str, float]:
    q = grids.mean(axis=(1, 2))
    k = rebuilt.astype(np.float32).mean(axis=(1, 2))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    best = (q @ k.T).argmax(axis=1)
    idx = np.arange(len(q))
    return {"queries": len(q), "top1_same_frame": round(float((best == idx).mean()), 4),
            "top1_within_1_frame": round(float((np.abs(best - idx) <= 1).mean()), 4)}


def pan_clip(photo: Path, out: Path, frames: int) -> Path:
    from frametok.demo import write_pan_zoom_clip

    return write_pan_zoom_clip([photo], out, frames_per_photo=frames, fps=10, size_wh=(768, 576))


def measure(name: str, video: Path, models: Path, tau: float, limit: int, skip_threshold: float,
            with_retrieval: bool) -> dict[str, Any]:
    frames, grids, ctx, enc_ms = encode_all(video, models, limit)
    res = run_compression(grids, ctx, tau)
    rebuilt = res.pop("_rebuilt")
    res["encoder_ms_per_frame"] = round(enc_ms, 2)
    res["compression_overhead_share_of_encoder"] = round(res["compression_ms_per_frame"] / enc_ms, 4)
    mask = skip_mask(frames, skip_threshold)
    skipped = run_compression(grids, ctx, tau, mask)
    skipped.pop("_rebuilt")
    res["encoder_skip"] = {
        "skip_threshold": skip_threshold,
        "frames_skipped_share": round(sum(mask) / len(mask), 4),
        "rebuilt_cos_min": skipped["rebuilt_cos_min"],
        "rebuilt_cos_mean": skipped["rebuilt_cos_mean"],
    }
    if with_retrieval:
        res["retrieval"] = retrieval(grids, rebuilt)
    print(f"{name}: {res['patch_tokens_not_sent']:.3f} not sent, min cos {res['rebuilt_cos_min']}", file=sys.stderr)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--frames", type=int, default=795, help="frames of vtest.avi")
    parser.add_argument("--pan-frames", type=int, default=120)
    parser.add_argument("--skip-threshold", type=float, default=0.01)
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--media", type=Path, default=SHARED / "media")
    args = parser.parse_args()
    out: dict[str, Any] = {"tau": args.tau, "wire": "float16", "keyframe_interval": 100, "scene_cut_share": 0.5}
    with tempfile.TemporaryDirectory(prefix="frametok-bench-") as tmp:
        os.environ.setdefault("FRAMETOK_CACHE", str(Path(tmp) / "cache"))
        out["vtest"] = measure("vtest", args.media / "vtest.avi", args.models, args.tau, args.frames,
                               args.skip_threshold, with_retrieval=True)
        clip = pan_clip(args.media / "astronaut.png", Path(tmp) / "pan.mp4", args.pan_frames)
        out["pan_zoom"] = measure("pan_zoom", clip, args.models, args.tau, args.pan_frames,
                                  args.skip_threshold, with_retrieval=False)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
