"""Detections.to_supervision: an sv.Detections from real detections, and the README's line-count example
run as written against a real `frametok run` (so that it cannot rot)."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from frametok import Detections, Subscriber, TokenPacket

from ..conftest import start_cli

sv = pytest.importorskip("supervision")

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- example: line-count -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's line-count example is missing"
    return match.group(1)


def test_to_supervision_carries_every_field() -> None:
    det = Detections(np.array([[1, 2, 30, 40], [5, 6, 70, 80], [0, 0, 9, 9]]), np.array([0.9, 0.5, 0.25]),
                     np.array([0, 2, 99]), np.array([7, -1, 3]))
    out = det.to_supervision(["person", "bicycle", "car"])
    assert isinstance(out, sv.Detections) and len(out) == 3
    np.testing.assert_array_equal(out.xyxy, det.xyxy)
    np.testing.assert_array_equal(out.confidence, det.score)
    assert out.class_id.tolist() == [0, 2, 99] and out.tracker_id.tolist() == [7, -1, 3]
    assert out.data["class_name"].tolist() == ["person", "car", "99"]  # no name: the id as text
    assert out.mask is None
    assert out[out.data["class_name"] == "person"].tracker_id.tolist() == [7]  # filters like any sv.Detections
    untracked = Detections(det.xyxy, det.score, det.class_id).to_supervision()
    assert untracked.tracker_id is None and untracked.data["class_name"].tolist() == ["0", "2", "99"]
    empty = Detections.empty().to_supervision(["person"])
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4) and len(empty.data["class_name"]) == 0


def test_importing_frametok_does_not_import_supervision() -> None:
    code = "import sys, frametok, frametok.sdk; print('supervision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def _trim(src: Path, dst: Path, frames: int) -> Path:
    """The first ``frames`` packets of a video, remuxed without re-encoding."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        n = 0
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = copy
            out.mux(packet)
            n += 1
            if n >= frames:
                break
    return dst


FRAMES = 100


def test_the_readme_line_count_example_on_a_live_run(shared_media: Path, shared_models: Path, endpoint: str,
                                                     tmp_path: Path) -> None:
    """The README block, unchanged but for the endpoint and stream id, on vtest.avi's first 100 frames
    (people walking across; detector and tracker, no encoder: the example needs only detections)."""
    clip = _trim(shared_media / "vtest.avi", tmp_path / "walk.avi", FRAMES)
    code = _example().replace("tcp://127.0.0.1:5555", endpoint).replace('streams=["cam0"]', 'streams=["walk"]')
    proc = start_cli("run", "--source", f"walk={clip}", "--models", str(shared_models), "--encoder", "none",
                     "--publish", endpoint, "--wait-subscribers", "1", "--no-progress")
    out = io.StringIO()
    scope: dict[str, object] = {"__name__": "readme_example"}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md:line-count", "exec"), scope)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    lines = out.getvalue().splitlines()
    counts = [tuple(map(int, m.groups())) for m in (re.fullmatch(r"frame \d+: (\d+) in, (\d+) out", x) for x in lines)
              if m]
    assert len(counts) == len(lines) == FRAMES, out.getvalue()[-2000:]
    line = scope["line"]
    assert isinstance(line, sv.LineZone)
    assert counts[-1] == (line.in_count, line.out_count)
    assert line.in_count + line.out_count >= 1, f"nobody crossed the middle of vtest.avi in {FRAMES} frames"
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(counts))  # counts only go up
    assert isinstance(scope.get("packet"), TokenPacket) and isinstance(scope.get("sub"), Subscriber)
