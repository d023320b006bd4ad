from pathlib import Path

import pytest

from frametok import ConfigError, load_config
from frametok.config import parse_config, source_kind

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_loads() -> None:
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.sources[0].kind == "demo"
    assert cfg.detector is not None and cfg.detector.model == "yolov8n"
    assert cfg.encoder is not None and cfg.encoder.model == "dinov2_vits14"


def test_all_shipped_configs_load() -> None:
    for path in (ROOT / "configs").glob("*.yaml"):
        load_config(path)


@pytest.mark.parametrize(("uri", "kind", "policy"), [
    ("video.mp4", "file", "file"), ("0", "camera", "live"), ("/dev/video2", "camera", "live"),
    ("rtsp://cam/stream", "network", "live"), ("frames/*.jpg", "images", "file"), ("demo", "demo", "file"),
])
def test_source_kinds_and_default_policy(uri: str, kind: str, policy: str) -> None:
    assert source_kind(uri) == kind
    cfg = parse_config({"sources": [{"id": "a", "uri": uri}]})
    assert cfg.sources[0].effective_policy == policy


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sources: [{id: a, uri: x.mp4}]\nworker: {max_batch: 2, max_bach: 3}\n")
    with pytest.raises(ConfigError, match=r"worker\.max_bach"):
        load_config(path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sources: [{id: a, uri: x.mp4}]\nworker: {max_batch: lots}\n")
    with pytest.raises(ConfigError, match=r"worker\.max_batch.*'lots'"):
        load_config(path)


@pytest.mark.parametrize(("data", "match"), [
    ({"sources": []}, "sources"),
    ({"sources": [{"id": "a b", "uri": "x"}]}, "invalid stream id"),
    ({"sources": [{"id": "a", "uri": "x"}, {"id": "a", "uri": "y"}]}, "duplicate source ids"),
    ({"sources": [{"id": "a", "uri": "x"}], "detector": None, "encoder": None}, "nothing to compute"),
    ({"sources": [{"id": "a", "uri": "x"}], "publisher": {"endpoint": "localhost:5"}}, "ZeroMQ endpoint"),
    ({"sources": [{"id": "a", "uri": "x", "policy": "sometimes"}]}, "policy"),
])
def test_bad_values(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_config_is_frozen() -> None:
    cfg = parse_config({"sources": [{"id": "a", "uri": "x"}]})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        cfg.worker = None  # type: ignore[misc]


def test_not_yaml_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
