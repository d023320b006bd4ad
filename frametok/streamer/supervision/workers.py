"""The run's worker processes: which streams each serves, starting them, their readiness, and their
control channels.

Streams are assigned by stream id: the ids sorted, then dealt out in turn (stream ``i`` of the sorted ids
to worker ``i mod count``), so the assignment is stable for a given set of streams and as even as it can
be. A stream's state (compression reference, tracker, ring) lives in exactly one worker. Worker ``i``
reads its frames on its own endpoint, runs on ``devices[i]`` when devices are given, and on CPU gets an
equal share of ``threads``. Each worker has its own epoch (bumped when a restarted one is ready), so only
its own producers announce their frames again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import zmq

from ...config import Config
from ...errors import ConfigError, ModelError, PipelineError
from ..ipc.notices import EventNotice, RunContext, WorkerResume
from ..worker.models import Models
from ..worker.process import worker_main

__all__ = ["WorkerSet", "assign_streams", "worker_name"]

_STARTUP_TIMEOUT_S = 120.0


def assign_streams(stream_ids: list[str], count: int) -> dict[str, int]:
    """stream id -> worker index: the sorted ids dealt out in turn."""
    return {sid: i % count for i, sid in enumerate(sorted(stream_ids))}


def worker_name(index: int, count: int) -> str:
    """How events, restarts and health name a worker: ``worker`` alone, else ``worker-<index>``."""
    return "worker" if count == 1 else f"worker-{index}"


class WorkerSet:
    def __init__(self, config: Config, models: Models, run: RunContext, spawn: Any, zctx: Any) -> None:
        self.config, self.models, self.run, self.zctx = config, models, run, zctx
        wc = config.worker
        self.count = max(1, min(wc.count, len(config.sources)))  # a worker with no stream would idle
        self.of_stream = assign_streams([s.id for s in config.sources], self.count)
        self.names = [worker_name(i, self.count) for i in range(self.count)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.epochs = [spawn.Value("i", 0) for _ in range(self.count)]
        self.procs: dict[int, BaseProcess] = {}
        self.done: set[int] = set()
        self._ctl: dict[int, Any] = {}
        threads = wc.model_copy(update={"count": self.count}).threads_per_worker()
        worker_cfg = wc.model_copy(update={"threads": threads, "count": 1, "devices": None})
        self.configs = []
        for i in range(self.count):
            sources = tuple(s for s in config.sources if self.of_stream[s.id] == i)
            device = wc.devices[i] if wc.devices is not None else None
            self.configs.append((config.model_copy(update={"sources": sources, "worker": worker_cfg}), device))

    def streams_of(self, index: int) -> list[str]:
        return [sid for sid, w in self.of_stream.items() if w == index]

    def run_for(self, index: int) -> RunContext:
        """The run context worker ``index`` and its producers see: its own frames endpoint."""
        return dataclasses.replace(self.run, frames_endpoint=f"{self.run.frames_endpoint}-{index}",
                                   workers=self.count)

    def start(self, index: int, spawn_process: Callable[..., BaseProcess], log_level: int,
              stop: Any, resume: WorkerResume | None = None) -> BaseProcess:
        config, device = self.configs[index]
        proc = spawn_process(worker_main, f"frametok-{self.names[index]}",
                             (config, self.models, self.run_for(index), stop, log_level, resume, index, device))
        self.procs[index] = proc
        self.done.discard(index)
        return proc

    def await_ready(self, index: int, events: Any, stop: Any, tick: Callable[[], None],
                    on_ready: Callable[[EventNotice], None], other: Callable[[EventNotice], None]) -> None:
        """Until worker ``index`` says it is ready (other events are handled meanwhile); its failure to
        start is raised as the error it reported."""
        name, proc = self.names[index], self.procs[index]
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and not stop.is_set():
            tick()
            if events.poll(100):
                ev: EventNotice = events.recv_pyobj()
                if ev.source == name and ev.event == "ready":
                    on_ready(ev)
                    return
                if ev.source == name and ev.event == "failed":
                    on_ready(ev)
                    error = ev.data.get("error", "unknown error")
                    kinds = {"ModelError": ModelError, "ExportError": ModelError, "ConfigError": ConfigError}
                    raise kinds.get(ev.data.get("kind", ""), PipelineError)(str(error))
                other(ev)
            elif not proc.is_alive():
                raise PipelineError(f"{name} exited during start-up (exit code {proc.exitcode})")
        if not stop.is_set():
            raise PipelineError(f"{name} did not start within {_STARTUP_TIMEOUT_S:.0f} s")

    def bump_epoch(self, index: int) -> None:
        """A restarted worker is ready: its producers announce their rings and frames again."""
        epoch = self.epochs[index]
        with epoch.get_lock():
            epoch.value += 1

    def send(self, stream_id: str, notice: Any) -> None:
        """A notice to the worker serving ``stream_id`` (on its frame channel, like its producers')."""
        index = self.of_stream[stream_id]
        sock = self._ctl.get(index)
        if sock is None:
            sock = self._ctl[index] = self.zctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(self.run_for(index).frames_endpoint)
        sock.send_pyobj(notice)

    def alive(self) -> dict[str, bool]:
        return {self.names[i]: p.is_alive() for i, p in self.procs.items()}

    def close(self) -> None:
        for sock in self._ctl.values():
            sock.close()
        self._ctl.clear()
