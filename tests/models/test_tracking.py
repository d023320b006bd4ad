"""Track ids: synthetic boxes (ids stable, every detection kept in order) and the real detector on vtest.avi."""

from __future__ import annotations

import itertools
import subprocess
import sys
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from frametok.errors import ModelError
from frametok.models.tracking import Tracker
from frametok.packet import Detections


def dets(boxes: list[list[float]], scores: list[float] | None = None, classes: list[int] | None = None) -> Detections:
    n = len(boxes)
    return Detections(
        np.asarray(boxes, np.float32).reshape(n, 4),
        np.asarray(scores if scores is not None else [0.9] * n, np.float32),
        np.asarray(classes if classes is not None else [0] * n, np.int32),
    )


def box_at(x: float, y: float, w: float = 40, h: float = 100) -> list[float]:
    return [x, y, x + w, y + h]


def check_same_rows(out: Detections, inp: Detections) -> np.ndarray:
    """``out`` has ``inp``'s boxes, scores and classes, in order, and an int32 track id per row."""
    assert len(out) == len(inp)
    np.testing.assert_array_equal(out.xyxy, inp.xyxy)
    np.testing.assert_array_equal(out.score, inp.score)
    np.testing.assert_array_equal(out.class_id, inp.class_id)
    assert out.track_id is not None and out.track_id.dtype == np.int32 and out.track_id.shape == (len(inp),)
    tracked = out.track_id[out.track_id != -1]
    assert (tracked > 0).all() and len(set(tracked.tolist())) == len(tracked)  # positive, one row per id
    return out.track_id


# --------------------------------------------------------------------------------------------- synthetic


def test_two_moving_objects_keep_two_ids() -> None:
    tracker = Tracker(frame_rate=30)
    seen: list[tuple[int, int]] = []
    for i in range(30):
        inp = dets([box_at(50 + 4 * i, 100 + i), box_at(400 - 3 * i, 200)], [0.9, 0.8])
        a, b = check_same_rows(tracker.update(inp), inp)
        seen.append((int(a), int(b)))
    assert len(set(seen)) == 1, seen
    a, b = seen[0]
    assert a > 0 and b > 0 and a != b


def test_rows_follow_objects_not_positions() -> None:
    """Input order shuffled every frame: each id stays with its object, and rows come back in input order."""
    rng = np.random.default_rng(0)
    tracker = Tracker(frame_rate=30)
    ids_of: dict[int, set[int]] = defaultdict(set)
    for i in range(30):
        objects = [box_at(20 + 5 * i, 50), box_at(300, 40 + 4 * i), box_at(600 - 6 * i, 300)]
        order = rng.permutation(3)
        inp = dets([objects[k] for k in order], [0.9, 0.85, 0.8])
        for k, tid in zip(order, check_same_rows(tracker.update(inp), inp), strict=True):
            ids_of[int(k)].add(int(tid))
    assert all(len(v) == 1 for v in ids_of.values()), ids_of
    assert len({next(iter(v)) for v in ids_of.values()}) == 3


def test_object_back_after_a_gap_keeps_its_id() -> None:
    tracker = Tracker(frame_rate=30, lost_track_buffer=30)  # a lost track waits 30 frames at 30 fps
    ids: list[int] = []
    for i in range(40):
        moving = box_at(50 + 3 * i, 120)
        still = box_at(500, 300)
        hidden = 15 <= i < 22  # the moving one is gone for 7 frames
        inp = dets([still] if hidden else [moving, still])
        out = check_same_rows(tracker.update(inp), inp)
        if not hidden:
            ids.append(int(out[0]))
    assert len(set(ids)) == 1 and ids[0] > 0


def test_object_back_after_the_buffer_gets_a_new_id() -> None:
    tracker = Tracker(frame_rate=30, lost_track_buffer=10)
    first = int(tracker.update(dets([box_at(100, 100)])).track_id[0])  # type: ignore[index]
    for _ in range(5):
        tracker.update(dets([box_at(100, 100)]))
    for _ in range(15):
        tracker.update(Detections.empty())
    again = [int(tracker.update(dets([box_at(100, 100)])).track_id[0]) for _ in range(3)]  # type: ignore[index]
    assert first > 0 and again[-1] > 0 and again[-1] != first


def test_every_detection_is_kept_in_order() -> None:
    """Low scores, degenerate and non-finite boxes come back too, untracked, between tracked rows."""
    tracker = Tracker(frame_rate=30)
    for i in range(10):
        inp = dets(
            [
                box_at(10 + 2 * i, 10),  # tracked
                [200, 200, 200, 260],  # zero width: not trackable
                box_at(400, 50 + 10 * i),  # a new object too weak to start a track
                [np.nan, 5, 30, 40],  # not finite
                box_at(600, 400 - 2 * i),  # tracked
            ],
            scores=[0.9, 0.9, 0.3, 0.9, 0.7],
            classes=[0, 2, 0, 5, 16],
        )
        out = tracker.update(inp)
        assert len(out) == 5
        np.testing.assert_array_equal(out.xyxy, inp.xyxy)  # NaN included, at its place
        np.testing.assert_array_equal(out.score, inp.score)
        np.testing.assert_array_equal(out.class_id, inp.class_id)
        assert out.track_id is not None
        assert out.track_id[0] > 0 and out.track_id[4] > 0 and out.track_id[0] != out.track_id[4]
        assert out.track_id[1] == out.track_id[2] == out.track_id[3] == -1


def test_empty_frames() -> None:
    tracker = Tracker(frame_rate=30)
    out = tracker.update(Detections.empty())
    assert len(out) == 0 and out.track_id is not None and out.track_id.shape == (0,) and out.track_id.dtype == np.int32
    tracker.update(dets([box_at(100, 100)]))  # a new track; confirmed (given an id) by its next match
    before = int(tracker.update(dets([box_at(102, 100)])).track_id[0])  # type: ignore[index]
    for _ in range(3):
        assert tracker.update(Detections.empty()).track_id.shape == (0,)  # type: ignore[union-attr]
    after = int(tracker.update(dets([box_at(104, 100)])).track_id[0])  # type: ignore[index]
    assert before > 0 and after == before


def test_class_change_keeps_the_id_and_each_class() -> None:
    """ByteTrack matches boxes regardless of class: the id carries on, every row keeps its own class."""
    tracker = Tracker(frame_rate=30)
    ids = []
    for i in range(12):
        inp = dets([box_at(100 + 2 * i, 100)], classes=[2 if i % 3 else 7])
        out = tracker.update(inp)
        np.testing.assert_array_equal(out.class_id, inp.class_id)
        ids.append(int(out.track_id[0]))  # type: ignore[index]
    assert len(set(ids)) == 1 and ids[0] > 0


def test_reset_forgets_tracks_but_never_reuses_an_id() -> None:
    tracker = Tracker(frame_rate=30)
    old: set[int] = set()
    for i in range(5):
        out = tracker.update(dets([box_at(10 + i, 10), box_at(300, 300 + i)]))
        old.update(out.track_id.tolist())  # type: ignore[union-attr]
    tracker.reset()
    out = tracker.update(dets([box_at(15, 10), box_at(300, 305)]))
    new = set(out.track_id.tolist())  # type: ignore[union-attr]
    assert -1 not in new and not new & old
    again = tracker.update(dets([box_at(16, 10), box_at(300, 306)]))
    assert set(again.track_id.tolist()) == new  # type: ignore[union-attr]


def test_two_trackers_are_independent() -> None:
    a, b = Tracker(frame_rate=30), Tracker(frame_rate=30)
    ids_a = [int(a.update(dets([box_at(10 + i, 10)])).track_id[0]) for i in range(5)]  # type: ignore[index]
    ids_b = [int(b.update(dets([box_at(10 + i, 10)])).track_id[0]) for i in range(5)]  # type: ignore[index]
    assert ids_a == ids_b == [1] * 5


def test_rows_mapped_by_box_when_supervision_drops_data() -> None:
    import supervision as sv

    inp = sv.Detections(
        xyxy=np.array([[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 10, 10]], float),
        confidence=np.array([0.9, 0.8, 0.7]),
        data={"frametok_row": np.array([3, 5, 8])},
    )
    out = sv.Detections(xyxy=np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 20, 20]], float))
    assert Tracker._rows_of(out, inp).tolist() == [3, 8, 5]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_rate": 0},
        {"frame_rate": float("nan")},
        {"track_activation_threshold": 0.0},
        {"minimum_matching_threshold": 1.5},
        {"lost_track_buffer": -1},
        {"lost_track_buffer": 2.5},
        {"minimum_consecutive_frames": 0},
    ],
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Tracker(**kwargs)  # type: ignore[arg-type]


def test_missing_supervision_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision -> ImportError
    with pytest.raises(ModelError, match=r"pip install 'supervision>=0\.30,<0\.31'"):
        Tracker()


def test_supervision_without_bytetrack_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("supervision")
    fake.__version__ = "0.31.2"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "supervision", fake)
    with pytest.raises(ModelError, match=r"supervision 0\.31\.2 has no ByteTrack"):
        Tracker()


def test_imports_stay_light() -> None:
    """Importing the module does not import supervision; tracking never imports torch, ultralytics or timm."""
    code = (
        "import sys\n"
        "import frametok.models.tracking as t\n"
        "assert 'supervision' not in sys.modules\n"
        "from frametok.packet import Detections\n"
        "import numpy as np\n"
        "tr = t.Tracker()\n"
        "tr.update(Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32),"
        " np.array([0], np.int32)))\n"
        "assert 'supervision' in sys.modules\n"
        "print(','.join(m for m in ('torch', 'ultralytics', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------------- real video

PERSON = 0


@pytest.fixture(scope="module")
def vtest_detections(shared_models: Path, shared_media: Path) -> list[Detections]:
    """The YOLOv8n detections of all 795 frames of vtest.avi (one detector pass for the module)."""
    from frametok.models.detector import Detector
    from frametok.models.session import create_session
    from frametok.registry import resolve_model
    from frametok.streamer.source.decode import decode_frames

    files = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    detector = Detector(files.manifest, create_session(files, ("cpu",), threads=2))  # type: ignore[arg-type]
    assert detector.manifest.class_names[PERSON] == "person"
    out: list[Detections] = []
    batch: list[np.ndarray] = []
    for frame in decode_frames(str(shared_media / "vtest.avi")):
        batch.append(frame.frame_rgb)
        if len(batch) == 4:
            out += detector(batch)
            batch = []
    if batch:
        out += detector(batch)
    assert len(out) == 795
    return out


@pytest.fixture(scope="module")
def vtest_tracked(vtest_detections: list[Detections]) -> list[Detections]:
    tracker = Tracker(frame_rate=10.0)  # vtest.avi is 10 fps; every class goes in, as in the worker
    return [tracker.update(d) for d in vtest_detections]


def person_runs(tracked: list[Detections]) -> dict[int, int]:
    """Longest run of consecutive frames of each track id on person detections."""
    frames_of: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(tracked):
        assert d.track_id is not None
        for cls, tid in zip(d.class_id, d.track_id, strict=True):
            if cls == PERSON and tid != -1:
                frames_of[int(tid)].append(i)
    runs = {}
    for tid, frames in frames_of.items():
        best = run = 1
        for prev, cur in itertools.pairwise(frames):
            run = run + 1 if cur == prev + 1 else 1
            best = max(best, run)
        runs[tid] = best
    return runs


@pytest.mark.slow
def test_vtest_keeps_every_detection(vtest_detections: list[Detections], vtest_tracked: list[Detections]) -> None:
    for inp, out in zip(vtest_detections, vtest_tracked, strict=True):
        check_same_rows(out, inp)
    persons = sum(int((d.class_id == PERSON).sum()) for d in vtest_tracked)
    tracked = sum(int(((d.class_id == PERSON) & (d.track_id != -1)).sum()) for d in vtest_tracked)
    assert persons > 3000 and tracked >= 0.85 * persons, (tracked, persons)


@pytest.mark.slow
def test_vtest_people_keep_their_ids(vtest_tracked: list[Detections]) -> None:
    runs = person_runs(vtest_tracked)
    long_tracks = [r for r in runs.values() if r >= 20]
    assert len(long_tracks) >= 10, sorted(runs.values())
    lasting = [r for r in runs.values() if r >= 5]
    assert float(np.median(lasting)) >= 20, sorted(runs.values())
