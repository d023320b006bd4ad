"""Command-line defects: the echo line of a tracker, refused stream ids, ``models --models``,
a model asked for by its own file name, and a CLI piped into ``head``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from frametok.cli import main
from frametok.config import load_config
from frametok.errors import ConfigError, ModelError
from frametok.packet import StreamInfo
from frametok.registry import resolve_model
from frametok.sdk.render import message_line

from .conftest import ROOT, frametok_cmd


def test_echo_names_the_tracker_by_its_kind() -> None:
    """Defect 3: ``run --echo`` printed ``tracker ?`` although info carries ``tracker.kind: "bytetrack"``."""
    info = StreamInfo("cam0", "file", {"detector": {"name": "yolov8n", "class_names": ["person"]},
                                       "tracker": {"kind": "bytetrack", "lost_track_buffer": 60}})
    line = message_line(info)
    assert "tracker bytetrack" in line and "?" not in line, line
    assert "detector yolov8n" in line


@pytest.mark.parametrize("bad_id", ["é", "a" * 65, ""])
def test_a_refused_stream_id_is_one_message(bad_id: str) -> None:
    """Defect 8: after the right message came ``sources: Tuple should have at least 1 item``."""
    with pytest.raises(ConfigError) as err:
        load_config(None, {"sources": [{"id": bad_id, "uri": "x.mp4"}]})
    text = str(err.value)
    assert "invalid stream id" in text and "Tuple" not in text and "at least 1 item" not in text, text
    assert len(text.splitlines()) == 2, text  # "invalid config <flags>:" and the one problem


def test_duplicate_stream_ids_are_one_message() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"sources": [{"id": "a", "uri": "x.mp4"}, {"id": "a", "uri": "y.mp4"}]})
    assert "duplicate source ids: ['a']" in str(err.value) and "Tuple" not in str(err.value)


def test_an_empty_source_list_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="at least 1 item"):
        load_config(None, {"sources": []})


def _models_folder(shared_models: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / name).symlink_to(shared_models / "yolov8n_coco.onnx")
    return folder


def test_models_lists_a_models_folder(shared_models: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 8: ``frametok models --models DIR`` was refused (unrecognized arguments)."""
    folder = _models_folder(shared_models, tmp_path, "yolov8n_coco.onnx")
    assert main(["models", "--models", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "yolov8n " in out and f"in {folder}:" in out
    assert re.search(r"yolov8n_coco\.onnx .*ask for it as: yolov8n, yolov8n_coco", out), out


@pytest.mark.parametrize("stem", ["yolov8n_coco", "my_detector"])
def test_a_model_file_is_found_by_its_own_stem(shared_models: Path, tmp_path: Path, stem: str) -> None:
    """Defect 8: ``--detector yolov8n_coco --models DIR`` was 'unknown detector model'."""
    folder = _models_folder(shared_models, tmp_path, f"{stem}.onnx")
    files = resolve_model(stem, "detector", [str(folder)], allow_online=False)
    assert files.onnx_path.resolve() == (shared_models / "yolov8n_coco.onnx").resolve()
    assert files.manifest.kind == "detector" and len(files.manifest.class_names) == 80  # type: ignore[union-attr]
    with pytest.raises(ModelError, match=r"unknown encoder model 'nothing_here'.*searched"):
        resolve_model("nothing_here", "encoder", [str(folder)], allow_online=False)


def test_a_cli_piped_into_head_exits_quietly() -> None:
    """Defect 8: ``frametok search ... | head`` ended in a BrokenPipeError traceback (every printing command
    goes through ``main``; ``models`` prints without needing an index)."""
    proc = subprocess.Popen(frametok_cmd("models"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
