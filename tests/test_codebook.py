"""Grid hard tokens: a codebook fitted on DINOv2's patch tokens of vtest frames (the real
encoder from ../shared/models), codes on the wire (protocol 1.2: ``codes``, ``code_index``, ``code_values``,
int16), both decode paths, the Subscriber's rebuilt code grid, and a run that publishes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from frametok.errors import ConfigError, ModelError, ProtocolError
from frametok.grid import GridDecompressor, GridUpdate
from frametok.models.codebook import Codebook, code_histogram, codebook_paths, fit_codebook, load_codebook
from frametok.models.encoder import Encoder
from frametok.models.session import create_session
from frametok.packet import TokenPacket, decode, encode
from frametok.packet._decode import _decode_reference
from frametok.packet._fast import _decode_fast
from frametok.registry import resolve_model
from frametok.streamer.source.decode import decode_frames

from .conftest import run_cli, start_cli

K = 32


@pytest.fixture(scope="module")
def encoder(shared_models: Path) -> Encoder:
    files = resolve_model("dinov2_vits14", "encoder", [shared_models], allow_online=False)
    return Encoder(files.manifest, create_session(files, ("cpu",), threads=2))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def frames(shared_media: Path) -> list[np.ndarray]:
    return [f.frame_rgb for f in decode_frames(str(shared_media / "vtest_small_3s.mp4"))]


@pytest.fixture(scope="module")
def codebook(encoder: Encoder, frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Codebook:
    pytest.importorskip("sklearn", reason="codebook fit needs scikit-learn (pip install 'frametok[codebook]')")
    out = tmp_path_factory.mktemp("codebook") / "vtest32"
    return fit_codebook({"vtest_small_3s.mp4": frames[::4]}, encoder, out, k=K, seed=0)


def test_fit_writes_a_manifest(codebook: Codebook, encoder: Encoder) -> None:
    m = codebook.manifest
    assert (m.k, m.embed_dim, m.encoder, m.kind) == (K, 384, encoder.manifest.model_id, "codebook")
    npy, manifest = codebook_paths(codebook.path)  # type: ignore[arg-type]
    assert npy.exists() and manifest.exists() and m.codes_file == npy.name
    from frametok.models.manifest import file_sha256

    assert m.codes_sha256 == file_sha256(npy)
    assert m.fit["frames"] == 8 and m.fit["tokens"] == 8 * 256 and m.fit["codes_used"] >= K // 2
    assert np.allclose(np.linalg.norm(codebook.centroids, axis=1), 1.0, atol=1e-5)
    codebook.check_encoder(encoder.manifest)
    other = encoder.manifest.model_copy(update={"onnx_sha256": "0" * 64})
    with pytest.raises(ModelError, match="belongs to encoder dinov2_vits14@"):
        codebook.check_encoder(other)


def test_codes_of_frames(codebook: Codebook, encoder: Encoder, frames: list[np.ndarray]) -> None:
    patches = encoder([frames[0], frames[0], frames[1]]).patches
    codes = codebook.assign(patches)
    assert codes.shape == (3, 16, 16) and codes.dtype == np.int16
    assert int(codes.min()) >= 0 and int(codes.max()) < K
    assert (codes[0] == codes[1]).all()
    # the nearest centroid by cosine, checked the slow way
    flat = patches[2].reshape(-1, 384)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    assert (np.argmax(unit @ codebook.centroids.T, axis=1) == codes[2].reshape(-1)).all()
    # a static camera: most cells keep their code from one frame to the next (about 90% measured)
    assert (codes[0] == codes[2]).mean() > 0.6
    hist = code_histogram(codes[0], K)
    assert hist.shape == (K,) and abs(float(hist.sum()) - 1.0) < 1e-6


def test_a_changed_codebook_file_is_refused(codebook: Codebook, tmp_path: Path) -> None:
    npy, manifest = codebook_paths(codebook.path)  # type: ignore[arg-type]
    copy = tmp_path / "c.json"
    copy.write_text(manifest.read_text())
    np.save(tmp_path / npy.name, np.zeros((K, 384), np.float32))
    with pytest.raises(ConfigError, match="does not match its manifest"):
        load_codebook(copy)


# --------------------------------------------------------------------------- on the wire


def _frame(update: GridUpdate | None = None, **kw: Any) -> TokenPacket:
    return TokenPacket("cam", 3, 0.1, (64, 48), grid_update=update, seq=7, **kw)


def _both(parts: list[Any]) -> TokenPacket:
    ref, fast = _decode_reference(parts), _decode_fast(parts)
    assert isinstance(ref, TokenPacket) and isinstance(fast, TokenPacket)
    for a, b in ((ref, fast), (ref.grid_update, fast.grid_update)):
        for name in ("code_grid", "codes", "code_index", "code_values"):
            x, y = getattr(a, name, None), getattr(b, name, None)
            assert (x is None) == (y is None), name
            if x is not None:
                assert x.dtype == y.dtype and np.array_equal(x, y), name
    return ref


def test_codes_roundtrip_both_decoders() -> None:
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((4, 5, 8)).astype(np.float16)
    codes = rng.integers(0, 300, (4, 5)).astype(np.int16)
    key = GridUpdate("key", 0, (4, 5), values=grid, codes=codes)
    got = _both(encode(_frame(key)))
    assert got.code_grid is not None and np.array_equal(got.code_grid, codes)
    names = [b["name"] for b in json.loads(encode(_frame(key))[1])["buffers"]]
    assert names == ["patches", "codes"]
    index = np.array([1, 7], np.int32)
    delta = GridUpdate("delta", 1, (4, 5), index=index, values=grid.reshape(20, 8)[index],
                       code_index=np.array([3], np.int32), code_values=np.array([299], np.int16))
    got = _both(encode(_frame(delta)))
    assert got.code_grid is None and got.grid_update is not None
    assert got.grid_update.code_index.tolist() == [3] and got.grid_update.code_values.tolist() == [299]  # type: ignore[union-attr]
    whole = _both(encode(_frame(None, patch_tokens=grid, code_grid=codes)))  # no grid field: sent whole
    assert np.array_equal(whole.code_grid, codes)  # type: ignore[arg-type]
    # rebuilt like the patch grid
    dec = GridDecompressor()
    dec.apply(key)
    dec.apply(delta)
    want = codes.copy()
    want.reshape(-1)[3] = 299
    assert np.array_equal(dec.code_grid(), want)  # type: ignore[arg-type]
    dec.apply(GridUpdate("key", 2, (4, 5), values=grid))  # a joiner's key without codes
    assert dec.code_grid() is None
    dec.apply(GridUpdate("delta", 3, (4, 5), index=index, values=grid.reshape(20, 8)[index], codes=codes))
    assert np.array_equal(dec.code_grid(), codes)  # type: ignore[arg-type]


def _with_buffers(parts: list[Any], header: dict[str, Any], extra: dict[str, np.ndarray]) -> list[Any]:
    for name, arr in extra.items():
        header["buffers"].append({"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape)})
        parts.append(arr.tobytes())
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


@pytest.mark.parametrize("case", ["skip_with_codes", "index_without_grid", "negative", "shape", "key_index",
                                  "uint16", "values_alone"])
def test_bad_codes_are_refused_by_both(case: str) -> None:
    grid = np.zeros((4, 5, 8), np.float16)
    codes = np.zeros((4, 5), np.int16)
    if case == "skip_with_codes":
        parts = [bytes(p) for p in encode(_frame(GridUpdate("skip", 1, (4, 5))))]
        extra = {"codes": codes}
    elif case == "index_without_grid":
        parts = [bytes(p) for p in encode(_frame(None, patch_tokens=grid))]
        extra = {"code_index": np.zeros(1, np.int32), "code_values": np.zeros(1, np.int16)}
    elif case == "negative":
        parts = [bytes(p) for p in encode(_frame(GridUpdate("key", 0, (4, 5), values=grid)))]
        extra = {"codes": np.full((4, 5), -1, np.int16)}
    elif case == "shape":
        parts = [bytes(p) for p in encode(_frame(GridUpdate("key", 0, (4, 5), values=grid)))]
        extra = {"codes": np.zeros((5, 4), np.int16)}
    elif case == "key_index":
        parts = [bytes(p) for p in encode(_frame(GridUpdate("key", 0, (4, 5), values=grid)))]
        extra = {"code_index": np.zeros(1, np.int32), "code_values": np.zeros(1, np.int16)}
    elif case == "uint16":  # not a v1 dtype
        parts = [bytes(p) for p in encode(_frame(GridUpdate("key", 0, (4, 5), values=grid)))]
        extra = {"codes": np.zeros((4, 5), np.uint16)}
    else:
        delta = GridUpdate("delta", 1, (4, 5), index=np.zeros(0, np.int32), values=np.zeros((0, 8), np.float16))
        parts = [bytes(p) for p in encode(_frame(delta))]
        extra = {"code_values": np.zeros(1, np.int16)}
    bad = _with_buffers(parts, json.loads(parts[1]), extra)
    with pytest.raises(ProtocolError):
        _decode_reference(bad)
    with pytest.raises(ProtocolError):
        decode(bad)


# --------------------------------------------------------------------------- a run


def _config(tmp_path: Path, video: Path, models: Path, endpoint: str, codebook: str) -> Path:
    cfg = {
        "sources": [{"id": "v", "uri": str(video)}],
        "detector": None,
        "encoder": {"model": "dinov2_vits14", "tau": 0.05, "keyframe_interval": 0, "codebook": codebook},
        "publisher": {"endpoint": endpoint, "wait_subscribers": 1},
        "models_dir": str(models),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_publishes_code_grids(codebook: Codebook, encoder: Encoder, frames: list[np.ndarray], tmp_path: Path,
                                  shared_media: Path, shared_models: Path, endpoint: str) -> None:
    from frametok import Subscriber

    config = _config(tmp_path, shared_media / "vtest_small_3s.mp4", shared_models, endpoint, str(codebook.path))
    proc = start_cli("run", str(config), "--no-progress")
    try:
        with Subscriber(endpoint, timeout_s=120) as sub:
            packets = [m for m in sub if isinstance(m, TokenPacket)]
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert len(packets) == 30
    updates = [p.grid_update for p in packets]
    assert updates[0] is not None and updates[0].codes is not None
    changed = [len(u.code_index) for u in updates[1:] if u is not None and u.code_index is not None]
    assert len(changed) >= 25 and sum(changed) < 0.5 * 29 * 256, "only the cells whose code changed travel"
    truth = codebook.assign(encoder(frames).patches)
    agree = [float((p.code_grid == truth[p.frame_index]).mean()) for p in packets if p.code_grid is not None]
    assert len(agree) == 30 and min(agree) >= 0.97, agree  # the worker's batches differ from ours in the last bits


def test_run_refuses_a_codebook_of_another_encoder(codebook: Codebook, tmp_path: Path, shared_media: Path,
                                                   shared_models: Path) -> None:
    npy, manifest = codebook_paths(codebook.path)  # type: ignore[arg-type]
    data = json.loads(manifest.read_text())
    data["encoder"] = "vit_tiny@000000000000"
    (tmp_path / "other.json").write_text(json.dumps(data))
    (tmp_path / npy.name).write_bytes(npy.read_bytes())
    config = _config(tmp_path, shared_media / "vtest_small_3s.mp4", shared_models, "tcp://127.0.0.1:*",
                     str(tmp_path / "other.json"))
    result = run_cli("run", str(config), "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "belongs to encoder vit_tiny@000000000000" in result.stderr and "Traceback" not in result.stderr
