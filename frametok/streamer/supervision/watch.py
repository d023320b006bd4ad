"""Following a run: every process's events and heartbeats, and restarts of a crashed or hung process.

* A producer that dies (or sends nothing, heartbeats included, for ``heartbeat_timeout_s``: it is killed)
  is restarted after a backoff. The worker is told first (a :class:`LostNotice`): it forgets the dead
  producer's ring and answers with the last frame it published; the new producer goes on from the next
  one (a file: nothing lost, nothing twice; a live source: its frame index goes on).
* A worker that dies or hangs is restarted alone, after a backoff, with a :class:`WorkerResume`; once it
  is ready its epoch goes up, and each of its producers announces to it again the frames still in its ring
  (the worker lets a frame go only once the hub holds its packet, so those are exactly the frames in
  flight). The other workers' streams see nothing of it; the hub (the run's publisher process) keeps every
  subscriber connected and publishes each frame once.
* The hub is started first and lives as long as the run: a hub that dies ends the run.
* A process restarted more than ``max_restarts`` times within ``window_s`` is given up: a producer's
  stream ends with an error, a worker ends the run with a :class:`PipelineError`.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from ...config import Config, SourceConfig, SupervisorConfig
from ...errors import ConfigError, ModelError, PipelineError
from ..delivery.hub import hub_main
from ..ipc.notices import EndNotice, EventNotice, LostNotice, ResumeNotice, RunContext, WorkerResume
from ..source.producer import producer_main
from ..worker.models import Models
from .health import HealthState
from .workers import WorkerSet

__all__ = ["RestartBudget", "RunWatch"]

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 120.0
_HUB_FINISH_S = 60.0  # a hub that ended normally drains its lossless subscribers first
_EXIT_GRACE_S = 1.0  # the goodbye of a producer that just exited may still be on its way
_PRODUCER_STARTUP_S = 30.0  # added to the heartbeat timeout of a producer that was just started
HUB = "hub"


class RestartBudget:
    """Restarts per process within a sliding window, and the backoff before the next one."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.times: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Record a restart of ``key`` if the budget allows one; False: give it up."""
        sc = self.config
        if not sc.restart:
            return False
        now = time.monotonic()
        times = self.times.setdefault(key, deque())
        while times and now - times[0] > sc.window_s:
            times.popleft()
        if len(times) >= sc.max_restarts:
            return False
        times.append(now)
        return True

    def delay_s(self, key: str) -> float:
        n = len(self.times.get(key, ()))
        sc = self.config
        return min(sc.backoff_max_s, sc.backoff_initial_s * 2.0 ** max(0, n - 1))

    def gave_up(self, why: str) -> str:
        sc = self.config
        if not sc.restart:
            return why
        return f"{why}; gave up after {sc.max_restarts} restarts within {sc.window_s:g} s"


def _start(proc: BaseProcess) -> None:
    """Start a child with SIGINT blocked, so that a Ctrl-C reaching the whole process group while the child
    is still importing cannot kill it (the child ignores SIGINT first thing; the supervisor stops it)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class RunWatch:
    """Starts the worker and producers, follows their events, restarts what crashed or hung."""

    def __init__(self, config: Config, uris: dict[str, str], models: Models, run: RunContext, stop: Any,
                 zctx: Any, events: Any, processes: list[BaseProcess], health: HealthState,
                 on_event: Callable[[EventNotice], None], log_level: int) -> None:
        self.config, self.uris, self.models, self.run, self.stop = config, uris, models, run, stop
        self.zctx, self.events, self.processes, self.health = zctx, events, processes, health
        self.on_event, self.log_level = on_event, log_level
        self.spawn = mp.get_context("spawn")
        self.finish = self.spawn.Event()  # the hub may end: every worker has exited
        self.workers = WorkerSet(config, models, run, self.spawn, zctx)
        self.sources = {s.id: s for s in config.sources}
        self.budget = RestartBudget(config.supervisor)
        self.hub: BaseProcess | None = None
        self.hub_done = False
        self.producers: dict[str, BaseProcess] = {}
        self.producer_end: dict[str, dict[str, Any]] = {}  # producers that said goodbye
        self.stream_ended: set[str] = set()  # streams whose end-of-stream the worker published
        self.last_seen: dict[str, float] = {}
        self.packets: dict[str, int] = {}
        self.last_frames: dict[str, int] = {}
        self.dead_since: dict[str, float] = {}
        self.lost: dict[str, str] = {}  # stream -> why: the worker was told its producer is gone
        self.restart_at: dict[str, tuple[float, int]] = {}  # stream -> (when, frame to go on from)
        self.attempts: dict[str, int] = {}
        self.lost_base: dict[str, int] = {}  # stream -> packets published when its producer was last restarted
        self.restarts: dict[str, int] = {}
        health.worker_alive = lambda: bool(self.workers.procs) and all(self.workers.alive().values())
        health.workers = self.workers.alive
        health.worker_of = {sid: self.workers.names[w] for sid, w in self.workers.of_stream.items()}

    # ------------------------------------------------------------------ starting

    def _spawn(self, target: Any, name: str, args: tuple[Any, ...]) -> BaseProcess:
        proc = self.spawn.Process(target=target, name=name, args=args)
        _start(proc)
        self.processes.append(proc)
        return proc

    def start_hub(self) -> None:
        self.hub = self._spawn(hub_main, "frametok-hub", (self.config, self.run, self.stop, self.finish,
                                                          self.log_level))
        self._await_ready(HUB, self.hub)
        self.last_seen[HUB] = time.monotonic()

    def start_worker(self, index: int, resume: WorkerResume | None = None) -> None:
        proc = self.workers.start(index, self._spawn, self.log_level, self.stop, resume)
        self.workers.await_ready(index, self.events, self.stop, self.health.tick, self.on_event, self.handle)
        self.last_seen[self.workers.names[index]] = time.monotonic()
        del proc

    def start_producer(self, src: SourceConfig, attempt: int = 0, resume_from: int = 0) -> None:
        w = self.workers.of_stream[src.id]
        self.producers[src.id] = self._spawn(
            producer_main, f"frametok-producer-{src.id}",
            (src.model_copy(update={"slots": self.config.ring_slots(src)}), self.uris[src.id],
             self.workers.run_for(w), self.stop, self.log_level, self.workers.epochs[w], attempt, resume_from))
        # a new process imports its libraries before it can say anything: that is no hang
        self.last_seen[src.id] = time.monotonic() + _PRODUCER_STARTUP_S
        self.dead_since.pop(src.id, None)

    def start(self) -> None:
        self.start_hub()
        for index in range(self.workers.count):
            if self.stop.is_set():
                return
            self.start_worker(index)
        for src in self.config.sources:
            if self.stop.is_set():
                break
            self.start_producer(src)

    def _await_ready(self, name: str, proc: BaseProcess) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and not self.stop.is_set():
            self.health.tick()
            if self.events.poll(100):
                ev: EventNotice = self.events.recv_pyobj()
                if ev.source == name and ev.event == "ready":
                    self.on_event(ev)
                    return
                if ev.source == name and ev.event == "failed":
                    self.on_event(ev)
                    kinds = {"ModelError": ModelError, "ExportError": ModelError, "ConfigError": ConfigError}
                    raise kinds.get(ev.data.get("kind", ""), PipelineError)(str(ev.data.get("error", "failed")))
                self.handle(ev)
            elif not proc.is_alive():
                raise PipelineError(f"{name} exited during start-up (exit code {proc.exitcode})")
        if not self.stop.is_set():
            raise PipelineError(f"{name} did not start within {_STARTUP_TIMEOUT_S:.0f} s")

    # ------------------------------------------------------------------ events

    def handle(self, ev: EventNotice) -> None:
        self.last_seen[ev.source] = time.monotonic()
        data = ev.data
        if ev.event == "producer_end":
            self.producer_end[ev.source] = data
        elif ev.event == "stream_end":
            self.stream_ended.add(str(data.get("stream")))
        elif ev.event == "progress" and ev.source == HUB:  # what was published: the hub knows
            self.packets.update({k: int(v) for k, v in data.get("streams", {}).items()})
            self.last_frames.update({k: int(v) for k, v in data.get("last_frames", {}).items()})
        elif ev.event == "stream_lost":
            self._lost_confirmed(str(data.get("stream")), int(data.get("last_frame", -1)), int(data.get("packets", 0)))
        elif ev.event == "done" and ev.source in self.workers.index:
            self.workers.done.add(self.workers.index[ev.source])
        elif ev.event == "done" and ev.source == HUB:
            self.hub_done = True
        if ev.event == "heartbeat":
            return
        self.health.on_event(ev)
        self.on_event(ev)

    @property
    def workers_done(self) -> bool:
        return len(self.workers.done) == self.workers.count

    def follow(self) -> None:
        """Until every worker is done (every stream ended), the run stops, or a worker is given up."""
        while not self.stop.is_set():
            self.health.tick()
            if self.events.poll(200):
                while True:
                    ev: EventNotice = self.events.recv_pyobj()
                    self.handle(ev)
                    if self.workers_done or not self.events.poll(0):
                        break
            if self.workers_done:
                return
            self._check_hub()
            for index in range(self.workers.count):
                self._check_worker(index)
            self._check_producers()

    def finish_hub(self, timeout_s: float = _HUB_FINISH_S) -> None:
        """Every worker has exited: the hub drains its lossless subscribers and ends (or is stopped)."""
        self.finish.set()
        if self.hub is not None:
            self.hub.join(timeout_s)

    # ------------------------------------------------------------------ the hub and the workers

    def _check_hub(self) -> None:
        hub = self.hub
        if hub is not None and not hub.is_alive() and not self.hub_done:
            raise PipelineError(f"the publisher process (hub) died (exit code {hub.exitcode}); the run ends")

    def _check_worker(self, index: int) -> None:
        proc, name = self.workers.procs.get(index), self.workers.names[index]
        if proc is None or index in self.workers.done:
            return
        hb = self.config.supervisor.heartbeat_timeout_s
        if not proc.is_alive():
            if proc.exitcode == 0:
                self.workers.done.add(index)
                return
            self._restart_worker(index, f"{name} died (exit code {proc.exitcode})")
        elif time.monotonic() - self.last_seen.get(name, time.monotonic()) > hb:
            log.error("%s sent nothing for %g s: killing it", name, hb)
            proc.kill()
            proc.join(5.0)
            self._restart_worker(index, f"{name} hung (nothing for {hb:g} s)")

    def _restart_worker(self, index: int, why: str) -> None:
        name = self.workers.names[index]
        if not self.budget.allow(name):
            raise PipelineError(self.budget.gave_up(why))
        n = self.restarts[name] = self.restarts.get(name, 0) + 1
        delay = self.budget.delay_s(name)
        log.warning("%s; restarting it in %.1f s (restart %d)", why, delay, n)
        self.health.restarted(name)
        if self.stop.wait(delay):
            return
        mine = set(self.workers.streams_of(index))
        resume = WorkerResume(n, f"{why}; worker restarted (restart {n})", frozenset(self.stream_ended & mine),
                              {s: v for s, v in self.packets.items() if s in mine}, 0, 0,
                              {s: v for s, v in self.last_frames.items() if s in mine})
        self.start_worker(index, resume)
        self.workers.bump_epoch(index)  # its producers announce their rings and the frames still in them again
        for sid, data in self.producer_end.items():
            proc = self.producers.get(sid)
            if sid in mine and sid not in self.stream_ended and (proc is None or not proc.is_alive()):
                # gone after its last frame was published, before the end-of-stream was: end it here
                self._send(sid, ResumeNotice(sid, ""))
                self._send(sid, EndNotice(sid, int(data.get("frames", 0)), str(data.get("reason", "end")),
                                          str(data.get("detail", ""))))
        for sid, lost_why in self.lost.items():  # the dead worker never confirmed these
            if sid in mine:
                self._send(sid, LostNotice(sid, lost_why))

    # ------------------------------------------------------------------ producers

    def _check_producers(self) -> None:
        now = time.monotonic()
        hb = self.config.supervisor.heartbeat_timeout_s
        for sid, proc in list(self.producers.items()):
            if sid in self.producer_end or sid in self.stream_ended or sid in self.lost or sid in self.restart_at:
                continue  # said goodbye, its stream is over, or being restarted
            if not proc.is_alive():
                since = self.dead_since.setdefault(sid, now)
                if now - since >= _EXIT_GRACE_S:
                    self._producer_failed(sid, f"producer process died (exit code {proc.exitcode})")
            elif now - self.last_seen.get(sid, now) > hb:
                log.error("source %s: producer sent nothing for %g s: killing it", sid, hb)
                proc.kill()
                proc.join(5.0)
                self._producer_failed(sid, f"producer hung (nothing for {hb:g} s)")
        for sid, (when, resume_from) in list(self.restart_at.items()):
            if now >= when:
                del self.restart_at[sid]
                self.start_producer(self.sources[sid], self.attempts[sid], resume_from)

    def _producer_failed(self, sid: str, why: str) -> None:
        if not self.budget.allow(sid):
            detail = self.budget.gave_up(why)
            log.error("source %s: %s", sid, detail)
            self.producer_end[sid] = {"frames": 0, "reason": "error", "detail": detail}
            self.handle(EventNotice(sid, "producer_end", {"frames": 0, "reason": "error", "detail": detail}))
            self._send(sid, EndNotice(sid, 0, "error", detail))
            return
        n = self.attempts[sid] = self.attempts.get(sid, 0) + 1
        self.restarts[sid] = n
        self.health.restarted(sid)
        detail = f"{why}; restarting it (restart {n})"
        log.warning("source %s: %s", sid, detail)
        self.lost[sid] = detail
        self._send(sid, LostNotice(sid, detail))

    def _lost_confirmed(self, sid: str, last_frame: int, packets: int) -> None:
        """The worker forgot the dead producer's ring: remove its segments, restart it after the backoff."""
        if self.lost.pop(sid, None) is None:
            return
        # the frames of the dead producer that were published count in the run's summary
        self.on_event(EventNotice(sid, "producer_lost", {"frames": packets - self.lost_base.get(sid, 0)}))
        self.lost_base[sid] = packets
        pattern = re.compile(re.escape(f"{self.run.shm_prefix}{sid}-") + r"\d+")
        with contextlib.suppress(OSError):
            for name in os.listdir("/dev/shm"):
                if pattern.fullmatch(name):
                    with contextlib.suppress(OSError):
                        os.unlink(f"/dev/shm/{name}")
        self.restart_at[sid] = (time.monotonic() + self.budget.delay_s(sid), last_frame + 1)

    # ------------------------------------------------------------------ control channel

    def _send(self, stream_id: str, notice: Any) -> None:
        self.workers.send(stream_id, notice)

    def close(self) -> None:
        self.workers.close()
