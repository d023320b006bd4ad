"""export_timm_encoder (timm to ONNX tokens) and describe_encoder (manifest for an existing encoder ONNX)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from frametok.errors import ExportError, ModelError
from frametok.exporters import describe_encoder, export_timm_encoder
from frametok.models.encoder import Encoder
from frametok.models.manifest import EncoderManifest, file_sha256
from frametok.models.session import ModelFiles, create_session, locate_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def shared_dir() -> Path:
    """``../shared`` beside the repository root, or ``$FRAMETOK_SHARED``."""
    env = os.environ.get("FRAMETOK_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"


def shared_file(relative: str) -> Path:
    path = shared_dir() / relative
    if not path.exists():
        pytest.skip(f"needs {path} (the shared models/media folder; set FRAMETOK_SHARED to point elsewhere)")
    return path


def need_timm() -> None:
    pytest.importorskip("torch", reason="needs torch (pip install 'frametok[export]')")
    pytest.importorskip("timm", reason="needs timm (pip install 'frametok[export]')")


def encoder_for(files: ModelFiles) -> Encoder:
    assert isinstance(files.manifest, EncoderManifest)
    return Encoder(files.manifest, create_session(files, providers=("cpu",), threads=2))


def test_import_needs_no_torch() -> None:
    code = (
        "import sys, frametok.exporters as e; e.export_yolo, e.export_timm_encoder, e.describe_encoder; "
        "bad = {'torch', 'ultralytics', 'timm'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- timm export


@pytest.fixture(scope="module")
def vit_tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    need_timm()
    return export_timm_encoder("vit_tiny_patch16_224", tmp_path_factory.mktemp("vit"), random_init=True)


def test_timm_manifest(vit_tiny: ModelFiles) -> None:
    man = vit_tiny.manifest
    assert isinstance(man, EncoderManifest)
    assert man.grid_hw == (14, 14) and man.embed_dim == 192
    assert man.prefix_tokens == 1 and man.context == "cls"
    assert man.input_name == "image" and man.output_name == "tokens" and man.batch == "dynamic"
    assert man.mean == (0.5, 0.5, 0.5) and man.std == (0.5, 0.5, 0.5)  # timm's cfg for augreg ViTs
    assert man.source.random_init is True and man.source.weights == "timm:vit_tiny_patch16_224"
    assert man.onnx_file == "vit_tiny_patch16_224.onnx"
    assert {"frametok", "timm", "torch", "onnx", "onnxruntime"} <= set(man.exporter)
    assert man.parity is not None and man.parity["min_cosine"] >= 0.999
    assert locate_model(vit_tiny.onnx_path).manifest == man


def test_timm_encoder_runs(vit_tiny: ModelFiles) -> None:
    encoder = encoder_for(vit_tiny)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    one = encoder([frame])
    assert one.patches.shape == (1, 14, 14, 192) and one.context.shape == (1, 192)
    three = encoder([frame, frame[::-1].copy(), frame])  # dynamic batch
    assert three.patches.shape == (3, 14, 14, 192)
    np.testing.assert_allclose(three.patches[0], one.patches[0], atol=1e-4)


def test_unknown_timm_model(tmp_path: Path) -> None:
    need_timm()
    with pytest.raises(ExportError, match="no_such_model"):
        export_timm_encoder("no_such_model", tmp_path, random_init=True)


def test_pretrained_offline_is_an_export_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_timm()
    hub = pytest.importorskip("huggingface_hub.constants", reason="needs huggingface_hub (timm's downloader)")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    try:
        files = export_timm_encoder("vit_tiny_patch16_224", tmp_path / "out")
    except ExportError as exc:  # the usual case: the weights are not in the local cache
        assert "could not be downloaded" in str(exc) and "--random-init" in str(exc)
        assert not (tmp_path / "out").exists()
    else:  # the weights happened to be cached
        assert files.manifest.source.random_init is False


# --------------------------------------------------------------------------- existing ONNX


def test_describe_dinov2(tmp_path: Path) -> None:
    onnx = shared_file("models/dinov2_vits14.onnx")
    files = describe_encoder(onnx, tmp_path, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    man = files.manifest
    assert isinstance(man, EncoderManifest)
    assert man.grid_hw == (16, 16) and man.embed_dim == 384 and man.prefix_tokens == 1 and man.context == "cls"
    assert man.input_name == "input_image" and man.output_name == "last_hidden_state"
    assert man.onnx_file == "dinov2_vits14.onnx"
    copied = tmp_path / "dinov2_vits14.onnx"
    assert files.onnx_path == copied.resolve() and files.manifest_path == tmp_path / "dinov2_vits14.json"
    assert file_sha256(copied) == man.onnx_sha256 == file_sha256(onnx)
    assert locate_model(copied).manifest == man
    # again, over the existing copy (which must not have kept the source's read-only mode)
    again = describe_encoder(onnx, tmp_path, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="dino")
    assert again.onnx_path == (tmp_path / "dino.onnx").resolve() and again.manifest.name == "dino"


def test_describe_in_place_without_torch(tmp_path: Path) -> None:
    vit = shared_file("models/dinov2_vits14.onnx")
    local = tmp_path / "enc.onnx"
    local.symlink_to(vit)
    code = (
        "import sys; from frametok.exporters import describe_encoder; "
        f"f = describe_encoder({str(local)!r}, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), prefix_tokens=1); "
        "assert f.manifest.grid_hw == (16, 16), f.manifest.grid_hw; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "enc.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.json", "enc.onnx"]


def test_describe_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_text("not an onnx graph\n")
    with pytest.raises(ModelError, match=r"x\.onnx"):
        describe_encoder(bad, tmp_path / "out", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert not (tmp_path / "out").exists()


def test_describe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"gone\.onnx"):
        describe_encoder(tmp_path / "gone.onnx", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_describe_bad_mean(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="mean"):
        describe_encoder(tmp_path / "y.onnx", mean=(0.5, 0.5), std=IMAGENET_STD)
