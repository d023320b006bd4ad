"""Indexing speed as a share of `frametok run` speed on the same video, and index size per hour.

Prints one JSON object. Both commands run as whole processes (model loading included on both sides)
over the same clip (default: the first 300 frames of vtest.avi, 768x576, 10 fps, re-encoded MPEG-4):
``frametok run`` publishing to nobody, and ``frametok index`` (a lossless subscriber writing every frame
into LanceDB, then per-track rows with crop embeddings). ``speed_share`` = run seconds / index seconds
(target >= 0.95). ``db_mb_per_hour`` extrapolates the index folder's size to an hour of this video at its
frame rate.

    python bench/index.py --models ../shared/models [--video ../shared/media/vtest.avi] [--frames 300]
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))


def trim_video(src: Path, frames: int, out: Path) -> tuple[Path, float]:
    """The first ``frames`` frames of ``src`` re-encoded (MPEG-4, high quality); returns its path and fps."""
    import av

    with av.open(str(src)) as inp, av.open(str(out), "w") as container:
        fps = float(inp.streams.video[0].average_rate or 10)
        stream = None
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= frames:
                break
            if stream is None:
                stream = container.add_stream("mpeg4", rate=round(fps))
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
                stream.options = {"qscale": "3"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"),
                                                                   format="rgb24")))
        assert stream is not None
        container.mux(stream.encode(None))
    return out, fps


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - t0
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=str(SHARED / "models"))
    parser.add_argument("--video", default=str(SHARED / "media" / "vtest.avi"))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1, help="alternate run/index this many times (best of)")
    args = parser.parse_args()
    frametok = [sys.executable, "-m", "frametok"]
    with tempfile.TemporaryDirectory(prefix="frametok-bench-index-") as tmp:
        clip, fps = trim_video(Path(args.video), args.frames, Path(tmp) / "clip.mp4")
        run_s, index_s, size = [], [], 0
        for i in range(args.repeats):
            run_s.append(timed([*frametok, "run", "--source", f"clip={clip}", "--models", args.models,
                                "--publish", f"ipc://{tmp}/pub", "--no-progress"]))
            db = Path(tmp) / f"db{i}"
            index_s.append(timed([*frametok, "index", str(clip), "--db", str(db), "--models", args.models,
                                  "--no-progress"]))
            size = sum(f.stat().st_size for f in db.rglob("*") if f.is_file())
        best_run, best_index = min(run_s), min(index_s)
        seconds_of_video = args.frames / fps
        print(json.dumps({
            "video": Path(args.video).name, "frames": args.frames, "fps": fps,
            "run_s": [round(s, 2) for s in run_s], "index_s": [round(s, 2) for s in index_s],
            "run_fps": round(args.frames / best_run, 3), "index_fps": round(args.frames / best_index, 3),
            "speed_share": round(best_run / best_index, 3),
            "db_bytes": size, "db_bytes_per_frame": round(size / args.frames),
            "db_mb_per_hour": round(size / seconds_of_video * 3600 / 1e6, 1),
        }))


if __name__ == "__main__":
    main()
