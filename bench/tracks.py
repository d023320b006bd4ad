"""Track ids on a real video: how long people keep one id, and what the tracker costs next to the detector.

Prints one JSON object. Every frame of the video goes through the YOLOv8n detector (batches of
``--batch``, ``--threads`` onnxruntime threads) and then through one :class:`frametok.models.tracking.Tracker`
(all classes, as the worker would run it). A person track is a track id whose detections are mostly
persons. For each person track: ``frames`` (how many frames carry the id) and its longest run of
consecutive frames. ``suspected_fragmentations`` estimates id switches without ground truth: a
track that ended for good and, within ``lost_track_buffer`` frames, a new track that starts where it
ended (IoU >= 0.3 between the last box of one and the first box of the other), i.e. most likely the
same person under a new id. ``untracked`` counts detections left at -1.

    python bench/tracks.py --models ../shared/models --video ../shared/media/vtest.avi
    python bench/tracks.py --cache /tmp/vtest_dets.npz --lost-track-buffer 90   # detect once, tune later
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))

from frametok.packet import Detections  # noqa: E402


def detect(video: Path, models_dir: Path, batch: int, threads: int) -> tuple[list[Detections], float, int]:
    """Detections of every frame, the detector's ms per frame (pre/post-processing included), class count."""
    from frametok.models.detector import Detector
    from frametok.models.session import create_session
    from frametok.registry import resolve_model
    from frametok.streamer.source.decode import decode_frames

    files = resolve_model("yolov8n", "detector", [models_dir], allow_online=False)
    detector = Detector(files.manifest, create_session(files, ("cpu",), threads=threads))  # type: ignore[arg-type]
    out: list[Detections] = []
    spent = 0.0
    pending: list[Any] = []

    def flush() -> None:
        nonlocal spent
        t0 = time.perf_counter()
        out.extend(detector(pending))
        spent += time.perf_counter() - t0
        pending.clear()

    for frame in decode_frames(str(video)):
        pending.append(frame.frame_rgb)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return out, 1000 * spent / max(1, len(out)), detector.num_classes


def save_cache(path: Path, dets: list[Detections], detector_ms: float) -> None:
    np.savez_compressed(
        path,
        counts=np.array([len(d) for d in dets]),
        xyxy=np.concatenate([d.xyxy for d in dets]) if dets else np.zeros((0, 4), np.float32),
        score=np.concatenate([d.score for d in dets]) if dets else np.zeros(0, np.float32),
        class_id=np.concatenate([d.class_id for d in dets]) if dets else np.zeros(0, np.int32),
        detector_ms=np.array(detector_ms),
    )


def load_cache(path: Path) -> tuple[list[Detections], float]:
    z = np.load(path)
    ends = np.cumsum(z["counts"])
    starts = ends - z["counts"]
    dets = [Detections(z["xyxy"][a:b], z["score"][a:b], z["class_id"][a:b]) for a, b in zip(starts, ends, strict=True)]
    return dets, float(z["detector_ms"])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def longest_run(frames: list[int]) -> int:
    best = run = 1
    for prev, cur in itertools.pairwise(frames):
        run = run + 1 if cur == prev + 1 else 1
        best = max(best, run)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=SHARED / "models")
    p.add_argument("--video", type=Path, default=SHARED / "media" / "vtest.avi")
    p.add_argument("--fps", type=float, default=10.0, help="the video's frame rate (vtest.avi: 10)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, help="detections .npz: read if it exists, else written after detecting")
    p.add_argument("--track-activation-threshold", type=float)
    p.add_argument("--lost-track-buffer", type=int)
    p.add_argument("--minimum-matching-threshold", type=float)
    p.add_argument("--minimum-consecutive-frames", type=int)
    args = p.parse_args(argv)

    from frametok.models.tracking import Tracker

    if args.cache is not None and args.cache.exists():
        dets, detector_ms = load_cache(args.cache)
    else:
        dets, detector_ms, _ = detect(args.video, args.models, args.batch, args.threads)
        if args.cache is not None:
            save_cache(args.cache, dets, detector_ms)

    overrides = {
        k: getattr(args, k)
        for k in (
            "track_activation_threshold",
            "lost_track_buffer",
            "minimum_matching_threshold",
            "minimum_consecutive_frames",
        )
        if getattr(args, k) is not None
    }
    tracker = Tracker(frame_rate=args.fps, **overrides)
    t0 = time.perf_counter()
    tracked = [tracker.update(d) for d in dets]
    tracker_ms = 1000 * (time.perf_counter() - t0) / max(1, len(dets))

    frames_of: dict[int, list[int]] = defaultdict(list)
    classes_of: dict[int, Counter[int]] = defaultdict(Counter)
    first_box: dict[int, np.ndarray] = {}
    last_box: dict[int, np.ndarray] = {}
    untracked = 0
    for i, d in enumerate(tracked):
        assert d.track_id is not None
        untracked += int((d.track_id == -1).sum())
        for box, cls, tid in zip(d.xyxy, d.class_id, d.track_id, strict=True):
            if tid == -1:
                continue
            frames_of[int(tid)].append(i)
            classes_of[int(tid)][int(cls)] += 1
            first_box.setdefault(int(tid), box)
            last_box[int(tid)] = box
    person = [t for t in frames_of if classes_of[t].most_common(1)[0][0] == 0]
    frames = sorted(len(frames_of[t]) for t in person)
    runs = sorted(longest_run(frames_of[t]) for t in person)

    gap = int(tracker.lost_track_buffer * tracker.frame_rate / 30.0)
    suspected = 0
    for old in person:
        end = frames_of[old][-1]
        if end == len(dets) - 1:
            continue
        for new in person:
            start = frames_of[new][0]
            if end < start <= end + gap + 1 and iou(last_box[old], first_box[new]) >= 0.3:
                suspected += 1
                break

    n_dets = sum(len(d) for d in dets)
    print(
        json.dumps(
            {
                "video": args.video.name,
                "frames": len(dets),
                "tracker": {
                    "frame_rate": tracker.frame_rate,
                    "track_activation_threshold": tracker.track_activation_threshold,
                    "lost_track_buffer": tracker.lost_track_buffer,
                    "minimum_matching_threshold": tracker.minimum_matching_threshold,
                    "minimum_consecutive_frames": tracker.minimum_consecutive_frames,
                },
                "detections": n_dets,
                "untracked": untracked,
                "tracks": len(frames_of),
                "person_tracks": len(person),
                "person_track_frames": frames,
                "person_track_longest_runs": runs,
                "person_tracks_ge_20_consecutive": sum(r >= 20 for r in runs),
                "median_longest_run_of_tracks_ge_5": float(np.median([r for r in runs if r >= 5] or [0])),
                "suspected_fragmentations": suspected,
                "detector_ms_per_frame": round(detector_ms, 2),
                "tracker_ms_per_frame": round(tracker_ms, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
