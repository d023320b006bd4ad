"""A local Ray cluster of several nodes on this machine, for tests and benchmarks: each node a ``ray start
--block`` in its own session, stopped by killing the pids it started (never ``ray stop``, which kills every
Ray process on the machine). Run it inside a loopback-only network namespace (``unshare --net``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class LocalCluster:
    """A Ray cluster of ``nodes`` nodes on this machine, on 127.0.0.1 (run it in a network namespace that
    holds only loopback: ``unshare --net``), each node a ``ray start --block`` in a session of its own.
    :meth:`kill_node` SIGKILLs every process of one node (its raylet, workers, agents); :meth:`stop`
    every process of every node: only what this object started, never ``ray stop``. ``pin``: a CPU list
    per node (``taskset -c``), so that a node of ``num_cpus`` 1 really has one core."""

    def __init__(self, nodes: int = 2, num_cpus: int = 1, port: int = 6379, temp_dir: str | None = None,
                 object_store_bytes: int = 100_000_000, system_config: str | None = None,
                 pin: list[str] | None = None) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        self.temp_dir = temp_dir
        self.pin = pin
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        common = ["--node-ip-address=127.0.0.1", "--num-cpus", str(num_cpus), "--block", "--disable-usage-stats",
                  "--object-store-memory", str(object_store_bytes)]
        try:
            head = [ray_bin, "start", "--head", "--port", str(port), "--include-dashboard=false", *common]
            if temp_dir:
                head += ["--temp-dir", temp_dir]
            if system_config:
                head += ["--system-config", system_config]
            self._spawn(head, env)
            self._wait(1)
            for _ in range(nodes - 1):
                self._spawn([ray_bin, "start", "--address", self.address, *common], env)
            self._wait(nodes)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> None:
        import tempfile

        if self.pin:
            cmd = ["taskset", "-c", self.pin[len(self.procs) % len(self.pin)], *cmd]
        log_file = tempfile.TemporaryFile()  # noqa: SIM115 (open while the node runs)
        self.logs.append(log_file)
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait(self, nodes: int, timeout_s: float = 120.0) -> None:
        """Until ``nodes`` nodes are alive (asked from a short-lived Ray driver in a subprocess)."""
        code = ("import ray,sys; ray.init(address=sys.argv[1], _node_ip_address='127.0.0.1', "
                "logging_level='ERROR', log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start (node {i}) exited with {proc.returncode}: {self.log(i)}")
            out = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True,
                                 timeout=60)
            lines = out.stdout.strip().splitlines()
            if out.returncode == 0 and lines and lines[-1].isdigit() and int(lines[-1]) >= nodes:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the local Ray cluster has not {nodes} node(s) after {timeout_s:.0f} s")

    def log(self, i: int) -> str:
        f = self.logs[i]
        f.seek(0)
        return str(f.read().decode(errors="replace")[-2000:])

    def pids(self, i: int) -> list[int]:
        """Every process of node ``i``: its session (``ray start`` and all it started)."""
        import psutil

        sid = self.procs[i].pid
        out = []
        for proc in psutil.process_iter(["pid", "status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == sid:
                    out.append(proc.pid)
        return out

    def rss(self, i: int) -> dict[str, int]:
        """Resident memory of node ``i``'s processes, by kind: raylet, workers (Ray workers, actors
        included), other (GCS, agents, monitors, ``ray start``)."""
        import psutil

        out = {"raylet": 0, "workers": 0, "other": 0}
        for pid in self.pids(i):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                title, cmd = proc.name(), " ".join(proc.cmdline())
                worker = "default_worker.py" in cmd or (title.startswith("ray::") and not title.endswith("Agent"))
                kind = "raylet" if title == "raylet" else "workers" if worker else "other"
                out[kind] += int(proc.memory_info().rss)
        return out

    def kill_node(self, i: int) -> list[int]:
        import signal

        killed: list[int] = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:  # again until none is left: a raylet may start a worker meanwhile
            pids = self.pids(i)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            killed += [p for p in pids if p not in killed]
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            self.procs[i].wait(10)
        return killed

    def stop(self) -> None:
        for i in reversed(range(len(self.procs))):
            if self.procs[i].poll() is None or self.pids(i):
                self.kill_node(i)
        for f in self.logs:
            with contextlib.suppress(Exception):
                f.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
