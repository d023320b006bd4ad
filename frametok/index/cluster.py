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
import queue
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import Chunk, VideoJob
from .indexer import Indexer, IndexOptions, IndexReport, VideoPlan
from .ray_actors import ActorPool, RayActor
from .store import frames_schema
from .tracks import track_rows, write_tracks
from .writer import token_dims

__all__ = ["RayIndexer"]

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 3  # a video is given to an actor at most this often (a lost actor gives it back)
_FLUSH_S = 10.0  # commit a video's frames at least this often (also every --flush-every frames)


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


class RayIndexer(Indexer):
    """:class:`~frametok.index.indexer.Indexer` with the work on a Ray cluster (see the module's doc).

    ``address``: a Ray address (``host:port``, ``ray://...``), ``auto`` (the cluster this machine is in)
    or ``local`` (start Ray here).
    """

    def __init__(self, db: str | Path, options: IndexOptions | None = None, address: str = "auto") -> None:
        super().__init__(db, options)
        self.address = address
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._jobs: queue.Queue[VideoJob | None] = queue.Queue()
        self._videos: dict[str, _Video] = {}
        self._open = 0  # videos not finished yet
        self.ready_s = 0.0
        self.pool = ActorPool(self.options, address, self._events, self._jobs, lambda text: self._progress.write(text))

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
                self.pool.connect()
                self.pool.start()
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
            for _ in self.pool.threads:
                self._jobs.put(None)
            self._progress.close()
            self.pool.shutdown()
            self.store.compact()
        alive = [a for a in self.pool.actors if a.alive]
        if self.pool.actors:
            lost = len(self.pool.actors) - len(alive)
            nodes = len({a.info.get("node_id") for a in self.pool.actors})
            self.report.cluster = (f"Ray: {nodes} node(s), {len(self.pool.actors)} actor(s)"
                                   + (f" ({lost} lost)" if lost else "") + f", ready in {self.ready_s:.1f} s")
        self.report.seconds = time.monotonic() - t0
        return self.report

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
            if not any(a.alive for a in self.pool.actors):
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

    def _handle(self, kind: str, job: VideoJob, payload: Any, actor: RayActor) -> None:
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

    def _chunk(self, video: _Video, chunk: Chunk, actor: RayActor) -> None:
        import json

        base, path = video.plan.base, video.plan.path
        for text in chunk.damage:
            self._progress.write(f"frametok index: {text}")
        if chunk.kind == "info":
            base["class_names"] = json.dumps(chunk.class_names)
            base["models"] = json.dumps(chunk.models)
            base["encoder"] = self.pool.encoder_ref
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
