"""The Ray side of ``frametok index --ray``: connecting, one actor per node (or GPU) holding the models, and
a driver thread per actor that hands it videos and passes its chunks of frame rows to the committer.

Ray is imported only here and in :mod:`.cluster`, and only by ``frametok index --ray``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, FrametokError
from ..streamer.worker.models import prepare_models
from .encode import soft_token_ref
from .engine import Chunk, FrameEngine, VideoJob
from .indexer import IndexOptions, index_config

__all__ = ["ActorPool", "NodeIndexer", "RayActor", "import_ray"]


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'frametok[cluster]' (ray)") from exc
    return ray


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


@dataclass
class RayActor:
    name: str
    handle: Any
    info: dict[str, Any]
    frames: int = 0
    alive: bool = True


class ActorPool:
    """The actors of a run and their driver threads; ``events`` gets ``(kind, job, payload, actor)``."""

    def __init__(self, options: IndexOptions, address: str, events: queue.Queue[tuple[Any, ...]],
                 jobs: queue.Queue[VideoJob | None], write: Callable[[str], None]) -> None:
        self.options, self.address, self._events, self._jobs, self.write = options, address, events, jobs, write
        self.ray: Any = None
        self.actors: list[RayActor] = []
        self.threads: list[threading.Thread] = []
        self.encoder_ref = ""

    def connect(self) -> None:
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

    def start(self) -> None:
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
                self.write(f"frametok index: Ray node {name} cannot index: {cause_of(exc)}")
                with contextlib.suppress(Exception):
                    ray.kill(handle)
                continue
            if described["models"] != want:
                self.write(f"frametok index: Ray node {name} has other models ({described['models']}, "
                                     f"this index uses {want}): left out")
                ray.kill(handle)
                continue
            actor = RayActor(name, handle, {**info, **described})
            self.actors.append(actor)
            thread = threading.Thread(target=self._drive, args=(actor,), name=f"frametok-ray-{name}", daemon=True)
            self.threads.append(thread)
        if not self.actors:
            raise ConfigError(f"--ray {self.address}: no Ray node could load the models (see above)")
        for thread in self.threads:
            thread.start()

    def _model_ids(self) -> dict[str, str]:
        config = index_config(self.options, "video.mp4", "video", 0, "/tmp")
        models = prepare_models(config, self.options.models_dirs)
        ids = {}
        for role, files in (("detector", models.detector), ("encoder", models.encoder)):
            if files is not None:
                ids[role] = files.manifest.model_id
        self.encoder_ref = soft_token_ref(config)
        return ids

    def shutdown(self) -> None:
        if self.ray is None:
            return
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor.handle)
        with contextlib.suppress(Exception):
            self.ray.shutdown()

    def _drive(self, actor: RayActor) -> None:
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
                self._events.put(("failed", job, cause_of(exc), actor))
            except Exception as exc:  # the actor or its node is gone
                with contextlib.suppress(Exception):
                    ray.kill(actor.handle)  # should it still be there, it sends nothing more
                self._events.put(("lost", job, cause_of(exc), actor))
                return


def cause_of(exc: BaseException) -> str:
    """The message of the error an actor raised (without Ray's traceback wrapper)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FrametokError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# --------------------------------------------------------------------------- a local cluster (tests, bench)
