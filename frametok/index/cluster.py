"""``frametok index --ray ADDRESS|auto|local``: index an archive on a Ray cluster, into the same tables.

Shape. The driver (the ``frametok index`` process) probes and fingerprints the videos and plans each one
from the index exactly as the single-machine index does (unchanged: skipped; changed: forgotten;
interrupted: go on after its last stored frame, track ids continued). It starts one Ray actor per node
(one per GPU on a node with GPUs, each given one GPU; on a CPU node one actor holding the node's CPUs,
its models' threads = those CPUs) pinned to its node; each actor loads the models once
(:class:`~frametok.index.engine.FrameEngine`: the worker's own pre-processing, models, NMS, tracker and
soft tokens, in one process) and indexes one video after another, streaming chunks of finished frame
rows back (a Ray streaming generator). A driver thread per actor hands it the next video and collects
its chunks; when a video's frames are all in, the same actor embeds its tracks' best crops.

One committer: the driver. Every write to LanceDB (frames, videos, tracks) is made by the driver's
main thread, a video's frames appended in order every ``--flush-every`` frames (one commit each), so
the index holds, for each video, a prefix of its frames at every moment, as on one machine. We chose
this over Lance's distributed fragment write (workers write fragment files, the driver commits them)
because (1) the frame rows are small (a few KB a frame; a node makes tens of frames/s): the models,
not the commit, are the bottleneck, so one committer costs no speed (``bench/index.py --ray``);
(2) exactly-once and resume then need no protocol: a commit is atomic and in frame order, the driver
drops a row whose frame is already stored, and a rerun goes on after the last stored frame, whereas
fragments written by a node that dies before the commit are orphan files, and concurrent commits from
several writers conflict and retry; (3) the index folder need not be on storage every node can write
(nor does it need pylance's fragment API, which the ``index`` extra does not install): only the driver
opens it. The videos and models must be readable on every node at the same path (shared storage), and
the models must be the same (their ids are compared; a node with other weights is left out).

Faults. A node (or actor) that dies mid-video loses only frames not yet sent: the driver commits what
it received, plans that video again from the index and gives it to another actor (twice at most); with
no actor left the video is reported and a rerun goes on. A killed driver leaves committed prefixes (its
actors die with it): rerun. A video that cannot be decoded is reported and the others go on.

Ray is imported only here, and only by ``frametok index --ray`` (the ``cluster`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FrametokError
from .engine import Chunk, FrameEngine, VideoJob, prepare_models
from .indexer import Indexer, IndexOptions, IndexReport, VideoPlan, index_config
from .store import frames_schema
from .tracks import track_rows, write_tracks
from .writer import token_dims

__all__ = ["LocalCluster", "NodeIndexer", "RayIndexer", "import_ray"]

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 3  # a video is given to an actor at most this often (a lost actor gives it back)
_FLUSH_S = 10.0  # commit a video's frames at least this often (also every --flush-every frames)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'frametok[cluster]' (ray)") from exc
    return ray


# --------------------------------------------------------------------------- the actor


class NodeIndexer:
    """The Ray actor of one node (or GPU): the models, loaded once, and the videos given to it."""

    def __init__(self, options: IndexOptions, threads: int) -> None:
        logging.basicConfig(level=options.log_level)
        config = index_config(options, "video.mp4", "video", 0, "/tmp", threads=threads)
        self.engine = FrameEngine(config, prepare_models(config, options.models_dirs))
        self.node = socket.gethostname()

    def describe(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "ppid": os.getppid(), "host": self.node, "models": self.engine.model_ids,
                "threads": int(self.engine.config.worker.threads)}

    def index(self, job: VideoJob, chunk_frames: int, chunk_s: float) -> Any:
        yield from self.engine.index(job, chunk_frames, chunk_s)

    def embed(self, path: str, boxes: list[tuple[int, list[float]]]) -> list[Any]:
        return self.engine.embeddings(path, boxes)


# --------------------------------------------------------------------------- the driver


@dataclass
class _Video:
    """The driver's state of one video: its plan, the rows received and not yet committed."""

    plan: VideoPlan
    last_frame: int  # the last frame in the index
    attempts: int = 0
    written: int = 0
    buffer: list[Any] = field(default_factory=list)
    buffered: int = 0
    last_flush: float = field(default_factory=time.monotonic)
    dim: int = 0
    content: int = 0
    tracks: list[dict[str, Any]] = field(default_factory=list)
    started: bool = False
    done: bool = False

    @property
    def key(self) -> str:
        return str(self.plan.base["video_id"])


@dataclass
class _Actor:
    name: str
    handle: Any
    info: dict[str, Any]
    frames: int = 0
    alive: bool = True


class RayIndexer(Indexer):
    """:class:`~frametok.index.indexer.Indexer` with the work on a Ray cluster (see the module's doc).

    ``address``: a Ray address (``host:port``, ``ray://...``), ``auto`` (the cluster this machine is in)
    or ``local`` (start Ray here).
    """

    def __init__(self, db: str | Path, options: IndexOptions | None = None, address: str = "auto") -> None:
        super().__init__(db, options)
        self.address = address
        self.ray: Any = None
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._jobs: queue.Queue[VideoJob | None] = queue.Queue()
        self._videos: dict[str, _Video] = {}
        self._actors: list[_Actor] = []
        self._threads: list[threading.Thread] = []
        self._open = 0  # videos not finished yet
        self._encoder_ref = ""
        self.ready_s = 0.0

    # ------------------------------------------------------------------ run

    def run(self, inputs: Any) -> IndexReport:
        t0 = time.monotonic()
        probes = self.probe_inputs(inputs)
        plans = [p for p in (self.plan(path, probe) for path, probe in probes.items()) if p is not None]
        todo = sum(max(0, (p.expected or 0) - p.done) for p in plans if p.pending) or None
        from .indexer import _Progress

        self._progress = _Progress(self.options.progress, todo)
        try:
            if plans:
                self._connect()
                self._start_actors()
                self.ready_s = time.monotonic() - t0
                for plan in plans:
                    video = _Video(plan, plan.last_frame)
                    self._videos[video.key] = video
                    self._dispatch(video)
                self._loop()
        except KeyboardInterrupt:
            self.report.stopped = True
        finally:
            for video in self._videos.values():
                with contextlib.suppress(Exception):
                    self._commit(video)
            for _ in self._threads:
                self._jobs.put(None)
            self._progress.close()
            self._shutdown()
            self.store.compact()
        alive = [a for a in self._actors if a.alive]
        if self._actors:
            lost = len(self._actors) - len(alive)
            nodes = len({a.info.get("node_id") for a in self._actors})
            self.report.cluster = (f"Ray: {nodes} node(s), {len(self._actors)} actor(s)"
                                   + (f" ({lost} lost)" if lost else "") + f", ready in {self.ready_s:.1f} s")
        self.report.seconds = time.monotonic() - t0
        return self.report

    # ------------------------------------------------------------------ Ray

    def _connect(self) -> None:
        ray = self.ray = import_ray()
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                                  "configure_logging": True}
        if self.address == "local":
            ray.init(include_dashboard=False, **kwargs)
            return
        host = self.address.rsplit(":", 1)[0].split("://")[-1]
        if host in ("127.0.0.1", "localhost"):
            kwargs["_node_ip_address"] = "127.0.0.1"  # a loopback cluster: stay on loopback
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--ray {self.address}: cannot connect to a Ray cluster: {exc}") from exc

    def _start_actors(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        remote = ray.remote(NodeIndexer)
        pending: list[tuple[str, Any, dict[str, Any]]] = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            cpus, gpus = float(res.get("CPU", 0)), int(res.get("GPU", 0))
            node_id = node["NodeID"]
            where = NodeAffinitySchedulingStrategy(node_id, soft=False)
            ip = f"{node.get('NodeManagerAddress', '?')}/{node_id[:8]}"
            if gpus >= 1:
                share = cpus // gpus
                for g in range(gpus):
                    handle = remote.options(num_gpus=1, num_cpus=share, scheduling_strategy=where,
                                            max_concurrency=1).remote(self.options, max(1, int(share)))
                    pending.append((f"{ip}/gpu{g}", handle, {"node_id": node_id, "gpu": g}))
            elif cpus >= 1:
                handle = remote.options(num_cpus=cpus, scheduling_strategy=where, max_concurrency=1
                                        ).remote(self.options, max(1, int(cpus)))
                pending.append((ip, handle, {"node_id": node_id}))
        if not pending:
            raise ConfigError(f"--ray {self.address}: the cluster has no node with a CPU or GPU to index on")
        want = self._model_ids()
        for name, handle, info in pending:
            try:
                described = self.ray.get(handle.describe.remote(), timeout=600)
            except Exception as exc:
                self._progress.write(f"frametok index: Ray node {name} cannot index: {_cause(exc)}")
                with contextlib.suppress(Exception):
                    ray.kill(handle)
                continue
            if described["models"] != want:
                self._progress.write(f"frametok index: Ray node {name} has other models ({described['models']}, "
                                     f"this index uses {want}): left out")
                ray.kill(handle)
                continue
            actor = _Actor(name, handle, {**info, **described})
            self._actors.append(actor)
            thread = threading.Thread(target=self._drive, args=(actor,), name=f"frametok-ray-{name}", daemon=True)
            self._threads.append(thread)
        if not self._actors:
            raise ConfigError(f"--ray {self.address}: no Ray node could load the models (see above)")
        for thread in self._threads:
            thread.start()

    def _model_ids(self) -> dict[str, str]:
        config = index_config(self.options, "video.mp4", "video", 0, "/tmp")
        models = prepare_models(config, self.options.models_dirs)
        ids = {}
        for role, files in (("detector", models.detector), ("encoder", models.encoder)):
            if files is not None:
                ids[role] = files.manifest.model_id
        self._encoder_ref = config.encoder.model if config.encoder is not None else ""
        return ids

    def _shutdown(self) -> None:
        if self.ray is None:
            return
        for actor in self._actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor.handle)
        with contextlib.suppress(Exception):
            self.ray.shutdown()

    # ------------------------------------------------------------------ the actors' threads

    def _drive(self, actor: _Actor) -> None:
        """One actor's thread: give it videos, pass its chunks to the main thread, until told to stop."""
        ray = self.ray
        from ray.exceptions import RayTaskError

        chunk_frames = max(1, min(32, self.options.batch_rows))
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                ok = True
                if not job.tracks_only:
                    gen = actor.handle.index.options(num_returns="streaming").remote(job, chunk_frames, 1.0)
                    for ref in gen:
                        chunk: Chunk = ray.get(ref)
                        self._events.put(("chunk", job, chunk, actor))
                        if chunk.kind == "end":
                            ok = chunk.ok
                if not ok:
                    continue
                boxes: Future[list[tuple[int, list[float]]] | None] = Future()
                self._events.put(("frames_done", job, boxes, actor))
                wanted = boxes.result()
                embeddings = ray.get(actor.handle.embed.remote(job.path, wanted)) if wanted else None
                self._events.put(("tracks", job, embeddings, actor))
            except RayTaskError as exc:  # the actor is alive; this video made it fail
                self._events.put(("failed", job, _cause(exc), actor))
            except Exception as exc:  # the actor or its node is gone
                with contextlib.suppress(Exception):
                    ray.kill(actor.handle)  # should it still be there, it sends nothing more
                self._events.put(("lost", job, _cause(exc), actor))
                return

    # ------------------------------------------------------------------ the main thread: the one committer

    def _dispatch(self, video: _Video) -> None:
        plan = video.plan
        video.attempts += 1
        base = plan.base
        self._open += 1
        self._jobs.put(VideoJob(str(plan.path), base["video_id"], base["stream"], base["fps"], plan.start,
                                self.options.every, plan.track_offset, tracks_only=not plan.pending))

    def _loop(self) -> None:
        while self._open > 0:
            if not any(a.alive for a in self._actors):
                for video in self._videos.values():
                    if not video.done:
                        self._fail(video, "no Ray node left to index it (run again to resume)")
                return
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                event = None
            if event is not None:
                self._handle(*event)
            now = time.monotonic()
            for video in self._videos.values():
                if video.buffer and now - video.last_flush >= _FLUSH_S:
                    self._commit(video)

    def _handle(self, kind: str, job: VideoJob, payload: Any, actor: _Actor) -> None:
        video = self._videos[job.video_id]
        if kind == "lost":
            actor.alive = False
        if video.done:
            return
        if kind == "chunk":
            self._chunk(video, payload, actor)
        elif kind == "frames_done":
            self._frames_done(video, payload)
        elif kind == "tracks":
            self._tracks(video, payload)
        elif kind == "failed":
            self._commit(video)
            self._fail(video, str(payload))
        elif kind == "lost":
            self._commit(video)
            self._progress.write(f"frametok index: Ray actor {actor.name} lost ({payload}); "
                                 f"{video.plan.path} goes on elsewhere")
            self._open -= 1
            self._retry(video)

    def _retry(self, video: _Video) -> None:
        if video.attempts >= _MAX_ATTEMPTS:
            self._fail(video, f"given to {video.attempts} Ray actors that were lost (run again to resume)",
                       counted=False)
            return
        from ..streamer.source.decode import probe_source

        plan = self.plan(video.plan.path, probe_source(str(video.plan.path)))
        if plan is None:  # cannot happen: complete is set here only
            self._done(video, counted=False)
            return
        video.plan, video.last_frame = plan, plan.last_frame
        self._dispatch(video)

    def _chunk(self, video: _Video, chunk: Chunk, actor: _Actor) -> None:
        import json

        base, path = video.plan.base, video.plan.path
        for text in chunk.damage:
            self._progress.write(f"frametok index: {text}")
        if chunk.kind == "info":
            base["class_names"] = json.dumps(chunk.class_names)
            base["models"] = json.dumps(chunk.models)
            base["encoder"] = self._encoder_ref
            video.dim, video.content = token_dims(chunk.models)
            self.store.ensure("frames", frames_schema(video.dim, video.content))
            if not video.started:
                self.store.put_video({**base, "state": "indexing", "updated_ns": time.time_ns()})
                video.started = True
        elif chunk.kind == "rows" and chunk.table is not None:
            import pyarrow.compute as pc

            table = chunk.table
            if chunk.frames and table.column("frame")[0].as_py() <= video.last_frame:
                table = table.filter(pc.greater(table.column("frame"), video.last_frame))  # stored already
            if table.num_rows:
                video.buffer.append(table)
                video.buffered += table.num_rows
                video.last_frame = int(table.column("frame")[-1].as_py())
                actor.frames += table.num_rows
                self._progress.update(table.num_rows)
                if video.buffered >= self.options.batch_rows:
                    self._commit(video)
        elif chunk.kind == "end":
            self._commit(video)
            self.report.indexed[str(path)] = video.written
            if not chunk.ok:
                self._fail(video, f"{chunk.detail} (run again to resume)")

    def _commit(self, video: _Video) -> None:
        """Append the rows received for ``video`` (one commit), in frame order."""
        video.last_flush = time.monotonic()
        if not video.buffer:
            return
        import pyarrow as pa

        table = pa.concat_tables(video.buffer) if len(video.buffer) > 1 else video.buffer[0]
        self.store.ensure("frames", table.schema).add(table)
        video.written += table.num_rows
        video.plan.base["frames"] = int(video.plan.base["frames"]) + table.num_rows
        video.buffer, video.buffered = [], 0
        self.report.indexed[str(video.plan.path)] = video.written

    def _frames_done(self, video: _Video, boxes: Future[Any]) -> None:
        """Every frame of the video is in: its track rows; the actor embeds their best crops."""
        import json

        self._commit(video)
        base = video.plan.base
        self.store.put_video({**base, "state": "frames", "updated_ns": time.time_ns()})
        video.dim = token_dims(json.loads(base["models"]))[0]
        video.tracks = track_rows(self.store, base, json.loads(base["class_names"]))
        wanted = [(int(r["best_frame"]), [float(v) for v in r["best_xyxy"]]) for r in video.tracks]
        boxes.set_result(wanted if video.dim and base["encoder"] and wanted else None)

    def _tracks(self, video: _Video, embeddings: list[Any] | None) -> None:
        import numpy as np

        base = video.plan.base
        dim = video.dim
        vectors = None
        if dim and embeddings is not None:
            vectors = [np.zeros(dim, np.float32) if e is None else e for e in embeddings]
        write_tracks(self.store, base, video.tracks, dim, vectors)
        self.store.put_video({**base, "state": "complete", "updated_ns": time.time_ns()})
        self._done(video)

    def _fail(self, video: _Video, why: str, counted: bool = True) -> None:
        self.report.failed[str(video.plan.path)] = why
        self._progress.write(f"frametok index: {video.plan.path}: {why}")
        self._done(video, counted)

    def _done(self, video: _Video, counted: bool = True) -> None:
        video.done = True
        if counted:
            self._open -= 1


def _cause(exc: BaseException) -> str:
    """The message of the error an actor raised (without Ray's traceback wrapper)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FrametokError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# --------------------------------------------------------------------------- a local cluster (tests, bench)


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
