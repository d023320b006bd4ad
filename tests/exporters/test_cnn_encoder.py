"""Soft tokens from CNN feature maps: timm CNNs exported with ``features_only`` as
``output_layout: nchw`` encoders, read as the same (gh, gw, D) patch grid as a ViT's.

No pretrained CNN weights can be had offline here (timm downloads them from the Hugging Face hub), so every
CNN below is random-init: the tests check the plumbing (export, torch/onnxruntime parity, the layout, a
run producing patch grids), not what the features mean. DINOv2 in ../shared/models stays the real-weights
path for everything that needs meaningful tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from frametok.errors import ModelError
from frametok.models.describe import describe_encoder_onnx
from frametok.models.encoder import Encoder
from frametok.models.manifest import EncoderManifest, load_manifest, write_manifest
from frametok.models.session import ModelFiles, create_session, locate_model

from ..conftest import run_cli, start_cli
from .test_encoder_export import encoder_for, need_timm, shared_file

SEED = 0


def _seeded_features(model_name: str, stage: int) -> Any:
    """The same random-init features_only model export_timm_encoder builds, under the same torch seed."""
    import timm
    import torch

    torch.manual_seed(SEED)
    return timm.create_model(model_name, pretrained=False, features_only=True, out_indices=(stage,)).eval()


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    need_timm()
    import torch

    from frametok.exporters import export_timm_encoder

    torch.manual_seed(SEED)
    return export_timm_encoder("resnet18", tmp_path_factory.mktemp("resnet"), random_init=True, stage=-1)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), np.uint8)


def test_resnet18_manifest(resnet18: ModelFiles) -> None:
    man = resnet18.manifest
    assert isinstance(man, EncoderManifest)
    assert man.output_layout == "nchw" and man.output_name == "features"
    assert (man.grid_hw, man.embed_dim, man.prefix_tokens, man.context) == ((7, 7), 512, 0, "mean")
    assert man.mean == (0.485, 0.456, 0.406) and man.input_size_hw == (224, 224) and man.batch == "dynamic"
    assert man.source.random_init is True and man.source.weights == "timm:resnet18"
    assert man.exporter["timm.features_only"] == "stage -1"
    assert man.parity is not None and man.parity["tokens_shape"] == [2, 512, 7, 7]
    assert man.parity["min_cosine"] >= 0.999 and man.parity["max_abs_diff"] < 1e-4
    assert man.info()["output_layout"] == "nchw"
    assert load_manifest(resnet18.manifest_path).output_layout == "nchw"  # type: ignore[arg-type, union-attr]


def test_resnet18_runtime_parity_on_photos(resnet18: ModelFiles) -> None:
    """frametok's Encoder (resize, normalise, onnxruntime, NCHW -> grid) against the torch model on the same
    preprocessed photos: the patch grid is the feature map with channels last, token for token."""
    import torch

    encoder = encoder_for(resnet18)
    photos = [_rgb(shared_file(f"media/{name}")) for name in ("bus.jpg", "zidane.jpg", "chelsea.png")]
    out = encoder(photos)
    assert out.patches.shape == (3, 7, 7, 512) and out.context.shape == (3, 512)
    batch = np.empty((3, 3, 224, 224), np.float32)
    for i, photo in enumerate(photos):
        encoder.preprocess(photo, batch[i])
    with torch.inference_mode():
        ref = _seeded_features("resnet18", -1)(torch.from_numpy(batch))[0].numpy().transpose(0, 2, 3, 1)
    ref64, got64 = ref.astype(np.float64), out.patches.astype(np.float64)
    cos = (ref64 * got64).sum(-1) / np.maximum(np.linalg.norm(ref64, axis=-1) * np.linalg.norm(got64, axis=-1), 1e-12)
    assert cos.min() >= 0.999, float(cos.min())
    assert np.abs(ref64 - got64).max() <= 1e-3 * max(1.0, float(np.abs(ref64).max()))
    np.testing.assert_allclose(out.context, out.patches.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_mobilenetv3_stage_through_the_cli(tmp_path: Path) -> None:
    need_timm()
    result = run_cli("export", "encoder", "mobilenetv3_small_100", "--random-init", "--stage", "3",
                     "--out", str(tmp_path), "--name", "mnv3")
    assert result.returncode == 0, result.stderr
    assert "nchw output" in result.stdout and "RANDOM weights" in result.stdout
    files = locate_model(tmp_path / "mnv3.onnx")
    man = files.manifest
    assert isinstance(man, EncoderManifest) and man.output_layout == "nchw"
    assert (man.grid_hw, man.embed_dim) == ((14, 14), 48)  # stage 3: stride 16, 48 channels
    assert man.parity is not None and man.parity["min_cosine"] >= 0.999
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert encoder_for(files)([frame, frame]).patches.shape == (2, 14, 14, 48)
    bad = run_cli("export", "encoder", "mobilenetv3_small_100", "--random-init", "--stage", "9",
                  "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--stage takes 0 to 4" in bad.stderr, bad.stderr


def test_describe_reads_the_layout(resnet18: ModelFiles) -> None:
    man = describe_encoder_onnx(resnet18.onnx_path)
    assert (man.output_layout, man.grid_hw, man.embed_dim, man.prefix_tokens) == ("nchw", (7, 7), 512, 0)
    with pytest.raises(ModelError, match=r"shape \(1, 512, 7, 7\), expected \(N, tokens, dim\)"):
        describe_encoder_onnx(resnet18.onnx_path, output_layout="tokens")
    with pytest.raises(ModelError, match="no prefix or CLS token"):
        describe_encoder_onnx(resnet18.onnx_path, prefix_tokens=1)
    dino = shared_file("models/dinov2_vits14.onnx")
    with pytest.raises(ModelError, match=r"shape \(1, 257, 384\), expected \(N, C, H, W\)"):
        describe_encoder_onnx(dino, output_layout="nchw")


def test_a_layout_that_does_not_fit_the_graph_is_refused(resnet18: ModelFiles, tmp_path: Path) -> None:
    man = resnet18.manifest
    assert isinstance(man, EncoderManifest)
    wrong = man.model_copy(update={"output_layout": "tokens", "onnx_file": str(resnet18.onnx_path)})
    write_manifest(wrong, tmp_path / "wrong.json")
    files = locate_model(tmp_path / "wrong.json")
    with pytest.raises(ModelError, match=r"output \(\?, 512, 7, 7\) does not fit output_layout tokens: "
                                         r"expected \(N, 49, 512\)"):
        Encoder(files.manifest, create_session(files, ("cpu",), threads=1))  # type: ignore[arg-type]
    grid = man.model_copy(update={"grid_hw": (14, 14), "onnx_file": str(resnet18.onnx_path)})
    write_manifest(grid, tmp_path / "grid.json")
    files = locate_model(tmp_path / "grid.json")
    with pytest.raises(ModelError, match=r"expected \(N, 512, 14, 14\)"):
        Encoder(files.manifest, create_session(files, ("cpu",), threads=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no prefix tokens"):
        EncoderManifest.model_validate({**man.model_dump(), "prefix_tokens": 1})
    # and `frametok run` refuses it before any frame is read, naming the manifest's layout and the graph's shape
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "r.onnx").symlink_to(resnet18.onnx_path)
    write_manifest(wrong.model_copy(update={"onnx_file": "r.onnx"}), folder / "r.json")
    result = run_cli("run", "--source", str(shared_file("media/vtest_small_3s.mp4")), "--detector", "none",
                     "--encoder", str(folder / "r.onnx"), "--no-progress")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "does not fit output_layout tokens" in result.stderr and "(?, 512, 7, 7)" in result.stderr
    assert "Traceback" not in result.stderr


def _run_config(tmp_path: Path, video: Path, encoder: Path, endpoint: str) -> Path:
    cfg = {
        "sources": [{"id": "v", "uri": str(video)}],
        "detector": None,
        "encoder": {"model": str(encoder), "tau": 0.05, "keyframe_interval": 10},
        "publisher": {"endpoint": endpoint, "wait_subscribers": 1},
        "worker": {"threads": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_with_a_cnn_gives_patch_grids(resnet18: ModelFiles, tmp_path: Path, endpoint: str) -> None:
    from frametok import StreamInfo, Subscriber, TokenPacket
    from frametok.grid import cosine_per_patch
    from frametok.streamer.source.decode import decode_frames

    video = shared_file("media/vtest_small_3s.mp4")
    config = _run_config(tmp_path, video, resnet18.onnx_path, endpoint)
    proc = start_cli("run", str(config), "--no-progress")
    try:
        with Subscriber(endpoint, timeout_s=120) as sub:
            messages = list(sub)
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    info = next(m for m in messages if isinstance(m, StreamInfo))
    enc_info = info.models["encoder"]
    assert enc_info["output_layout"] == "nchw" and enc_info["grid_hw"] == [7, 7] and enc_info["embed_dim"] == 512
    packets = [m for m in messages if isinstance(m, TokenPacket)]
    assert len(packets) == 30
    kinds = [p.grid_update.kind for p in packets if p.grid_update is not None]
    assert kinds[0] == "key" and "delta" in kinds
    encoder = encoder_for(resnet18)
    frames = [f.frame_rgb for f in decode_frames(str(video))]
    for p in packets[:12]:
        assert p.patch_tokens is not None and p.patch_tokens.shape == (7, 7, 512)
        truth = encoder([frames[p.frame_index]]).patches[0]
        assert cosine_per_patch(p.patch_tokens, truth).min() >= 1 - 0.05 - 5e-3, p.frame_index
        assert p.context_token is not None and p.context_token.shape == (512,)
