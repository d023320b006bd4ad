"""Track ids for hard tokens: one :class:`Tracker` per stream, ByteTrack underneath.

Why ByteTrack, and why supervision's
    ByteTrack (Zhang et al., ECCV 2022) associates boxes only (Kalman-predicted track boxes against
    detections, IoU fused with the detection score, Hungarian matching; a second pass lets low-score
    detections continue existing tracks). It needs no appearance model, so no extra network runs per
    box and the tracker costs well under a millisecond per frame on a CPU, next to a detector that
    costs tens. Roboflow's ``supervision`` ships a tested, typed numpy/scipy implementation that does
    not import torch (checked by ``tests/models/test_tracking.py``), so the torch-free runtime can
    use it. ``supervision`` is imported lazily, in :class:`Tracker`, so importing this module is cheap.

Which supervision
    ``supervision.ByteTrack`` is deprecated since supervision 0.28 and was **removed in 0.31**; its
    successor is ``ByteTrackTracker`` in Roboflow's ``trackers`` package, which however requires the
    GUI build ``opencv-python`` (Qt, system ``libGL.so.1``) next to the runtime's
    ``opencv-python-headless``. frametok therefore needs ``supervision>=0.30,<0.31`` (0.30.x declares
    no OpenCV wheel and uses the one installed); the deprecation warning that ``ByteTrack`` emits
    when built is silenced here, on purpose.

What supervision does to the detections, and how rows are mapped back
    ``ByteTrack.update_with_detections`` (0.30.x) runs the tracker on the boxes and scores, then
    re-matches the input boxes to the Kalman-updated boxes of the tracks alive in this frame (IoU
    >= 0.5, one-to-one) and returns only the matched detections, in input order, with ``tracker_id``;
    everything else is dropped: detections below the activation threshold that started no track, the
    first frame of a new track (it is confirmed on its next match), detections whose updated track
    box moved away from them. It keeps ``data`` arrays row by row, so :meth:`Tracker.update` passes
    the input row index in ``data`` and scatters the ids back: every input detection comes out, in
    its order, with its own box, score and class; ``track_id`` is the track's id or -1. Boxes that
    ByteTrack cannot track (non-finite, zero width or height) are not given to it and get -1.
    (``trackers.ByteTrackTracker`` instead returns every detection, reordered; the row index in
    ``data`` maps that back the same way.)

Classes
    supervision's ByteTrack is class-agnostic: ``class_id`` plays no part in matching, so a track can
    continue with a detection of another class (a person briefly scored as another class keeps its
    id). Each output detection keeps the ``class_id`` of its input detection, so along one track the
    class can vary; a subscriber wanting one class per track takes the most frequent.

Ids
    Track ids are positive int32, unique within a :class:`Tracker`'s life: :meth:`Tracker.reset`
    starts a fresh track state but never hands out an id that was used before it, so a subscriber
    cannot mistake a new object for an old one after a stream restarts.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelError
from ..packet import Detections

__all__ = ["SUPERVISION_REQUIREMENT", "Tracker"]

SUPERVISION_REQUIREMENT = "supervision>=0.30,<0.31"
_ROW = "frametok_row"  # the input row index, carried through supervision in Detections.data
_INT32_MAX = int(np.iinfo(np.int32).max)


def _import_supervision() -> Any:
    try:
        import supervision as sv
    except ImportError as exc:
        raise ModelError(
            f"object tracking (ByteTrack) needs the supervision package: pip install '{SUPERVISION_REQUIREMENT}' "
            f"({exc})"
        ) from exc
    if not hasattr(sv, "ByteTrack"):
        version = getattr(sv, "__version__", "?")
        raise ModelError(
            f"supervision {version} has no ByteTrack (it was removed in supervision 0.31): "
            f"pip install '{SUPERVISION_REQUIREMENT}'"
        )
    return sv


class Tracker:
    """ByteTrack over one stream's :class:`~frametok.packet.Detections`, frame after frame.

    Parameters are ByteTrack's (supervision's names and meaning); the defaults suit a YOLO detector
    run at ``conf >= 0.25``:

    * ``frame_rate``: the stream's frames per second; ``lost_track_buffer`` is counted in frames at
      30 fps, so a lost track is kept for ``lost_track_buffer / 30`` seconds at any frame rate.
    * ``track_activation_threshold``: detections at or above it are matched first; below it (down
      to 0.1) they only continue tracks that the first pass left unmatched. A new track needs a score
      of ``track_activation_threshold + 0.1``.
    * ``lost_track_buffer``: how long (frames at 30 fps) an unmatched track waits to be found again
      with its id; 60 = 2 s.
    * ``minimum_matching_threshold``: the largest matching cost ``1 - IoU * score`` between a
      track's predicted box and a detection that still counts as a match.
    * ``minimum_consecutive_frames``: matches before a new track gets an id (its first frame after
      the stream's first always waits for a second match).

    Not thread-safe; one instance per stream.
    """

    def __init__(
        self,
        frame_rate: float = 30.0,
        track_activation_threshold: float = 0.25,
        lost_track_buffer: int = 60,
        minimum_matching_threshold: float = 0.9,
        minimum_consecutive_frames: int = 1,
    ) -> None:
        if not (isinstance(frame_rate, int | float) and math.isfinite(frame_rate) and frame_rate > 0):
            raise ValueError(f"frame_rate: expected a positive number, got {frame_rate!r}")
        for name, value in (
            ("track_activation_threshold", track_activation_threshold),
            ("minimum_matching_threshold", minimum_matching_threshold),
        ):
            if not (isinstance(value, int | float) and 0.0 < value <= 1.0):
                raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
        if not (isinstance(lost_track_buffer, int) and lost_track_buffer >= 0):
            raise ValueError(f"lost_track_buffer: expected an integer >= 0, got {lost_track_buffer!r}")
        if not (isinstance(minimum_consecutive_frames, int) and minimum_consecutive_frames >= 1):
            raise ValueError(
                f"minimum_consecutive_frames: expected an integer >= 1, got {minimum_consecutive_frames!r}"
            )
        self.frame_rate = float(frame_rate)
        self.track_activation_threshold = float(track_activation_threshold)
        self.lost_track_buffer = lost_track_buffer
        self.minimum_matching_threshold = float(minimum_matching_threshold)
        self.minimum_consecutive_frames = minimum_consecutive_frames
        self._sv = _import_supervision()
        self._byte_track = self._new_byte_track()
        self._id_offset = 0  # added to supervision's ids (which restart at 1 on reset)
        self._max_id = 0

    def _new_byte_track(self) -> Any:
        with warnings.catch_warnings():
            # deprecated since supervision 0.28; a deliberate choice (see the module docstring)
            warnings.filterwarnings("ignore", message=r".*ByteTrack.*deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*ByteTrack.*deprecated", category=DeprecationWarning)
            return self._sv.ByteTrack(
                track_activation_threshold=self.track_activation_threshold,
                lost_track_buffer=self.lost_track_buffer,
                minimum_matching_threshold=self.minimum_matching_threshold,
                frame_rate=self.frame_rate,
                minimum_consecutive_frames=self.minimum_consecutive_frames,
            )

    def reset(self) -> None:
        """Forget every track (a new scene, a restarted source); ids already handed out are not reused."""
        self._byte_track.reset()
        self._id_offset = self._max_id

    def continue_after(self, max_id: int) -> None:
        """Hand out ids above ``max_id`` only (a restarted worker goes on after the ids its stream had)."""
        self._max_id = max(self._max_id, max_id)
        self._id_offset = max(self._id_offset, self._max_id)

    def update(self, dets: Detections) -> Detections:
        """The next frame's detections with ``track_id`` filled (-1 where no track claims a detection).

        Boxes, scores and classes are returned unchanged, in the same order and number. Call it once
        per frame, also for frames without detections (so that lost tracks age).
        """
        n = len(dets)
        track_id = np.full(n, -1, np.int32)
        xyxy = dets.xyxy
        valid = np.isfinite(xyxy).all(axis=1) & np.isfinite(dets.score)
        valid &= (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        rows = np.flatnonzero(valid)
        sv_in = self._sv.Detections(
            xyxy=xyxy[rows].astype(np.float64),
            confidence=dets.score[rows].astype(np.float64),
            class_id=dets.class_id[rows].astype(np.int64),
            data={_ROW: rows},
        )
        sv_out = self._byte_track.update_with_detections(sv_in)
        if len(sv_out):
            out_rows = self._rows_of(sv_out, sv_in)
            ids = np.asarray(sv_out.tracker_id, np.int64)
            tracked = ids > 0
            if tracked.any():
                ids = ids[tracked] + self._id_offset
                top = int(ids.max())
                if top > _INT32_MAX:
                    raise ModelError(f"track id {top} does not fit int32; reset the tracker's owner")
                track_id[out_rows[tracked]] = ids
                self._max_id = max(self._max_id, top)
        return dataclasses.replace(dets, track_id=track_id)

    @staticmethod
    def _rows_of(sv_out: Any, sv_in: Any) -> NDArray[np.intp]:
        """Input rows of supervision's output detections: the row index carried in ``data``, or,
        should a supervision version drop ``data``, the input box each output box equals."""
        carried = sv_out.data.get(_ROW) if isinstance(sv_out.data, dict) else None
        in_rows = np.asarray(sv_in.data[_ROW], np.intp)
        if carried is not None and len(carried) == len(sv_out):
            return np.asarray(carried, np.intp)
        out_rows = np.empty(len(sv_out), np.intp)
        used = np.zeros(len(sv_in), bool)
        for k, box in enumerate(np.asarray(sv_out.xyxy)):
            same = np.flatnonzero((sv_in.xyxy == box).all(axis=1) & ~used)
            if same.size == 0:
                raise ModelError("supervision's ByteTrack returned a box that is not one of its input boxes")
            used[same[0]] = True
            out_rows[k] = in_rows[same[0]]
        return out_rows
