"""frametok index | search | record end to end: real processes, real video, real models, a real LanceDB."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("lancedb", reason="the index extra (lancedb) is not installed")

from frametok.errors import ConfigError
from frametok.index import open_index
from frametok.index.store import Store

from ..conftest import run_cli, start_cli, write_video


def cut_clip(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``src`` as a new MPEG-4 file (same size, 10 fps)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = None
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= frames:
                break
            if stream is None:
                stream = out.add_stream("mpeg4", rate=10)
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
                stream.options = {"qscale": "3"}
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        assert stream is not None
        out.mux(stream.encode(None))
    return dst


def stored(db: Path) -> list[dict]:
    """Every frame row as stored (what the lossless subscriber received)."""
    table = Store(db, create=False).read("frames", None, ["video_id", "frame", "det_class", "det_track"])
    return sorted(table.to_pylist(), key=lambda r: (r["video_id"], r["frame"]))


def search_json(db: Path, *args: str) -> list[dict]:
    result = run_cli("search", "--db", str(db), "--json", *args)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


# --------------------------------------------------------------------------- the whole of vtest.avi


@pytest.fixture(scope="module")
def vtest_db(shared_media: Path, shared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("index") / "vtest.db"
    result = run_cli("index", str(shared_media / "vtest.avi"), "--db", str(db), "--models", str(shared_models),
                     "--no-progress", timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 video(s), 795 frames" in result.stdout
    return db


@pytest.mark.slow
def test_class_and_count_search_match_the_stored_packets(vtest_db: Path) -> None:
    rows = stored(vtest_db)
    assert [r["frame"] for r in rows] == list(range(795))
    assert any(t >= 0 for r in rows for t in r["det_track"])  # track ids were stored
    names = json.loads(Store(vtest_db, create=False).video_rows()[0]["class_names"])
    car, person = names.index("car"), names.index("person")
    with_car = {r["frame"] for r in rows if car in r["det_class"]}
    crowded = {r["frame"] for r in rows if r["det_class"].count(person) >= 5}
    assert with_car and crowded and len(crowded) < 795  # the filters select something, not everything

    hits = search_json(vtest_db, "car", "--limit", "0")
    assert {h["frame"] for h in hits} == with_car
    assert all(h["counts"]["car"] >= 1 and h["boxes"] for h in hits)
    hits = search_json(vtest_db, "person >= 5", "--limit", "0")
    assert {h["frame"] for h in hits} == crowded
    assert all(h["counts"]["person"] >= 5 for h in hits)
    # a time range, in the API: frames 100..199 are 10.0..19.9 s in this 10 fps video
    ranged = open_index(vtest_db).search(["person >= 5"], t_from=10.0, t_to=19.95, limit=None)
    assert {h.frame for h in ranged} == {f for f in crowded if 100 <= f <= 199}


@pytest.mark.slow
def test_crop_of_a_person_finds_its_frame(vtest_db: Path, shared_media: Path, shared_models: Path,
                                          tmp_path: Path) -> None:
    index = open_index(vtest_db, models_dirs=[str(shared_models)])
    rows = {r["frame"]: r for r in stored(vtest_db)}
    table = Store(vtest_db, create=False).read("frames", "frame IN (150, 420, 640)", ["frame", "det_class",
                                                                                        "det_score", "det_xyxy"])
    frames = {}
    with av.open(str(shared_media / "vtest.avi")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in (150, 420, 640):
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= 640:
                break
    import cv2

    for row in table.to_pylist():
        k = row["frame"]
        assert k in rows
        # the most confident person of the frame, cropped by hand a little wider than its box
        persons = [i for i, c in enumerate(row["det_class"]) if c == 0]
        best = max(persons, key=lambda i: row["det_score"][i])
        x1, y1, x2, y2 = (row["det_xyxy"][4 * best + j] for j in range(4))
        crop = (max(0, int(x1) - 2), max(0, int(y1) - 2), min(768, int(x2) + 3), min(576, int(y2) + 3))
        image = tmp_path / f"frame{k}.png"
        cv2.imwrite(str(image), cv2.cvtColor(frames[k], cv2.COLOR_RGB2BGR))
        hits = index.search(image=image, crop_xyxy=crop, limit=5)
        assert hits, "no hit"
        assert abs(hits[0].frame - k) <= 2, f"crop of frame {k} {crop}: first hits {[(h.frame, h.score) for h in hits]}"
    # the CLI, with thumbnails
    result = run_cli("search", "--db", str(vtest_db), "--image", str(tmp_path / "frame420.png"), "--crop",
                     ",".join(str(v) for v in crop), "--models", str(shared_models), "--thumbs",
                     str(tmp_path / "thumbs"), "--limit", "3")
    assert result.returncode == 0, result.stderr
    thumbs = sorted((tmp_path / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 3 and cv2.imread(str(thumbs[0])) is not None


# --------------------------------------------------------------------------- resume after SIGKILL


def _frame_rows(db: Path) -> int:
    try:
        return int(Store(db, create=False).read("frames", None, ["frame"]).num_rows)
    except (ConfigError, Exception):
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_gives_every_frame_once(shared_media: Path, shared_models: Path, tmp_path: Path) -> None:
    clip = cut_clip(shared_media / "vtest.avi", tmp_path / "clip.mp4", 120)
    db = tmp_path / "db"
    args = ("index", str(clip), "--db", str(db), "--models", str(shared_models), "--encoder", "none",
            "--flush-every", "8", "--no-progress")
    proc = start_cli(*args)
    try:
        deadline = time.monotonic() + 600
        while _frame_rows(db) < 30 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the index run ended before it could be killed: " + proc.communicate()[1]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _frame_rows(db)
    assert 30 <= killed_at < 120
    result = run_cli(*args, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    frames = [r["frame"] for r in stored(db)]
    assert frames == list(range(120)), f"after resuming from {killed_at}: {len(frames)} rows"
    resumed = int(result.stdout.split("video(s), ")[1].split(" frames")[0])
    assert resumed == 120 - killed_at  # the second run decoded on from where the first stopped
    video = Store(db, create=False).video_rows()[0]
    assert video["state"] == "complete" and video["frames"] == 120
    tracks = open_index(db).tracks()
    assert tracks and len({t["track_id"] for t in tracks}) == len(tracks)
    # unchanged: a no-op
    again = run_cli(*args, timeout=300)
    assert "0 video(s), 0 frames" in again.stdout and "1 unchanged" in again.stdout
    assert [r["frame"] for r in stored(db)] == list(range(120))


# --------------------------------------------------------------------------- bad input, changes, versions


def test_non_video_skipped_changed_video_redone(shared_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "footage"
    folder.mkdir()
    video = write_video(folder / "a.mp4", frames=24)
    (folder / "notes.mp4").write_text("this is not a video\n")
    db = tmp_path / "db"
    args = ("index", str(folder / "*.mp4"), "--db", str(db), "--models", str(shared_models), "--encoder", "none",
            "--no-progress")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "notes.mp4" in result.stderr
    assert "1 video(s), 24 frames" in result.stdout and "1 skipped" in result.stdout
    assert [r["frame"] for r in stored(db)] == list(range(24))
    # the file changes (a shorter clip under the same name): its old rows go, the new ones come
    write_video(video, frames=12)
    result = run_cli(*args)
    assert "1 video(s), 12 frames" in result.stdout, result.stdout + result.stderr
    rows = stored(db)
    assert [r["frame"] for r in rows] == list(range(12)) and len({r["video_id"] for r in rows}) == 1
    assert len(Store(db, create=False).video_rows()) == 1


def test_incompatible_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    import pyarrow as pa

    db = tmp_path / "old.db"
    Store(db, create=True)
    meta = Store(db).db.open_table("meta")
    meta.delete("key = 'schema_version'")
    meta.add(pa.Table.from_pylist([{"key": "schema_version", "value": "999"}], schema=meta.schema))
    with pytest.raises(ConfigError, match="schema version 999"):
        open_index(db)
    result = run_cli("search", "car", "--db", str(db))
    assert result.returncode == 2 and "schema version 999" in result.stderr and str(db) in result.stderr
    missing = run_cli("search", "car", "--db", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no index at" in missing.stderr


def test_filter_syntax() -> None:
    from frametok.index import ClassFilter, parse_filter

    assert parse_filter("truck") == ClassFilter("truck", ">=", 1)
    assert parse_filter("person >= 5") == ClassFilter("person", ">=", 5)
    assert parse_filter("traffic light<2") == ClassFilter("traffic light", "<", 2)
    with pytest.raises(ConfigError, match="cannot read the filter"):
        parse_filter("person >= many")


# --------------------------------------------------------------------------- record a live stream


def test_record_a_lossless_stream(shared_media: Path, shared_models: Path, tmp_path: Path, endpoint: str) -> None:
    from ..conftest import free_endpoint

    lossless = free_endpoint()
    db = tmp_path / "rec.db"
    run = start_cli("run", "--source", f"cam={shared_media / 'vtest_small_3s.mp4'}", "--models", str(shared_models),
                    "--publish", endpoint, "--lossless-endpoint", lossless, "--wait-subscribers", "1",
                    "--no-progress")
    try:
        result = run_cli("record", lossless, "--db", str(db), "--lossless", "--timeout", "120", timeout=300)
        run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert result.returncode == 0, result.stderr
    assert "30 frames" in result.stdout
    rows = stored(db)
    assert [r["frame"] for r in rows] == list(range(30))
    index = open_index(db)
    assert index.videos()[0]["state"] == "complete" and index.tracks()
    people = index.search(["person"], limit=None)
    assert len(people) == sum(1 for r in rows if 0 in r["det_class"])
    assert np.all([h.video.endswith("#cam") for h in people])


def test_the_runtime_does_not_import_ray() -> None:
    """Ray (the cluster extra) is imported by `frametok index --ray` alone."""
    import subprocess
    import sys

    code = ("import sys, frametok, frametok.cli, frametok.index, frametok.index.cluster, "
            "frametok.index.ray_actors, frametok.index.engine; "
            "frametok.cli.build_parser().parse_args(['index', 'x.mp4', '--db', 'd', '--ray', 'auto']); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
