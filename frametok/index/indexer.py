"""``frametok index``: run the pipeline losslessly over video files and write every frame into the index.

Each video is keyed by a fingerprint of its path, size, mtime and the sha256 of its first and last MiB.
An unchanged, finished video is skipped; a changed one is indexed again from scratch; an interrupted one
(even by SIGKILL) resumes after the last frame that reached the index, with track ids continued.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FrametokError, PipelineError
from ..packet import EndOfStream, StreamInfo, TokenPacket
from .encode import soft_token_ref
from .store import Store, quote
from .tracks import build_tracks
from .writer import FrameWriter, token_dims

__all__ = ["IndexOptions", "IndexReport", "Indexer", "VideoPlan", "expand_inputs", "fingerprint", "index_config"]

log = logging.getLogger(__name__)

_EDGE_BYTES = 1 << 20


def fingerprint(path: Path) -> tuple[str, int, int]:
    """(video id, size, mtime_ns): changes whenever the file does (path, size, mtime, head or tail)."""
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_EDGE_BYTES))
        if st.st_size > _EDGE_BYTES:
            fh.seek(max(_EDGE_BYTES, st.st_size - _EDGE_BYTES))
            digest.update(fh.read(_EDGE_BYTES))
    return digest.hexdigest()[:24], st.st_size, st.st_mtime_ns


def expand_inputs(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files named by paths and globs (in order, without repeats), and the patterns that matched nothing."""
    files: list[Path] = []
    unmatched: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        found = [Path(m) for m in matches if Path(m).is_file()]
        if not found:
            unmatched.append(pattern)
        for path in found:
            if path.resolve() not in {f.resolve() for f in files}:
                files.append(path)
    return files, unmatched


def _stream_id(path: Path) -> str:
    sid = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:64]
    return sid or "video"


@dataclass(frozen=True)
class IndexOptions:
    detector: str | None = None  # registry name / path / "none"; None: the config's (default yolov8n)
    encoder: str | None = None
    models_dirs: tuple[str, ...] = ()
    config: str | None = None  # a run config whose detector/encoder/worker sections to use
    every: int = 1
    batch_rows: int = 256
    progress: bool = True
    log_level: int = logging.WARNING


def index_config(opts: IndexOptions, path: Path | str, sid: str, start_frame: int, workdir: str,
                 threads: int | None = None) -> Any:
    """The run config that indexes ``path`` as stream ``sid`` from ``start_frame`` (endpoints in
    ``workdir``); ``threads``: the models' intra-op threads where the options' config leaves it at 0."""
    from ..config import load_config

    source: dict[str, Any] = {"id": sid, "uri": str(path), "policy": "file"}
    if start_frame:
        source["start_frame"] = start_frame
    if opts.every > 1:
        source["every"] = opts.every
    over: dict[str, Any] = {
        "sources": [source],
        "publisher": {"endpoint": f"ipc://{workdir}/live", "lossless_endpoint": f"ipc://{workdir}/lossless",
                      "wait_subscribers": 1},
    }
    for role in ("detector", "encoder"):
        value = getattr(opts, role)
        if value is not None:
            over[role] = None if value.lower() == "none" else {"model": value}
    if over.get("encoder", {}) is not None:
        enc = load_config(opts.config, over).encoder
        # the index keeps context and content tokens; with a codebook the code grid travels with the
        # compressed patch grid (the lossless subscriber rebuilds it, its histogram goes into the index)
        over.setdefault("encoder", {})["patches"] = enc is not None and bool(enc.codebook)
    config = load_config(opts.config, over)
    if threads and not config.worker.threads:
        config = config.model_copy(update={"worker": config.worker.model_copy(update={"threads": threads})})
    return config


@dataclass
class VideoPlan:
    """One video still to index: its ``videos`` row so far (``base``), the first frame to decode, the
    track id to count on from, the frames already stored (and the last one), whether frames are missing
    (``pending``; else only its tracks are), and the frames it should have (None: unknown)."""

    path: Path
    base: dict[str, Any]
    start: int
    track_offset: int
    done: int
    last_frame: int
    pending: bool
    expected: int | None


@dataclass
class IndexReport:
    indexed: dict[str, int] = field(default_factory=dict)  # path -> frames written in this run
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> why
    stopped: bool = False
    seconds: float = 0.0
    cluster: str = ""  # --ray: the nodes and actors that did the work

    @property
    def frames(self) -> int:
        return sum(self.indexed.values())

    def line(self) -> str:
        text = (f"frametok index: {len(self.indexed)} video(s), {self.frames} frames in {self.seconds:.1f} s; "
                f"{len(self.unchanged)} unchanged; {len(self.failed)} skipped")
        text += f"; {self.cluster}" if self.cluster else ""
        return text + ("; stopped early (run again to resume)" if self.stopped else "")


class _Progress:
    """Two tqdm bars: this video and all of them (frames, fps, ETA)."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.overall: Any = None
        self.video: Any = None
        if enabled:
            from tqdm import tqdm

            self._tqdm = tqdm
            self.overall = tqdm(total=total, unit="frame", desc="all videos", file=sys.stderr, position=0,
                                dynamic_ncols=True)

    def start(self, name: str, total: int | None, done: int) -> None:
        if self.overall is None:
            return
        if self.video is not None:
            self.video.close()
        self.video = self._tqdm(total=total, initial=done, unit="frame", desc=name[:30], file=sys.stderr,
                                position=1, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.overall is not None:
            self.overall.update(n)
        if self.video is not None:
            self.video.update(n)

    def write(self, text: str) -> None:
        if self.overall is not None:
            self.overall.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in (self.video, self.overall):
            if bar is not None:
                bar.close()


class Indexer:
    """Indexes videos into the index at ``db`` (see the module's doc)."""

    def __init__(self, db: str | Path, options: IndexOptions | None = None) -> None:
        self.options = options or IndexOptions()
        self.store = Store(db, create=True)
        self._models: Any = None
        self._encoder: Any = None
        self.report = IndexReport()
        self._progress = _Progress(False, None)

    # ------------------------------------------------------------------ config

    def _config(self, path: Path, sid: str, start_frame: int, workdir: str) -> Any:
        return index_config(self.options, path, sid, start_frame, workdir)

    def _prepared_models(self, config: Any) -> Any:
        from ..streamer.worker.models import prepare_models

        if self._models is None:
            self._models = prepare_models(config, self.options.models_dirs)
        return self._models

    def _track_encoder(self, base: dict[str, Any]) -> Any:
        """The stream's encoder in this process, for the embeddings of track crops; with ``encoder: {model:
        detector}`` the detector and its neck, set up as the video's stream info (``base``) says its frames ran."""
        if self._encoder is None and self._models is not None and self._models.encoder is not None:
            from ..models.encoder import Encoder
            from ..models.session import create_session

            files = self._models.encoder
            self._encoder = Encoder(files.manifest, create_session(files, ("cpu",)))
        elif self._encoder is None and self._models is not None and self._models.neck and self._models.detector:
            import json

            from .encode import neck_encoder

            self._encoder = neck_encoder(self._models.detector, json.loads(base["models"] or "{}").get("encoder"))
        return self._encoder

    # ------------------------------------------------------------------ run

    def run(self, inputs: Sequence[str | Path]) -> IndexReport:
        t0 = time.monotonic()
        probes = self.probe_inputs(inputs)
        total = sum((p.frames or 0) // self.options.every for p in probes.values()) or None
        self._progress = _Progress(self.options.progress, total)
        try:
            for path, probe in probes.items():
                self._index_one(path, probe)
                if self.report.stopped:
                    break
        finally:
            self._progress.close()
            self.store.compact()
        self.report.seconds = time.monotonic() - t0
        return self.report

    def probe_inputs(self, inputs: Sequence[str | Path]) -> dict[Path, Any]:
        """The videos named by ``inputs`` (paths, globs) with their probes; the rest is reported as skipped."""
        from ..streamer.source.decode import IMAGE_SUFFIXES, probe_source

        files, unmatched = expand_inputs([str(i) for i in inputs])
        for pattern in unmatched:
            self.report.failed[pattern] = "no such file"
        probes: dict[Path, Any] = {}
        for path in files:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                self.report.failed[str(path)] = "an image, not a video"
                continue
            try:
                probes[path] = probe_source(str(path))
            except FrametokError as exc:
                self.report.failed[str(path)] = str(exc)
        for name, why in self.report.failed.items():
            print(f"frametok index: skipping {name}: {why}", file=sys.stderr, flush=True)
        return probes

    def plan(self, path: Path, probe: Any) -> VideoPlan | None:
        """What is left to do for one video (None: it is indexed and unchanged, counted as such): old rows
        of a changed file are forgotten here, and the frames already stored say where to go on."""
        key = str(path.resolve())
        video_id, size, mtime_ns = fingerprint(path)
        for old in self.store.video_rows(f"video = {quote(key)} AND video_id != {quote(video_id)}"):
            log.info("%s changed since it was indexed: indexing it again", path)
            self.store.forget_video(old["video_id"])
        rows = self.store.video_rows(f"video_id = {quote(video_id)}")
        row = rows[0] if rows else None
        if row is not None and row["every"] != self.options.every:
            self.store.forget_video(video_id)  # another sampling rate: start over
            row = None
        if row is not None and row["state"] == "complete":
            self.report.unchanged.append(str(path))
            return None
        done = self.store.read("frames", f"video_id = {quote(video_id)}", ["frame", "det_track"])
        last = max(done.column("frame").to_pylist(), default=-1)
        start = last + self.options.every if last >= 0 else 0
        tracks = [t for ts in done.column("det_track").to_pylist() for t in ts] if done.num_rows else []
        base = {
            "video_id": video_id, "video": key, "stream": _stream_id(path), "size_bytes": size,
            "mtime_ns": mtime_ns, "fps": probe.fps, "every": self.options.every, "width": probe.size_wh[0],
            "height": probe.size_wh[1], "frames": done.num_rows, "class_names": "[]", "models": "{}", "encoder": "",
        }
        if row is not None:
            base.update({k: row[k] for k in ("class_names", "models", "encoder")})
        return VideoPlan(path, base, start, max(tracks, default=-1) + 1, int(done.num_rows), last,
                         row is None or row["state"] != "frames",
                         (probe.frames or 0) // self.options.every or None)

    def _index_one(self, path: Path, probe: Any) -> None:
        plan = self.plan(path, probe)
        if plan is None:
            return
        base, sid = plan.base, plan.base["stream"]
        self._progress.start(path.name, plan.expected, plan.done)
        if plan.done and self._progress.overall is not None:
            self._progress.overall.update(plan.done)
        with tempfile.TemporaryDirectory(prefix="frametok-index-") as workdir:
            config = self._config(path, sid, plan.start, workdir)
            if plan.pending and not self._pipeline(config, path, sid, base, plan.base["fps"], plan.track_offset):
                return
            self._prepared_models(config)
        self._finish(base)

    def _pipeline(self, config: Any, path: Path, sid: str, base: dict[str, Any], fps: float | None,
                  track_offset: int) -> bool:
        """Run the pipeline over one video, writing its frames; True when it reached its end."""
        from ..streamer.supervision.supervisor import run_pipeline

        models = self._prepared_models(config)
        base["encoder"] = soft_token_ref(config)
        self.store.put_video({**base, "state": "indexing", "updated_ns": time.time_ns()})
        consumer = _Consumer(self.store, config.publisher.lossless_endpoint, sid, base, fps, track_offset,
                             self.options.batch_rows, self._progress.update)
        consumer.codes = config.encoder is not None and bool(config.encoder.codebook)
        consumer.start()
        try:
            summary = run_pipeline(config, models=models, log_level=self.options.log_level)
        except FrametokError as exc:
            consumer.stop()
            self.report.failed[str(path)] = str(exc)
            self._progress.write(f"frametok index: {path} failed: {exc}")
            return False
        finally:
            consumer.finish()
        if consumer.error is not None:
            raise consumer.error
        self.report.indexed[str(path)] = consumer.written
        base["frames"] = int(base["frames"]) + consumer.written
        if summary.stopped:
            self.report.stopped = True
            return False
        if not consumer.ended or summary.errors:
            why = summary.errors.get(sid) or "the stream did not end"
            self.report.failed[str(path)] = why
            self._progress.write(f"frametok index: {path}: {why} (run again to resume)")
            return False
        return True

    def _finish(self, base: dict[str, Any]) -> None:
        import json

        self.store.put_video({**base, "state": "frames", "updated_ns": time.time_ns()})
        dim = token_dims(json.loads(base["models"]))[0]
        names = json.loads(base["class_names"])
        build_tracks(self.store, base, self._track_encoder(base) if dim else None, names, dim)
        self.store.put_video({**base, "state": "complete", "updated_ns": time.time_ns()})


class _Consumer:
    """A lossless subscriber in a thread, writing the frames of one stream into the index."""

    def __init__(self, store: Store, endpoint: str, sid: str, base: dict[str, Any], fps: float | None,
                 track_offset: int, batch_rows: int, on_frame: Callable[[int], None]) -> None:
        self.store, self.endpoint, self.sid, self.base = store, endpoint, sid, base
        self.fps, self.track_offset, self.batch_rows, self.on_frame = fps, track_offset, batch_rows, on_frame
        self.writer: FrameWriter | None = None
        self.codes = False  # the stream carries code grids: their histograms go into the index
        self.ended = False
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="frametok-index-writer", daemon=True)

    @property
    def written(self) -> int:
        return self.writer.written if self.writer is not None else 0

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._stop.set()

    def finish(self) -> None:
        """The pipeline is over: take what is still on its way (at most a few seconds), then flush."""
        self._done.set()
        self._thread.join()

    def _main(self) -> None:
        import json

        from ..sdk.subscriber import Subscriber

        quiet_since: float | None = None
        try:
            with Subscriber(self.endpoint, streams=[self.sid], mode="lossless", credit=64) as sub:
                self._ready.set()
                while not self._stop.is_set() and not self.ended:
                    msg = sub.recv(0.2)
                    if msg is None:
                        if self._done.is_set():
                            quiet_since = quiet_since or time.monotonic()
                            if time.monotonic() - quiet_since > 3.0:
                                break
                        continue
                    quiet_since = None
                    if isinstance(msg, StreamInfo):
                        self.base["class_names"] = json.dumps(msg.class_names())
                        self.base["models"] = json.dumps(dict(msg.models))
                    elif isinstance(msg, TokenPacket):
                        if self.writer is None:
                            dim, content = token_dims(json.loads(self.base["models"]))
                            self.writer = FrameWriter(self.store, self.base["video_id"], fps=self.fps, dim=dim,
                                                      content_tokens=content, track_offset=self.track_offset,
                                                      codes=self.codes or msg.code_grid is not None,
                                                      batch=self.batch_rows)
                        self.writer.add(msg)
                        self.on_frame(1)
                    elif isinstance(msg, EndOfStream):
                        self.ended = msg.reason == "end"
                        break
        except BaseException as exc:  # reported by the main thread
            self.error = exc if isinstance(exc, FrametokError) else PipelineError(f"index writer failed: {exc!r}")
        finally:
            self._ready.set()
            if self.writer is not None:
                try:
                    self.writer.flush()
                except Exception as exc:
                    self.error = self.error or PipelineError(f"index writer failed: {exc!r}")
