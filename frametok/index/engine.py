"""The index's frames made in one process: decode a video file and run the loaded models on it, batch by
batch, as the pipeline's worker does for a file stream (same models, pre-processing, post-processing,
tracker and soft tokens), without producer processes, shared memory or a publisher.

A :class:`FrameEngine` loads the models once and indexes one video after another; each video gives a
stream of :class:`~frametok.index.writer.FrameRows` chunks. Its batches go through the worker's
:class:`~frametok.streamer.worker.lane.ModelLane`: ``worker.in_flight`` of them in the models at once
(auto: 2 on a CPU with 2 threads or more), post-processed in order. The Ray actors of ``frametok index --ray``
(:mod:`frametok.index.cluster`) each hold one engine. Nothing here imports Ray.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SourceError
from ..grid import GridDecompressor
from ..models.detector import LetterboxInfo
from ..packet import StreamInfo, Timestamps, TokenPacket
from ..streamer.source.decode import DecodedFrame, decode_frames
from ..streamer.worker.lane import Batch, Inference, ModelLane
from ..streamer.worker.models import LoadedModels, Models, load_models
from ..streamer.worker.tokens import SoftTokens, SoftTokenStream
from .writer import FrameRows, token_dims

__all__ = ["Chunk", "FrameEngine", "VideoJob"]

_END = object()


@dataclass(frozen=True)
class VideoJob:
    """One video to index: from frame ``start`` (every ``every``-th), track ids shifted by ``track_offset``."""

    path: str
    video_id: str
    stream: str
    fps: float | None
    start: int = 0
    every: int = 1
    track_offset: int = 0
    tracks_only: bool = False  # every frame is in: only its tracks are left


@dataclass
class Chunk:
    """A piece of a video's index: ``info`` (first: class names and the models' stream info), then frame
    rows (``table``, a pyarrow Table, with ``frames`` rows up to ``last_frame``), then the end (``end``:
    ``ok`` and the ``detail`` of a failure). ``damage``: damaged parts skipped since the chunk before."""

    kind: str  # info | rows | end
    class_names: list[str] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    table: Any = None
    frames: int = 0
    last_frame: int = -1
    max_track: int = -1
    ok: bool = True
    detail: str = ""
    damage: list[str] = field(default_factory=list)
    seconds: float = 0.0  # rows: time the models and decoding took for them


class _Reader:
    """Decodes ahead in a thread (PyAV releases the GIL), at most ``depth`` frames."""

    def __init__(self, job: VideoJob, depth: int) -> None:
        self.damage: list[str] = []
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(job,), name="frametok-index-decode", daemon=True)
        self._thread.start()

    def _main(self, job: VideoJob) -> None:
        try:
            for frame in decode_frames(job.path, on_damage=self.damage.append, start_frame=job.start,
                                       every=job.every):
                while not self._stop.is_set():
                    try:
                        self._queue.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:
            self.error = exc
        finally:
            while not self._stop.is_set():
                try:
                    self._queue.put(_END, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def take(self, n: int) -> tuple[list[DecodedFrame], bool]:
        """The next ``n`` frames (fewer at the end); True when the video has no more."""
        out: list[DecodedFrame] = []
        while len(out) < n:
            item = self._queue.get()
            if item is _END:
                return out, True
            out.append(item)
        return out, False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass(frozen=True)
class _Prepared:
    """A batch in the lane: its frames, each frame's encoder row (-1: skipped) and its letterbox."""

    frames: list[DecodedFrame]
    encoder_rows: list[int]
    letterboxes: list[LetterboxInfo]


class FrameEngine:
    """The models of one run config, loaded once; :meth:`index` makes the rows of one video after another."""

    def __init__(self, config: Any, models: Models) -> None:
        self.config = config
        self.models = models
        self._cpu_encoder: Any = None
        self.loaded: LoadedModels = load_models(config, models)
        self.max_batch = int(config.worker.max_batch)
        # the worker's model lane: its tensor sets (rect: a tensor per input shape) and its batches in flight
        self.lane = ModelLane(self.loaded.detector, self.loaded.encoder, self.max_batch, self.loaded.neck,
                              self.loaded.in_flight)
        self.info = StreamInfo("video", "file", self.loaded.infos)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the lane's threads (the engine indexes nothing after)."""
        self.lane.close()

    @property
    def model_ids(self) -> dict[str, str]:
        return dict(self.loaded.ids)

    def index(self, job: VideoJob, chunk_frames: int = 32, chunk_s: float = 1.0) -> Iterator[Chunk]:
        """The chunks of one video (see :class:`Chunk`): a chunk every ``chunk_frames`` frames or
        ``chunk_s`` seconds, whichever comes first."""
        models = dict(self.loaded.infos)
        yield Chunk("info", class_names=self.info.class_names(), models=models)
        dim, content = token_dims(models)
        ec = self.config.encoder
        soft = (SoftTokenStream(ec, self.loaded.queries)
                if (self.loaded.encoder is not None or self.loaded.neck is not None) and ec else None)
        codes = GridDecompressor() if soft is not None and soft.codebook is not None else None
        rows = FrameRows(job.video_id, fps=job.fps, dim=dim, content_tokens=content, track_offset=job.track_offset,
                         codes=codes is not None)
        tracker = self.loaded.tracker(self.config.sources[0].fps if self.config.sources else None)
        reader = _Reader(job, (self.lane.in_flight + 1) * self.max_batch)
        last_yield = time.monotonic()
        busy = 0.0
        lane = self.lane
        prepared: deque[_Prepared] = deque()  # of the batches in the lane, in the order they went in
        try:
            ended = False
            while not ended:
                frames, ended = reader.take(self.max_batch)
                t0 = time.perf_counter()
                done = lane.finished_results()  # the batches done, and the oldest while no place is free
                if frames:
                    batch, meta = self._prepare(frames, soft)
                    lane.submit(batch)
                    prepared.append(meta)
                if ended:  # the video's last batch: every batch still in the models too
                    done += [lane.result() for _ in range(lane.pending)]
                for _, out in done:
                    for packet in self._finish(job, prepared.popleft(), out, soft, tracker, codes):
                        rows.row(packet)
                busy += time.perf_counter() - t0
                now = time.monotonic()
                if rows.rows and (ended or len(rows.rows) >= chunk_frames or now - last_yield >= chunk_s):
                    n, last = len(rows.rows), rows.last_frame
                    yield Chunk("rows", table=rows.take(), frames=n, last_frame=last, max_track=rows.max_track,
                                damage=self._damage(reader), seconds=busy)
                    last_yield, busy = now, 0.0
        finally:
            while lane.running is not None:  # a consumer that stopped early: the next video starts clean
                lane.result()
            reader.close()
        err = reader.error
        if err is None:
            yield Chunk("end", damage=self._damage(reader))
        elif isinstance(err, SourceError):
            yield Chunk("end", ok=False, detail=str(err), damage=self._damage(reader))
        else:
            yield Chunk("end", ok=False, detail=f"{type(err).__name__}: {err}", damage=self._damage(reader))

    @staticmethod
    def _damage(reader: _Reader) -> list[str]:
        out = list(reader.damage)
        del reader.damage[: len(out)]
        return out

    def _prepare(self, frames: list[DecodedFrame], soft: SoftTokenStream | None) -> tuple[Batch, _Prepared]:
        """A batch of frames pre-processed into a free tensor set of the lane, as the worker's gatherer does
        (frame ``i`` is detector row ``i``), and what its post-processing needs."""
        det, enc, lane = self.loaded.detector, self.loaded.encoder, self.lane
        batch = lane.new_batch()
        rows: list[int] = []
        letterboxes: list[LetterboxInfo] = []
        for frame in frames:
            rgb = frame.frame_rgb
            if det is not None and lane.det_tensors is not None:
                shape = det.input_hw_for((rgb.shape[0], rgb.shape[1]))
                slot = lane.det_tensors[batch.tensors].slot(shape, batch.detector_groups.next_row(shape))
                letterboxes.append(det.preprocess(rgb, slot))
                batch.detector_groups.add(shape)
            row = -1
            if enc is not None and lane.enc_tensors is not None and soft is not None and soft.wants_encoder(rgb):
                enc.preprocess(rgb, lane.enc_tensors[batch.tensors][batch.encoder_rows])
                row, batch.encoder_rows = batch.encoder_rows, batch.encoder_rows + 1
            rows.append(row)
        return batch, _Prepared(list(frames), rows, letterboxes)

    def _finish(self, job: VideoJob, prep: _Prepared, out: Inference, soft: SoftTokenStream | None, tracker: Any,
                codes: GridDecompressor | None = None) -> list[TokenPacket]:
        """The packets of a batch the models ran, as the worker's emitter makes them (in order: the tracker
        and the soft tokens follow the video); ``codes``: the code grid rebuilt from the grid updates as a
        lossless subscriber does (a codebook)."""
        det, neck = self.loaded.detector, self.loaded.neck
        frames, enc_rows, letterboxes = prep.frames, prep.encoder_rows, prep.letterboxes
        raw, maps, encoded = out.detections_raw, out.neck_maps, out.encoded
        t_infer = time.time_ns()
        packets: list[TokenPacket] = []
        for i, frame in enumerate(frames):
            found = None
            if det is not None and raw is not None:
                found = det.postprocess(raw[i], letterboxes[i])
                if tracker is not None:
                    found = tracker.update(found)
            tokens = SoftTokens()
            if soft is not None:
                row = enc_rows[i]
                if maps is not None and neck is not None:
                    tokens = soft.encoded(*neck.grid(maps[i], letterboxes[i]))
                else:
                    tokens = (soft.encoded(encoded.context[row], encoded.patches[row])
                              if row >= 0 and encoded is not None else soft.skip())
            h, w = frame.frame_rgb.shape[:2]
            packets.append(TokenPacket(
                stream_id=job.stream, frame_index=frame.index, pts_s=frame.pts_s, size_wh=(w, h), policy="file",
                timestamps=Timestamps(frame.t_capture_ns, frame.t_decode_ns, t_infer),
                detections=found, context_token=tokens.context, content_tokens=tokens.content,
                models=self.loaded.ids, code_grid=self._codes(codes, tokens),
            ))
        return packets

    @staticmethod
    def _codes(codes: GridDecompressor | None, tokens: SoftTokens) -> Any:
        if codes is None or tokens.grid_update is None:
            return None
        codes.apply(tokens.grid_update)
        return codes.code_grid()

    def embeddings(self, path: str, boxes: list[tuple[int, list[float]]]) -> list[Any]:
        """Track embeddings: the encoder's context token of each (best frame, box) crop of ``path``."""
        from .tracks import track_embeddings

        encoder = self.track_encoder()
        if encoder is None:
            return [None for _ in boxes]
        rows = [{"best_frame": int(f), "best_xyxy": np.asarray(b, np.float32)} for f, b in boxes]
        return [np.asarray(v, np.float32) for v in track_embeddings(path, rows, encoder)]

    def track_encoder(self) -> Any:
        """The encoder on CPU, as the single-machine index embeds track crops (the loaded one when it runs
        in fp32 on CPU already); with ``encoder: {model: detector}`` the detector and its neck, on CPU at the
        precision its frames ran at (the loaded one when it runs on CPU)."""
        enc = self.loaded.encoder
        if enc is None and self.loaded.neck is not None:
            from .encode import NeckEncoder, neck_encoder

            if list(self.loaded.neck.detector.session.get_providers()) == ["CPUExecutionProvider"]:
                return NeckEncoder(self.loaded.neck)
            if self._cpu_encoder is None and self.models.detector is not None:
                self._cpu_encoder = neck_encoder(self.models.detector, self.loaded.infos.get("encoder"))
            return self._cpu_encoder
        if enc is None:
            return None
        if list(enc.session.get_providers()) == ["CPUExecutionProvider"] and enc.precision == "fp32":
            return enc
        if self._cpu_encoder is None and self.models.encoder is not None:
            from ..models.encoder import Encoder
            from ..models.session import create_session

            files = self.models.encoder
            self._cpu_encoder = Encoder(files.manifest, create_session(files, ("cpu",)))  # type: ignore[arg-type]
        return self._cpu_encoder
