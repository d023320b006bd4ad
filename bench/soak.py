"""Soak: a live multi-source pipeline for a long time; does anything grow?

Prints one JSON object. ``--sources`` loopback network cameras (MPEG-TS over TCP served by PyAV in
subprocesses, paced at ``--fps``: tests/streamer/netserve.py) feed one ``frametok run`` (live policy,
reconnecting) with the real models and a health endpoint, for ``--minutes`` (default 10); a live
subscriber counts every packet. After ``--warmup`` seconds (default: a fifth of the run, at most 60 s) and
at the end it records, for the supervisor and every child process: resident memory (RSS), open file
descriptors and threads; and the run's shared-memory segments in /dev/shm. Reported:

* ``processes``: per process (by name) RSS MiB at warm-up, its peak over the samples and at the end
  (``rss_mib``: [start, peak, end], ``peak_at_s``), the kernel's high-water mark since the process started
  (``hwm_mib``, VmHWM: start-up included), growth %, descriptors at both;
* ``samples``: seconds, total RSS MiB of the run and RSS MiB by process name (the last one of a name) every
  ``--sample-s`` seconds after warm-up (the trend), and ``anon``: the anonymous (heap) part of each
  (RssAnon; the rest is file-backed and shared memory);
* ``shm_segments``, ``packets``, ``dropped`` (by the producers: newest frame wins), ``gaps`` (lost by the
  subscriber), ``status`` (per stream, the states seen), and ``health`` (/streams at the end);
* ``target``: RSS growth under 5 % per process after warm-up; descriptor and segment counts flat.

    python bench/soak.py --models ../shared/models [--minutes 10] [--sources 3] [--fps 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_mib(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS since the process started) and RssAnon of ``pid``, in MiB (Linux)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon"):
                out[{"VmHWM": "hwm_mib", "RssAnon": "anon_mib"}[key]] = int(value.split()[0]) / 1024
    return out


def _snapshot(pid: int) -> dict[str, Any]:
    """RSS, descriptors and threads of the supervisor and its children; the run's /dev/shm segments."""
    import psutil

    root = psutil.Process(pid)
    procs: dict[str, dict[str, float]] = {}
    segments: set[str] = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = "supervisor" if proc.pid == pid else proc.name()
            procs[f"{name}:{proc.pid}"] = {"rss_mib": proc.memory_info().rss / 2**20, "fds": proc.num_fds(),
                                           "threads": proc.num_threads(), **_status_mib(proc.pid)}
            for m in proc.memory_maps(grouped=True):
                if m.path.startswith("/dev/shm/frametok-"):
                    segments.add(m.path)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    prefixes = {p.rsplit("-", 2)[0] for p in segments}  # /dev/shm/frametok-<run id>
    in_shm = sorted(f for f in (os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else [])
                    if any(f"/dev/shm/{f}".startswith(pre) for pre in prefixes))
    return {"processes": procs, "shm_mapped": len(segments), "shm_files": len(in_shm)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from frametok import StatusMessage, Subscriber, TokenPacket
    from tests.streamer.netserve import NetServer

    w, h = (int(v) for v in args.size.split("x"))
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    health_port = _free_port()
    duration_s = args.minutes * 60.0
    warmup_s = args.warmup if args.warmup is not None else min(60.0, duration_s / 5)
    servers = [NetServer(fps=args.fps, size_wh=(w, h)).start() for _ in range(args.sources)]
    packets: Counter[str] = Counter()
    dropped: dict[str, int] = {}
    states: dict[str, list[str]] = {}
    samples: list[dict[str, Any]] = []  # s, total RSS MiB, RSS (and anonymous RSS) MiB by process name
    peaks: dict[str, tuple[float, float]] = {}  # process key -> (peak RSS MiB over the samples, at s)
    try:
        cmd = [sys.executable, "-m", "frametok", "run", "--publish", endpoint, "--wait-subscribers", "1",
               "--no-progress", "--models", str(args.models), "--detector", args.detector, "--encoder",
               args.encoder, "--health-port", str(health_port), "--hwm", "64"]
        for i, server in enumerate(servers):
            cmd += ["--source", f"cam{i}={server.uri}"]
        with Subscriber(endpoint, timeout_s=30, rcvhwm=1000) as sub:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            try:
                t0 = time.monotonic()
                first: dict[str, Any] | None = None
                next_sample = t0 + warmup_s
                while time.monotonic() - t0 < duration_s:
                    msg = sub.recv(1.0)
                    now = time.monotonic()
                    if isinstance(msg, TokenPacket):
                        packets[msg.stream_id] += 1
                        dropped[msg.stream_id] = msg.dropped
                    elif isinstance(msg, StatusMessage):
                        states.setdefault(msg.stream_id, []).append(msg.state)
                    elif msg is None and proc.poll() is not None:
                        raise SystemExit(f"frametok run exited early ({proc.returncode}): {proc.stderr.read()}")
                    if now >= next_sample:
                        snap = _snapshot(proc.pid)
                        if first is None:
                            first = snap
                        at = round(now - t0, 1)
                        samples.append({"s": at,
                                        "total": round(sum(p["rss_mib"] for p in snap["processes"].values()), 1),
                                        "rss": {k.split(":")[0]: round(v["rss_mib"], 1)
                                                for k, v in snap["processes"].items()},
                                        "anon": {k.split(":")[0]: round(v.get("anon_mib", 0.0), 1)
                                                 for k, v in snap["processes"].items()}})
                        for k, v in snap["processes"].items():
                            if v["rss_mib"] > peaks.get(k, (0.0, 0.0))[0]:
                                peaks[k] = (v["rss_mib"], at)
                        next_sample += args.sample_s
                last = _snapshot(proc.pid)
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/streams", timeout=5) as resp:
                    health = json.loads(resp.read())
                gaps = {sid: g.missing for sid, g in sub.gaps.items() if g.missing}
            finally:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.kill()
    if first is None:
        raise SystemExit("the run ended before the warm-up did")
    rows = {}
    growth = []
    for key, end in last["processes"].items():
        start = first["processes"].get(key)
        if start is None:
            continue
        pct = 100.0 * (end["rss_mib"] - start["rss_mib"]) / start["rss_mib"]
        growth.append(pct)
        peak, peak_at = peaks.get(key, (end["rss_mib"], 0.0))
        peak = max(peak, end["rss_mib"])
        rows[key] = {"rss_mib": [round(start["rss_mib"], 1), round(peak, 1), round(end["rss_mib"], 1)],
                     "peak_at_s": peak_at, "hwm_mib": round(end.get("hwm_mib", 0.0), 1), "growth_pct": round(pct, 2),
                     "fds": [start["fds"], end["fds"]], "threads": [start["threads"], end["threads"]]}
    fds_flat = all(r["fds"][0] == r["fds"][1] for r in rows.values())
    shm_flat = first["shm_files"] == last["shm_files"] and first["shm_mapped"] == last["shm_mapped"]
    return {
        "minutes": args.minutes, "warmup_s": warmup_s, "sources": args.sources, "fps": args.fps, "size": args.size,
        "models": {"detector": args.detector, "encoder": args.encoder},
        "processes": rows,
        "samples": samples,
        "shm_segments": {"files": [first["shm_files"], last["shm_files"]],
                         "mapped": [first["shm_mapped"], last["shm_mapped"]]},
        "packets": dict(packets), "dropped": dropped, "gaps": gaps,
        "status": {sid: sorted(set(s)) for sid, s in states.items()},
        "health": health,
        "exit_code": proc.returncode, "summary": out.strip().splitlines()[-1] if out.strip() else err[-300:],
        "target": {"rss_growth_below_5pct": bool(growth) and max(growth) < 5.0, "max_growth_pct": round(max(growth), 2),
                   "fds_flat": fds_flat, "shm_flat": shm_flat},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(SHARED / "models"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, help="seconds before the first measurement (default: run/5, <= 60)")
    parser.add_argument("--sample-s", type=float, default=15.0, help="seconds between RSS samples")
    parser.add_argument("--sources", type=int, default=3, help="loopback network cameras")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--detector", default="yolov8n")
    parser.add_argument("--encoder", default="dinov2_vits14")
    args = parser.parse_args()
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
