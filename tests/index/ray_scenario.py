"""Ray scenarios for tests/index/test_ray_index.py, run INSIDE a network namespace holding only loopback
(the test starts ``unshare --net sh -c 'ip link set lo up; python tests/index/ray_scenario.py ...'``).

Each scenario starts a real local Ray cluster (``ray start`` head + workers on 127.0.0.1, one CPU each),
runs ``frametok index --ray`` against it, and stops the cluster by the pids it started (never
``ray stop``). What happened is written as JSON to ``--out``; the test checks the index folders.

    python tests/index/ray_scenario.py match --db DB --out result.json -- VIDEO... [index args]
    python tests/index/ray_scenario.py kill-node --db DB --out result.json -- VIDEO... [index args]
    python tests/index/ray_scenario.py kill-driver --db DB --out result.json -- VIDEO... [index args]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from frametok.index.local_cluster import LocalCluster  # noqa: E402


def frames_in(db: Path) -> dict[str, int]:
    """Frame rows per video id (0 while the table does not exist)."""
    from frametok.index.store import Store

    try:
        table = Store(db, create=False).read("frames", None, ["video_id"])
    except Exception:
        return {}
    out: dict[str, int] = {}
    for vid in table.column("video_id").to_pylist():
        out[vid] = out.get(vid, 0) + 1
    return out


def index_cmd(address: str, db: Path, rest: list[str]) -> list[str]:
    return [sys.executable, "-m", "frametok", "index", *rest, "--db", str(db), "--ray", address, "--no-progress"]


def run(cmd: list[str], timeout: float = 600) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-4000:],
            "seconds": time.monotonic() - t0}


def wait_for(db: Path, proc: subprocess.Popen[str], videos: int, each: int, timeout: float = 300) -> dict[str, int]:
    """Until ``videos`` videos have at least ``each`` frames stored (or the run ended)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        seen = frames_in(db)
        if len(seen) >= videos and min(seen.values()) >= each:
            break
        time.sleep(0.2)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["match", "kill-node", "kill-driver"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--at", type=int, default=8, help="kill once every video has this many frames stored")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    rest = argv[cut + 1 :]  # the videos and index arguments
    db = Path(args.db)
    result: dict[str, Any] = {"scenario": args.scenario}
    temp = tempfile.mkdtemp(prefix="ftray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    t0 = time.monotonic()
    cluster = None
    try:
        # the GCS declares a node dead after 3 missed 1 s health checks (default: 5 x 3 s)
        cluster = LocalCluster(args.nodes, 1, temp_dir=temp, system_config=json.dumps(
            {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}))
        result["cluster_up_s"] = time.monotonic() - t0
        result["node_pids"] = [cluster.pids(i) for i in range(args.nodes)]
        cmd = index_cmd(cluster.address, db, rest)
        if args.scenario == "match":
            result["runs"] = [run(cmd)]
        elif args.scenario == "kill-node":
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            seen = wait_for(db, proc, 2, args.at)
            result["running_when_killed"] = proc.poll() is None
            result["stored_when_killed"] = seen
            result["killed_pids"] = cluster.kill_node(args.nodes - 1)  # a worker node: raylet, workers, agents
            out, err = proc.communicate(timeout=600)
            result["runs"] = [{"rc": proc.returncode, "stdout": out, "stderr": err[-4000:]}]
            result["after_first_run"] = frames_in(db)
            result["runs"].append(run(cmd))  # rerun (on the node left)
        else:  # kill-driver
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            seen = wait_for(db, proc, 1, args.at)
            result["running_when_killed"] = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            result["stored_when_killed"] = frames_in(db)
            result["runs"] = [run(cmd), run(cmd)]  # resume, then: all unchanged
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        if cluster is not None:
            result["cluster_log"] = [cluster.log(i) for i in range(len(cluster.procs))]
    finally:
        if cluster is not None:
            cluster.stop()
            result["left_running"] = [p for i in range(len(cluster.procs)) for p in cluster.pids(i)]
        shutil.rmtree(temp, ignore_errors=True)
        result["seconds"] = time.monotonic() - t0
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
