"""The worker's publish path: post-process what the models made of a batch (NMS, tracks, soft tokens),
publish one packet per frame in order, release ring slots once their packets are delivered, end streams."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...packet import Detections, EndOfStream, Timestamps, TokenPacket
from ..delivery.feed import HubFeed
from ..ipc.notices import EndNotice, FrameNotice
from ..ipc.ring import FrameRing
from .lane import Batch, Inference
from .models import LoadedModels
from .streams import StreamState
from .tokens import SoftTokens

__all__ = ["Emitter"]


class Emitter:
    """Turns finished batches into packets; counts batches, frames and model time for the summary."""

    def __init__(self, models: LoadedModels, streams: dict[str, StreamState], publisher: HubFeed,
                 on_batch: Callable[[int, float | None, float | None], None] | None,
                 event: Callable[..., None]) -> None:
        self.models, self.streams, self.publisher, self.on_batch = models, streams, publisher, on_batch
        self.event = event
        self.undelivered: deque[tuple[int, FrameRing, int, int]] = deque()  # (message id, ring, slot, seq)
        self.batches = 0
        self.frames_done = 0
        self.model_time_s = 0.0
        self.detector_inputs: dict[str, int] = {}  # "WxH" of the detector's input -> frames run at it
        self.mixed_batches = 0  # batches of more than one detector input shape (one detector call per shape)
        self.active_since: float | None = None  # monotonic: the first batch of frames began loading
        self.active_until = 0.0  # monotonic: the last batch of frames was published
        # image folders that are not a sequence: every image its own scene, so no track crosses images
        self.scene_per_frame = frozenset(s.id for s in models.config.sources if s.kind == "images" and not s.sequence)
        # keyframes live subscribers asked for, coalesced: the first at once, then at most one per stream per
        # ``key_gap`` grid updates (periodic and scene-cut keys do not count: they are no subscriber's doing)
        self.key_gap = publisher.config.forced_keyframe_gap
        self._keys_wanted: set[str] = set()
        self._since_forced: dict[str, int] = {}  # grid updates since the stream's last forced key
        self.forced_keys = 0

    def want_keyframe(self, stream_id: str) -> None:
        """A live subscriber joined or lost sync: a keyframe for everyone, as soon as the gap allows."""
        self._keys_wanted.add(stream_id)

    def _force_key_if_due(self, stream_id: str, st: StreamState) -> None:
        if (stream_id in self._keys_wanted and st.soft is not None
                and self._since_forced.get(stream_id, self.key_gap) >= self.key_gap):
            self._keys_wanted.discard(stream_id)
            st.soft.request_keyframe()
            self._since_forced[stream_id] = 0
            self.forced_keys += 1

    def mark_active(self) -> None:
        if self.active_since is None:
            self.active_since = time.monotonic()

    @property
    def active_s(self) -> float:
        return max(0.0, self.active_until - self.active_since) if self.active_since is not None else 0.0

    def _detections(self, batch: Batch, out: Inference) -> list[Detections | None]:
        dets: list[Detections | None] = [None] * len(batch.frames)
        detector = self.models.detector
        if detector is None:
            return dets
        for i, item in enumerate(batch.frames):  # in frame order within each stream
            st = self.streams[item.notice.stream_id]
            if item.reused:
                # a still frame (motion gating): the last frame's boxes again, and the tracker is fed them:
                # its tracks age in frames, i.e. in time, as in a full run (a track lost just before a long
                # still stretch must not come back for whoever enters after it), and nothing moved
                found = st.last_detections
            elif out.detections_raw is not None and item.detector_row >= 0:
                found = detector.postprocess(out.detections_raw[item.detector_row], item.letterbox)  # type: ignore[arg-type]
                st.last_detections = found
            else:
                continue
            tracker = st.tracker
            if tracker is not None and found is not None:
                if item.reset_tracker or item.notice.stream_id in self.scene_per_frame:
                    tracker.reset()  # ids already handed out are never handed out again
                found = tracker.update(found)
            dets[i] = found
        return dets

    def publish(self, batch: Batch, out: Inference) -> None:
        """Post-process a batch the models ran, publish its packets in order, then the ends of its streams."""
        # keyframe requests that came while the models ran (a subscriber joined): its key goes in this batch,
        # not after the batches already finished (with in_flight 2, a whole batch later)
        self.publisher.poll()
        n = len(batch.frames)
        dets = self._detections(batch, out)
        enc = out.encoded
        self.model_time_s += out.detector_s + out.encoder_s
        if self.on_batch is not None:
            self.on_batch(n, out.detector_s if self.models.detector is not None else None,
                          out.encoder_s if enc is not None else None)  # a neck: one model pass, the detector's
        t_infer = time.time_ns()
        for i, item in enumerate(batch.frames):
            notice = item.notice
            st = self.streams[notice.stream_id]
            soft = SoftTokens()
            if st.soft is not None:
                self._force_key_if_due(notice.stream_id, st)
                if item.encoder_row >= 0 and enc is not None:
                    soft = st.soft.encoded(enc.context[item.encoder_row], enc.patches[item.encoder_row])
                elif self.models.neck is not None and out.neck_maps is not None and item.detector_row >= 0:
                    soft = st.soft.encoded(*self.models.neck.grid(out.neck_maps[item.detector_row], item.letterbox))
                else:
                    soft = st.soft.skip(reused=item.reused)
            h, w = item.ring.spec.shape_hwc[:2]
            packet = TokenPacket(
                stream_id=notice.stream_id,
                frame_index=notice.frame_index,
                pts_s=notice.pts_s,
                size_wh=(w, h),
                policy=st.policy,  # type: ignore[arg-type]
                dropped=notice.dropped,
                timestamps=Timestamps(notice.t_capture_ns, notice.t_decode_ns, t_infer),
                detections=dets[i],
                context_token=soft.context,
                patch_tokens=soft.patches,
                models=self.models.ids,
                grid_update=soft.grid_update,
                content_tokens=soft.content,
                query_tokens=soft.query_tokens,
                query_scores=soft.query_scores,
                preview_jpeg=item.preview_jpeg,
                damaged=notice.damaged,
                reused=item.reused,
            )
            if soft.grid_update is not None:
                self._since_forced[notice.stream_id] = self._since_forced.get(notice.stream_id, self.key_gap) + 1
            # a lossless joiner's whole grid is made by the hub, from the grids it published
            message_id = self.publisher.publish(packet)
            self._release_when_delivered(item.ring, notice, message_id)
            st.published += 1
            st.last_frame = notice.frame_index
        if n:
            self.batches += 1
            self.frames_done += n
            self.active_until = time.monotonic()
            self._count_inputs(batch)
        self.end_streams(batch.ends)

    def _count_inputs(self, batch: Batch) -> None:
        groups = batch.detector_groups
        for (h, w), rows in groups.rows.items():
            key = f"{w}x{h}"
            self.detector_inputs[key] = self.detector_inputs.get(key, 0) + len(rows)
        self.mixed_batches += groups.mixed

    def end_streams(self, ends: list[EndNotice]) -> None:
        for end in ends:
            st = self.streams[end.stream_id]
            st.ended = True
            self.publisher.publish(EndOfStream(end.stream_id, st.published, end.reason, end.detail))  # type: ignore[arg-type]
            self.event("stream_end", stream=end.stream_id, packets=st.published, reason=end.reason,
                       detail=end.detail)

    def _release_when_delivered(self, ring: FrameRing, notice: FrameNotice, message_id: int) -> None:
        """A frame's ring slot goes back to the producer once the hub holds its packet (acked). A frame still
        in the ring may not have reached the hub, and is redone by the next worker should this one die (the
        hub does not publish twice one that did reach it)."""
        if not ring.closed:  # else replaced meanwhile (the producer retired or lost it)
            self.undelivered.append((message_id, ring, notice.slot, notice.seq))

    def release_delivered(self) -> None:
        below = self.publisher.acked_below()
        while self.undelivered and self.undelivered[0][0] < below:
            _, ring, slot, seq = self.undelivered.popleft()
            if not ring.closed:  # a ring replaced meanwhile (the producer retired or lost it)
                ring.release(slot, seq)

    def summary(self) -> dict[str, Any]:
        """The counters the worker's ``done`` event reports."""
        return {"frames": self.frames_done, "batches": self.batches, "model_time_s": self.model_time_s,
                "active_s": self.active_s, "detector_inputs": dict(self.detector_inputs),
                "mixed_shape_batches": self.mixed_batches}
