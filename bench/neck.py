"""The detector's neck as the soft-token grid (``encoder: {model: detector}``) against DINOv2, on vtest.avi with the
real YOLOv8n (yolov8n_coco.pt exported with its P5 map) and the real DINOv2 ViT-S/14. Prints one JSON object.

* cost, ms per frame at batch 1 (medians, the three taking turns on each frame, onnxruntime CPU): the detector
  alone (its export without the neck output), the detector with it (one pass, both outputs, plus making the grid),
  and DINOv2 (pre-processing and its pass): the neck's extra cost per frame against DINOv2's;
* compression on ``--frames`` consecutive frames (tau 0.05, keyframe_interval 100, float16 on the wire, as the
  worker's defaults): the share of patch tokens sent and packet bytes against full-grid packets (soft tokens only);
* retrieval on ``--frames`` frames ``--every`` frames apart: same-frame top-1 of a frame's context token after a
  small change (brightness/contrast, 4 % cropped off the edges, re-encoded as JPEG q75) among all frames' context
  tokens, and the crop search (as the index's: a crop's context token against the frames'), a seeded random crop
  of half the frame's width and height; top-1 exact and within one step.

    python bench/neck.py [--frames 120] [--every 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))


def _models(tmp: Path, models: Path, threads: int) -> tuple[Any, Any, Any]:
    """(plain detector, NeckReader over the neck export, DINOv2 encoder), all at the rect letterbox / CPU."""
    from frametok.exporters.neck import add_neck
    from frametok.exporters.yolo import export_yolo
    from frametok.models.detector import Detector
    from frametok.models.encoder import Encoder
    from frametok.models.neck import NeckReader
    from frametok.models.session import create_session
    from frametok.registry import resolve_model

    plain_files = export_yolo(models / "yolov8n_coco.pt", tmp / "plain")
    neck_files = add_neck(plain_files, "P5", weights=models / "yolov8n_coco.pt", out_dir=tmp / "neck")
    plain = Detector(plain_files.manifest, create_session(plain_files, ("cpu",), threads), rect=True)  # type: ignore[arg-type]
    neck = NeckReader(Detector(neck_files.manifest, create_session(neck_files, ("cpu",), threads), rect=True))  # type: ignore[arg-type]
    enc_files = resolve_model("dinov2_vits14", "encoder", [models], allow_online=False)
    encoder = Encoder(enc_files.manifest, create_session(enc_files, ("cpu",), threads))  # type: ignore[arg-type]
    return plain, neck, encoder


def _neck_tokens(neck: Any, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    det = neck.detector
    batch = np.empty((1, 3, *det.input_hw_for(frame.shape[:2])), np.float32)
    info = det.preprocess(frame, batch[0])
    both = neck.infer(batch)
    context, grid = neck.grid(both[0][1], info)
    return context, grid, both[0][0]


def _dino_tokens(encoder: Any, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = encoder([frame])
    return out.context[0], out.patches[0]


def _timing(plain: Any, neck: Any, encoder: Any, frames: list[np.ndarray]) -> dict[str, Any]:
    det = plain
    shape = det.input_hw_for(frames[0].shape[:2])
    batch = np.empty((1, 3, *shape), np.float32)
    ms: dict[str, list[float]] = {"detector_alone": [], "detector_with_neck": [], "dinov2": []}
    for warm in (True, False):
        for frame in frames[:3] if warm else frames:
            det.preprocess(frame, batch[0])  # the same letterbox for both detector graphs: not timed
            t0 = time.perf_counter()
            det.infer(batch)
            t1 = time.perf_counter()
            both = neck.infer(batch)
            neck.grid(both[0][1], None)
            t2 = time.perf_counter()
            _dino_tokens(encoder, frame)
            t3 = time.perf_counter()
            if not warm:
                for key, s in zip(ms, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    ms[key].append(1000 * s)
    med = {k: round(float(np.median(v)), 2) for k, v in ms.items()}
    extra = med["detector_with_neck"] - med["detector_alone"]
    return {"frames": len(frames), "input_hw": list(shape), "ms_per_frame_median": med,
            "neck_extra_ms_per_frame": round(extra, 2), "dinov2_ms_per_frame": med["dinov2"],
            "neck_extra_share_of_dinov2": round(extra / med["dinov2"], 4),
            "with_neck_over_alone": round(med["detector_with_neck"] / med["detector_alone"], 4)}


def _compression(grids: list[np.ndarray], contexts: list[np.ndarray], size_wh: tuple[int, int]) -> dict[str, Any]:
    from frametok.grid import GridDecompressor, cosine_per_patch
    from frametok.models.compression import GridCompressor
    from frametok.packet import TokenPacket, encode

    comp = GridCompressor(tau=0.05, keyframe_interval=100, scene_cut_share=0.5, wire_dtype="float16")
    dec = GridDecompressor()
    sent_bytes = full_bytes = 0
    cos_min = 1.0
    kinds: dict[str, int] = {}
    for i, (grid, ctx) in enumerate(zip(grids, contexts, strict=True)):
        update = comp.encode(grid)
        kinds[update.kind] = kinds.get(update.kind, 0) + 1
        rebuilt = dec.apply(update)
        assert rebuilt is not None
        cos_min = min(cos_min, float(cosine_per_patch(rebuilt, grid).min()))
        ctx16 = ctx.astype(np.float16)
        packet = TokenPacket("cam", i, None, size_wh, context_token=ctx16, grid_update=update, seq=i)
        full = TokenPacket("cam", i, None, size_wh, context_token=ctx16, patch_tokens=grid.astype(np.float16), seq=i)
        sent_bytes += sum(len(p) if isinstance(p, bytes) else p.nbytes for p in encode(packet))
        full_bytes += sum(len(p) if isinstance(p, bytes) else p.nbytes for p in encode(full))
    n = len(grids)
    return {"grid_hwd": list(grids[0].shape), "frames": n, "updates": kinds,
            "tokens_sent_share": round(comp.tokens_sent / comp.tokens_total, 4),
            "bytes_per_frame": round(sent_bytes / n), "bytes_per_frame_full_grid": round(full_bytes / n),
            "bytes_share": round(sent_bytes / full_bytes, 4), "rebuilt_cos_min": round(cos_min, 5)}


def _changed(frame: np.ndarray) -> np.ndarray:
    """A small change of the same frame: brightness/contrast, 4 % off each edge (resized back), JPEG q75."""
    h, w = frame.shape[:2]
    dy, dx = round(0.04 * h), round(0.04 * w)
    out = cv2.resize(frame[dy : h - dy, dx : w - dx], (w, h), interpolation=cv2.INTER_LINEAR)
    out = np.clip(out.astype(np.float32) * 1.1 + 8, 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED))


def _crop(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = frame.shape[:2]
    y, x = int(rng.integers(0, h // 2 + 1)), int(rng.integers(0, w // 2 + 1))
    return np.ascontiguousarray(frame[y : y + h // 2, x : x + w // 2])


def _top1(queries: np.ndarray, keys: np.ndarray) -> dict[str, float]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    best = (q @ k.T).argmax(axis=1)
    idx = np.arange(len(q))
    return {"top1_same_frame": round(float((best == idx).mean()), 4),
            "top1_within_1_step": round(float((np.abs(best - idx) <= 1).mean()), 4)}


def _retrieval(tokens: Any, frames: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    keys = np.stack([tokens(f)[0] for f in frames])
    changed = np.stack([tokens(_changed(f))[0] for f in frames])
    rng = np.random.default_rng(seed)
    crops = np.stack([tokens(_crop(f, rng))[0] for f in frames])
    return {"queries": len(frames), "changed_frame": _top1(changed, keys), "crop_search": _top1(crops, keys)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--every", type=int, default=4, help="retrieval: frames this far apart")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--media", type=Path, default=SHARED / "media")
    args = parser.parse_args()
    from frametok.streamer.source.decode import decode_frames

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    limit = args.frames * args.every
    frames = [f.frame_rgb for f in decode_frames(str(args.media / "vtest.avi")) if f.index < limit]
    frames = frames[:limit]
    h, w = frames[0].shape[:2]
    out: dict[str, Any] = {"video": "vtest.avi", "size_wh": [w, h], "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="frametok-bench-neck-") as tmp:
        os.environ.setdefault("FRAMETOK_CACHE", str(Path(tmp) / "cache"))
        with contextlib.redirect_stdout(sys.stderr):  # Ultralytics' export log: stdout is the JSON's
            plain, neck, encoder = _models(Path(tmp), args.models, args.threads)
        run = frames[: args.frames]
        out["cost"] = _timing(plain, neck, encoder, run)
        print(f"cost: {out['cost']['ms_per_frame_median']}", file=sys.stderr)
        neck_tok = [_neck_tokens(neck, f)[:2] for f in run]
        dino_tok = [_dino_tokens(encoder, f) for f in run]
        out["compression"] = {
            "neck_p5": _compression([g for _, g in neck_tok], [c for c, _ in neck_tok], (w, h)),
            "dinov2": _compression([g for _, g in dino_tok], [c for c, _ in dino_tok], (w, h)),
            "tau": 0.05, "keyframe_interval": 100, "wire": "float16",
        }
        spaced = frames[:: args.every][: args.frames]
        out["retrieval"] = {
            "frames_apart": args.every,
            "neck_p5": _retrieval(lambda f: _neck_tokens(neck, f), spaced),
            "dinov2": _retrieval(lambda f: _dino_tokens(encoder, f), spaced),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
