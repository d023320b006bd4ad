"""frametok index --ray on a REAL local Ray cluster of two nodes (``ray start``, one CPU each), on loopback.

Ray turns 127.0.0.1 into the machine's outward address, which these machines forbid; so every Ray run
happens inside a network namespace holding only loopback: each test starts
``unshare --net sh -c 'ip link set lo up; python tests/index/ray_scenario.py ...'``, which starts the
cluster, runs the index against it (killing a node or the driver where the test says) and stops the
cluster by the pids it started. The index folders it wrote are checked here, outside.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lancedb", reason="the index extra (lancedb) is not installed")
pytest.importorskip("ray", reason="the cluster extra (ray) is not installed: pip install -e '.[cluster]'")

from frametok.index import open_index
from frametok.index.store import Store

from ..conftest import run_cli
from .test_index import cut_clip

SCENARIO = Path(__file__).with_name("ray_scenario.py")


def _netns_reason() -> str | None:
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux) to run Ray in a network namespace holding only loopback"
    try:
        probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up"], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --net failed: {exc}"
    if probe.returncode != 0:
        return f"unshare --net is not permitted here (root needed): {probe.stderr.strip()}"
    return None


_REASON = _netns_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def in_netns(tmp_path: Path, scenario: str, db: Path, *args: str, at: int = 8, timeout: float = 600) -> dict[str, Any]:
    """Run a scenario of ray_scenario.py in a fresh network namespace (``args``: the index's; ``at``: kill
    once this many frames of each video are stored); its JSON result."""
    out = tmp_path / f"{scenario}.json"
    inner = shlex.join([sys.executable, str(SCENARIO), scenario, "--db", str(db), "--out", str(out), "--at",
                        str(at), "--", *args])
    proc = subprocess.run(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {inner}"],
                          capture_output=True, text=True, timeout=timeout)
    assert out.exists(), f"the scenario wrote nothing (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert "error" not in result, json.dumps(result, indent=1)[-6000:]
    assert result["left_running"] == [], "the cluster's processes outlived it"
    return result


def rows(db: Path, table: str = "frames") -> list[dict[str, Any]]:
    out = Store(db, create=False).read(table).to_pylist()
    key = "frame" if table == "frames" else "track_id"
    return sorted(out, key=lambda r: (r["video_id"], r[key]))


def frames_by_video(db: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in rows(db):
        out.setdefault(r["video_id"], []).append(r["frame"])
    return out


_CLOSE = ("det_score", "det_xyxy", "ctx", "content", "embedding", "best_xyxy", "best_score")


def assert_same_rows(mine: list[dict[str, Any]], ref: list[dict[str, Any]], what: str) -> None:
    assert len(mine) == len(ref), f"{what}: {len(mine)} rows, single machine {len(ref)}"
    for a, b in zip(mine, ref, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k in _CLOSE:
                np.testing.assert_allclose(np.asarray(a[k], np.float64), np.asarray(b[k], np.float64),
                                           atol=2e-3, rtol=1e-3, err_msg=f"{what} {k} of {a.get('frame')}")
            else:
                assert a[k] == b[k], f"{what}: {k} of frame {a.get('frame')}: {a[k]!r} != {b[k]!r}"


@pytest.fixture(scope="module")
def clips(shared_media: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ray-clips")
    return [cut_clip(shared_media / "vtest.avi", folder / "street.mp4", 16),
            cut_clip(shared_media / "vtest_small_3s.mp4", folder / "small.mp4", 16)]


def test_ray_index_on_two_nodes_matches_the_single_machine_index(clips: list[Path], shared_models: Path,
                                                                 tmp_path: Path) -> None:
    notes = clips[0].with_name("notes.mp4")
    notes.write_text("not a video\n")
    inputs = [*map(str, clips), str(notes)]
    single = tmp_path / "single.db"
    result = run_cli("index", *inputs, "--db", str(single), "--models", str(shared_models), "--no-progress")
    assert "2 video(s), 32 frames" in result.stdout, result.stdout + result.stderr
    ray_db = tmp_path / "ray.db"
    res = in_netns(tmp_path, "match", ray_db, *inputs, "--models", str(shared_models))
    run = res["runs"][0]
    assert run["rc"] == 0, run["stderr"]
    assert "2 video(s), 32 frames" in run["stdout"] and "1 skipped" in run["stdout"], run["stdout"]
    assert "Ray: 2 node(s), 2 actor(s)" in run["stdout"], run["stdout"]
    assert "notes.mp4" in run["stderr"]  # reported, the rest went on
    # the same rows, frame for frame: detections, tracks ids, tokens (within float tolerance)
    assert_same_rows(rows(ray_db), rows(single), "frames")
    assert_same_rows(rows(ray_db, "tracks"), rows(single, "tracks"), "tracks")
    mine = {v["video_id"]: v for v in Store(ray_db, create=False).video_rows()}
    for ref in Store(single, create=False).video_rows():
        got = mine[ref["video_id"]]
        assert got["state"] == "complete"
        for k in ("video", "stream", "frames", "class_names", "models", "encoder", "every", "fps"):
            assert got[k] == ref[k], k
    assert open_index(ray_db).search(["person"], limit=None)


def test_killed_node_mid_run_then_rerun_every_frame_once(shared_media: Path, shared_models: Path,
                                                         tmp_path: Path) -> None:
    clips = [cut_clip(shared_media / "vtest.avi", tmp_path / "k0.mp4", 40),
             cut_clip(shared_media / "vtest_small_3s.mp4", tmp_path / "k1.mp4", 30)]
    db = tmp_path / "ray.db"
    res = in_netns(tmp_path, "kill-node", db, *map(str, clips), "--models", str(shared_models),
                   "--flush-every", "4")
    assert res["running_when_killed"], "the index ended before a node could be killed"
    assert res["killed_pids"], "no process of the worker node was found to kill"
    first, rerun = res["runs"]
    assert first["rc"] == 0, first["stderr"]
    assert "lost" in first["stderr"] or "lost" in first["stdout"]
    assert rerun["rc"] == 0, rerun["stderr"]
    frames = frames_by_video(db)
    lengths = sorted(len(f) for f in frames.values())
    assert lengths == [30, 40], lengths
    for vid, got in frames.items():
        assert got == list(range(len(got))), f"{vid}: frames {got}"  # each exactly once
    videos = Store(db, create=False).video_rows()
    assert {v["state"] for v in videos} == {"complete"} and sorted(v["frames"] for v in videos) == [30, 40]
    tracks = open_index(db).tracks()
    assert tracks and len({(t["video_id"], t["track_id"]) for t in tracks}) == len(tracks)


def test_killed_driver_then_rerun_every_frame_once(shared_media: Path, shared_models: Path, tmp_path: Path) -> None:
    clips = [cut_clip(shared_media / "vtest.avi", tmp_path / "d0.mp4", 60),
             cut_clip(shared_media / "vtest_small_3s.mp4", tmp_path / "d1.mp4", 30)]
    db = tmp_path / "ray.db"
    res = in_netns(tmp_path, "kill-driver", db, *map(str, clips), "--models", str(shared_models),
                   "--encoder", "none", "--flush-every", "4", at=4)
    assert res["running_when_killed"], "the index ended before its driver could be killed"
    stored = sum(res["stored_when_killed"].values())
    assert 0 < stored < 90
    resume, again = res["runs"]
    assert resume["rc"] == 0, resume["stderr"]
    resumed = int(resume["stdout"].split("video(s), ")[1].split(" frames")[0])
    assert resumed == 90 - stored, resume["stdout"]  # went on after the frames stored, redid none
    assert "0 video(s), 0 frames" in again["stdout"] and "2 unchanged" in again["stdout"], again["stdout"]
    frames = frames_by_video(db)
    assert sorted(len(f) for f in frames.values()) == [30, 60]
    for got in frames.values():
        assert got == list(range(len(got)))
