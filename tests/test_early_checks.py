"""Faults a user can cause, caught before anything starts, each with one clear message naming the thing at
fault: endpoints already in use, a model whose manifest does not match its ONNX graph, the wrong kind of
model. (Config keys, bad values, missing sources and models: tests/test_cli.py, tests/test_config.py.)"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from frametok.errors import ConfigError
from frametok.streamer.delivery.endpoints import check_endpoints_free, endpoint_in_use

from .conftest import run_cli


def _fails(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_endpoint_in_use_is_detected(busy_port: int, tmp_path: Path) -> None:
    assert "already in use" in (endpoint_in_use(f"tcp://127.0.0.1:{busy_port}") or "")
    assert endpoint_in_use("tcp://127.0.0.1:*") is None
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert endpoint_in_use(f"tcp://127.0.0.1:{port}") is None
    assert "not an address of this machine" in (endpoint_in_use(f"tcp://192.0.2.1:{port}") or "")
    path = tmp_path / "sock"
    assert endpoint_in_use(f"ipc://{path}") is None
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        assert "already listening" in (endpoint_in_use(f"ipc://{path}") or "")
    with pytest.raises(ConfigError, match=r"b: tcp://127.0.0.1:1 is also a"):
        check_endpoints_free([("a", "tcp://127.0.0.1:1"), ("b", "tcp://127.0.0.1:1")])


def test_run_refuses_a_publisher_endpoint_in_use(busy_port: int, synthetic_video: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{busy_port}"
    result = run_cli("run", "--source", str(synthetic_video), "--publish", endpoint, "--detector", "none",
                     "--encoder", "nonexistent-model-never-looked-up")
    _fails(result, "publisher.endpoint", endpoint, "already in use")


def test_run_refuses_a_lossless_endpoint_in_use(busy_port: int, synthetic_video: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{busy_port}"
    result = run_cli("run", "--source", str(synthetic_video), "--lossless-endpoint", endpoint)
    _fails(result, "publisher.lossless_endpoint", endpoint, "already in use")


def test_run_refuses_a_health_port_in_use(busy_port: int, synthetic_video: Path) -> None:
    result = run_cli("run", "--source", str(synthetic_video), "--health-port", str(busy_port))
    _fails(result, "health", str(busy_port), "already in use")


def _detector_manifest(shared_models: Path):
    from frametok.registry import resolve_model

    return resolve_model("yolov8n", "detector", [str(shared_models)])


def test_manifest_that_does_not_match_the_graph(shared_models: Path, synthetic_video: Path, tmp_path: Path) -> None:
    from frametok.models.manifest import write_manifest

    files = _detector_manifest(shared_models)
    onnx = tmp_path / "det.onnx"
    shutil.copy(files.onnx_path, onnx)
    wrong = files.manifest.model_copy(update={"onnx_file": "det.onnx", "input_size_hw": (320, 320)})
    write_manifest(wrong, tmp_path / "det.json")
    result = run_cli("run", "--source", str(synthetic_video), "--detector", str(onnx), "--encoder", "none")
    _fails(result, "det.json", "graph input height is 640, manifest input_size_hw says 320")

    wrong = files.manifest.model_copy(update={"onnx_file": "det.onnx", "input_name": "pixels"})
    write_manifest(wrong, tmp_path / "det.json")
    result = run_cli("run", "--source", str(synthetic_video), "--detector", str(onnx), "--encoder", "none")
    _fails(result, "input_name 'pixels' is not a graph input", "images")


def test_detector_given_as_encoder(shared_models: Path, synthetic_video: Path) -> None:
    result = run_cli("run", "--source", str(synthetic_video), "--models", str(shared_models),
                     "--detector", "none", "--encoder", "yolov8n")
    _fails(result, "yolov8n", "is a detector, not a encoder")


def test_network_source_with_an_unknown_host(synthetic_video: Path) -> None:
    uri = "rtsp://user:secret@no-such-camera.invalid:554/stream1"  # .invalid never resolves (RFC 6761)
    result = run_cli("run", "--source", f"door={uri}", "--source", str(synthetic_video))
    _fails(result, "source 'door'", "unknown host 'no-such-camera.invalid'")
    assert "secret" not in result.stderr


def test_network_source_on_a_known_host_is_left_to_its_producer() -> None:
    from frametok.config import SourceConfig
    from frametok.streamer.supervision.supervisor import _prepare_source

    # nothing listens there: the producer retries with backoff, nothing is refused up front
    assert _prepare_source(SourceConfig(id="cam", uri="tcp://127.0.0.1:9")) == "tcp://127.0.0.1:9"
