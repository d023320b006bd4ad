"""The command line with bad input: one clear message naming the thing at fault, a non-zero exit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli, start_cli


def _fails(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_missing_video(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    _fails(run_cli("run", "--source", str(missing)), "not found", str(missing))


def test_file_that_is_not_a_video(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are not the frames you are looking for\n" * 50)
    _fails(run_cli("run", "--source", f"cam={fake}"), str(fake), "source 'cam'")


def test_config_unknown_key(tmp_path: Path, synthetic_video: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources: [{{id: a, uri: {synthetic_video}}}]\nencodr: {{model: x}}\n")
    _fails(run_cli("run", str(cfg)), "encodr", "Extra inputs are not permitted", str(cfg))


def test_config_wrong_type(tmp_path: Path, synthetic_video: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources: [{{id: a, uri: {synthetic_video}}}]\npublisher: {{wait_subscribers: many}}\n")
    _fails(run_cli("run", str(cfg)), "publisher.wait_subscribers", "'many'")


def test_missing_model_file(tmp_path: Path, synthetic_video: Path) -> None:
    missing = tmp_path / "det.onnx"
    _fails(run_cli("run", "--source", str(synthetic_video), "--detector", str(missing), "--encoder", "none"),
           "model file not found", str(missing))


def test_model_without_manifest(tmp_path: Path, synthetic_video: Path) -> None:
    bare = tmp_path / "det.onnx"
    bare.write_bytes(b"\x08\x07")
    _fails(run_cli("run", "--source", str(synthetic_video), "--detector", str(bare), "--encoder", "none"),
           "no manifest", "det.json")


def test_non_onnx_model_with_manifest(tmp_path: Path, synthetic_video: Path) -> None:
    from frametok.models.manifest import EncoderManifest, file_sha256, write_manifest

    bogus = tmp_path / "enc.onnx"
    bogus.write_text("definitely not protobuf")
    write_manifest(EncoderManifest(name="enc", onnx_file="enc.onnx", onnx_sha256=file_sha256(bogus),
                                   input_name="x", input_size_hw=(224, 224), output_name="y", prefix_tokens=1,
                                   context="cls", grid_hw=(16, 16), embed_dim=8), tmp_path / "enc.json")
    _fails(run_cli("run", "--source", str(synthetic_video), "--detector", "none", "--encoder", str(bogus)),
           "onnxruntime cannot load", str(bogus))


def test_unknown_model_name(synthetic_video: Path) -> None:
    result = run_cli("run", "--source", str(synthetic_video), "--detector", "yolov99")
    _fails(result, "unknown detector model 'yolov99'")


def test_named_model_missing_says_how_to_provide_it(synthetic_video: Path, tmp_path: Path) -> None:
    # an empty models folder, no cache, no export extra use allowed to download: a clear instruction
    result = run_cli("run", "--source", str(synthetic_video), "--models", str(tmp_path), "--encoder", "none",
                     env={"FRAMETOK_CACHE": str(tmp_path / "cache"), "YOLO_OFFLINE": "1"})
    _fails(result, "yolov8n", "--models", "FRAMETOK_MODELS")


def test_nothing_to_run() -> None:
    _fails(run_cli("run"), "nothing to run")


def test_models_lists_registry() -> None:
    result = run_cli("models")
    assert result.returncode == 0 and "yolov8n" in result.stdout and "dinov2_vits14" in result.stdout


def test_subscribe_prints_json_lines(shared_media: Path, shared_models: Path, endpoint: str) -> None:
    sub = start_cli("subscribe", endpoint, "--json", "--count", "5")
    run = start_cli("run", "--source", f"v={shared_media / 'vtest_small_3s.mp4'}", "--models", str(shared_models),
                    "--publish", endpoint, "--wait-subscribers", "1", "--no-progress", "--encoder", "none")
    try:
        out, err = sub.communicate(timeout=300)
        _, run_err = run.communicate(timeout=300)
    finally:
        for proc in (sub, run):
            if proc.poll() is None:
                proc.kill()
    assert sub.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    frames = [m for m in lines if m["kind"] == "frame"]
    assert [m["frame"] for m in frames] == [0, 1, 2, 3, 4]
    people = [d for m in frames for d in m["detections"] if d["class"] == "person"]
    assert people and all(len(d["xyxy"]) == 4 and 0 < d["score"] <= 1 for d in people)
    assert run.returncode == 0, run_err


def test_subscribe_lines_until_end_of_stream(synthetic_video: Path, shared_models: Path, endpoint: str) -> None:
    sub = start_cli("subscribe", endpoint)
    run = start_cli("run", "--source", f"sq={synthetic_video}", "--models", str(shared_models), "--publish", endpoint,
                    "--wait-subscribers", "1", "--no-progress", "--detector", "none")
    try:
        out, err = sub.communicate(timeout=300)
        run.communicate(timeout=300)
    finally:
        for proc in (sub, run):
            if proc.poll() is None:
                proc.kill()
    assert sub.returncode == 0, err
    frame_lines = [line for line in out.splitlines() if line.startswith("sq #")]
    assert len(frame_lines) == 24 and "patches 16x16x384 float16" in frame_lines[0]
    assert out.splitlines()[-1].startswith("sq end of stream (end) after 24 frames")


@pytest.mark.skipif(shutil.which("true") is None, reason="posix only")
def test_help_runs() -> None:
    assert run_cli("--help").returncode == 0
