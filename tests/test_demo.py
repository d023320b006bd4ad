"""The README's first command: the demo config on a fresh machine (models from a models folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from frametok.streamer.source.decode import decode_frames

from .conftest import ROOT, run_cli


def test_demo_clip_is_made_from_packaged_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from frametok.demo import demo_photos, ensure_demo_clip

    try:
        demo_photos()
    except Exception as exc:  # SourceError naming what to install
        assert "ultralytics" in str(exc)
        pytest.skip("ultralytics (export extra) not installed: the demo photos are not here")
    monkeypatch.setenv("FRAMETOK_CACHE", str(tmp_path))
    clip = ensure_demo_clip()
    frames = list(decode_frames(str(clip)))
    assert len(frames) == 48 and frames[0].frame_rgb.shape == (480, 640, 3)
    assert frames[0].frame_rgb.std() > 20  # a real picture, not a blank frame


def test_readme_demo_command(shared_models: Path) -> None:
    pytest.importorskip("ultralytics", reason="the demo photos ship with ultralytics (export extra)")
    result = run_cli("run", str(ROOT / "configs" / "default.yaml"), "--echo",
                     env={"FRAMETOK_MODELS": str(shared_models)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    frames = [line for line in lines if line.startswith("demo #")]
    assert len(frames) == 48
    assert sum("person" in line for line in frames) >= 24  # zidane.jpg half: two people
    assert sum("bus" in line for line in frames) >= 12
    assert lines[-1] == "demo end of stream (end) after 48 frames"
    assert "48 packets" in result.stderr
    assert os.environ.get("FRAMETOK_CACHE")  # the session's private cache, not the user's
