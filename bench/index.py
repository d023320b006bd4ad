"""Indexing speed as a share of `frametok run` speed on the same video, and index size per hour.

Prints one JSON object. Both commands run as whole processes (model loading included on both sides)
over the same clip (default: the first 300 frames of vtest.avi, 768x576, 10 fps, re-encoded MPEG-4):
``frametok run`` publishing to nobody, and ``frametok index`` (a lossless subscriber writing every frame
into LanceDB, then per-track rows with crop embeddings). ``speed_share`` = run seconds / index seconds
(target >= 0.95). ``db_mb_per_hour`` extrapolates the index folder's size to an hour of this video at its
frame rate.

    python bench/index.py --models ../shared/models [--video ../shared/media/vtest.avi] [--frames 300]

``--ray``: ``frametok index --ray`` on a local Ray cluster of 1 node, then of 2 nodes (``ray start
--num-cpus 1`` each, so one model thread per node, and each node pinned to a core of its own with
``taskset``: the decoding thread of a lone node gets no second core for free), over the same
``--videos`` clips of ``--frames`` frames each; prints frames/s of each (``fps``: the whole command;
``indexing_fps``: after the cluster is ready and the models are loaded), ``scaling_ratio`` = 2-node /
1-node indexing frames/s (goal >= 1.7), and the peak memory (RSS) of each Ray node: its raylet, its
workers (the actor holding the models included) and the rest (GCS, agents); ``driver_cores``: the CPU the
``frametok index`` driver itself took (seconds / wall seconds; with as many cores as nodes, as on a 2-core
machine, those are taken from the nodes, which the 1-node run does not pay). Ray only works on loopback
inside a network namespace holding nothing else, so the bench re-runs itself under ``unshare --net``.

    python bench/index.py --ray [--videos 4 --frames 60 --models ../shared/models]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _in_netns() -> None:
    """Run this script again inside a new network namespace holding only loopback (Ray stays on it)."""
    import shlex

    if os.environ.get("FRAMETOK_BENCH_NETNS") == "1":
        return
    inner = shlex.join([sys.executable, *sys.argv])
    env = {**os.environ, "FRAMETOK_BENCH_NETNS": "1"}
    rc = subprocess.run(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {inner}"], env=env).returncode
    sys.exit(rc)


def ray_bench(args: argparse.Namespace) -> None:
    import re
    import threading

    sys.path.insert(0, str(ROOT))
    from frametok.index.local_cluster import LocalCluster

    frametok = [sys.executable, "-m", "frametok"]
    out: dict[str, object] = {"video": Path(args.video).name, "videos": args.videos, "frames_each": args.frames}
    with tempfile.TemporaryDirectory(prefix="ftb-", dir="/tmp") as tmp:
        first, _ = trim_video(Path(args.video), args.frames, Path(tmp) / "clip0.mp4")
        clips = [first]
        for i in range(1, args.videos):  # the same frames under another name: another video to the index
            clips.append(Path(tmp) / f"clip{i}.mp4")
            clips[-1].write_bytes(first.read_bytes())
        total = args.frames * args.videos
        out["frames"] = total
        for nodes in (1, 2):
            pin = [str(i) for i in range(nodes)] if (os.cpu_count() or 1) >= nodes else None  # a core each
            with LocalCluster(nodes, 1, temp_dir=str(Path(tmp) / f"ray{nodes}"), pin=pin) as cluster:
                peak = [{"raylet": 0, "workers": 0, "other": 0, "total": 0} for _ in range(nodes)]
                done = threading.Event()

                def sample(cluster: LocalCluster = cluster, peak: list[dict[str, int]] = peak,
                           done: threading.Event = done) -> None:
                    while not done.is_set():
                        for i in range(len(peak)):
                            rss = cluster.rss(i)
                            rss["total"] = sum(rss.values())
                            if rss["total"] > peak[i]["total"]:
                                peak[i] = rss
                        done.wait(0.5)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                db = Path(tmp) / f"db{nodes}"
                cmd = [*frametok, "index", *map(str, clips), "--db", str(db), "--models", args.models,
                       "--ray", cluster.address, "--no-progress"]
                t0 = time.monotonic()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall = time.monotonic() - t0
                # the driver's own CPU (decoding nothing: probing, Ray's client, LanceDB commits): cores it took
                driver_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                done.set()
                sampler.join()
                if result.returncode != 0 or f"{total} frames" not in result.stdout:
                    sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
                line = result.stdout.strip().splitlines()[-1]
                seconds = float(re.search(r"frames in ([0-9.]+) s", line).group(1))  # type: ignore[union-attr]
                ready = float(re.search(r"ready in ([0-9.]+) s", line).group(1))  # type: ignore[union-attr]
                out[f"nodes{nodes}"] = {
                    "wall_s": round(wall, 2), "ready_s": ready, "fps": round(total / wall, 3),
                    "indexing_fps": round(total / (seconds - ready), 3),
                    "driver_cpu_s": round(driver_cpu, 2), "driver_cores": round(driver_cpu / wall, 3),
                    "node_rss_mb": [{k: round(v / 2**20) for k, v in p.items()} for p in peak],
                }
        one, two = out["nodes1"], out["nodes2"]
        assert isinstance(one, dict) and isinstance(two, dict)
        out["scaling_ratio"] = round(two["indexing_fps"] / one["indexing_fps"], 3)
        out["scaling_ratio_wall"] = round(two["fps"] / one["fps"], 3)
        worker_node = two["node_rss_mb"][1]
        out["ray_node_rss_mb"] = {"worker_node": worker_node, "head_node": two["node_rss_mb"][0]}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=str(SHARED / "models"))
    parser.add_argument("--video", default=str(SHARED / "media" / "vtest.avi"))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1, help="alternate run/index this many times (best of)")
    parser.add_argument("--ray", action="store_true", help="index --ray on 1 vs 2 local Ray nodes (see above)")
    parser.add_argument("--videos", type=int, default=4, help="--ray: how many clips")
    args = parser.parse_args()
    if args.ray:
        if args.frames == 300:
            args.frames = 60  # --ray: each clip
        _in_netns()
        ray_bench(args)
        return
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
