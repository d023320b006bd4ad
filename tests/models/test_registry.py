"""Finding models by name: models folders, the cache, and a clear error when nothing is found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frametok import ModelError
from frametok.models.manifest import load_manifest
from frametok.registry import REGISTRY, resolve_model


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown encoder model 'nope'.*dinov2_vits14"):
        resolve_model("nope", "encoder")


def test_wrong_kind() -> None:
    with pytest.raises(ModelError, match="is a detector, not a encoder"):
        resolve_model("yolov8n", "encoder")


def test_missing_everywhere_says_how_to_provide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMETOK_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError) as err:
        resolve_model("dinov2_vits14", "encoder", [tmp_path], allow_online=False)
    text = str(err.value)
    assert "dinov2_vits14.onnx" in text and str(tmp_path) in text and "FRAMETOK_MODELS" in text


def test_named_models_from_a_models_folder(shared_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    det = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    assert det.onnx_path == (shared_models / "yolov8n_coco.onnx").resolve()
    assert det.manifest.kind == "detector" and len(det.manifest.class_names) == 80  # type: ignore[union-attr]
    assert det.manifest_path is not None and det.manifest_path.exists()
    # the manifest written to the cache is a valid, reloadable manifest
    assert load_manifest(det.manifest_path) == det.manifest
    # and FRAMETOK_MODELS is searched too
    monkeypatch.setenv("FRAMETOK_MODELS", str(shared_models))
    enc = resolve_model("dinov2_vits14", "encoder", allow_online=False)
    assert enc.manifest.grid_hw == (16, 16)  # type: ignore[union-attr]


def test_path_reference_uses_the_manifest_beside_it(shared_models: Path, tmp_path: Path) -> None:
    det = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    data = det.manifest.model_dump(mode="json")
    data["onnx_file"] = str(det.onnx_path)
    (tmp_path / "mine.json").write_text(json.dumps(data))
    got = resolve_model(str(tmp_path / "mine.json"), "detector")
    assert got.onnx_path == det.onnx_path


def test_registry_entries_are_consistent() -> None:
    for name, entry in REGISTRY.items():
        assert entry.name == name and entry.kind in ("detector", "encoder") and entry.onnx_files
        if entry.kind == "encoder":
            assert {"mean", "std", "prefix_tokens", "context"} <= set(entry.encoder_spec)
