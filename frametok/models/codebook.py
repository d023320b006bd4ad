"""Grid hard tokens: a codebook (k-means centroids over an encoder's patch tokens) that turns each patch
token into a discrete code, and the histogram of a frame's codes.

A codebook is two files: ``NAME.npy``, the ``(k, D)`` float32 centroids (unit length), and ``NAME.json``, its
manifest (:class:`CodebookManifest`: the encoder model id it belongs to, ``k``, ``D``, the ``.npy``'s sha256,
how it was fitted). A code is the index of the centroid nearest a token by cosine (``argmax`` of the dot
product of the unit token with the unit centroids), so codes live in ``[0, k)``; on the wire they are
``int16`` (protocol 1.2, ``codes``), hence ``k <= 32768``.

:func:`fit_codebook` (``frametok codebook fit``) runs scikit-learn's ``MiniBatchKMeans`` (the ``codebook``
extra) over the L2-normalised patch tokens of frames sampled from videos; assigning codes at runtime needs
numpy alone.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, ModelError
from .manifest import EncoderManifest, file_sha256

__all__ = ["CODEBOOK_SCHEMA_VERSION", "MAX_CODES", "Codebook", "CodebookManifest", "code_counts", "code_histogram",
           "codebook_paths", "fit_codebook", "load_codebook"]

CODEBOOK_SCHEMA_VERSION = 1
MAX_CODES = 1 << 15  # codes travel as int16: 0 .. 32767


class CodebookManifest(BaseModel):
    """The sidecar ``NAME.json`` of a codebook's ``NAME.npy``."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = 1
    kind: Literal["codebook"] = "codebook"
    name: str = Field(min_length=1)
    codes_file: str = Field(min_length=1, description="the (k, D) float32 centroids, relative to this file")
    codes_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    encoder: str = Field(min_length=1, description="the model id (name@sha256[:12]) of the encoder it belongs to")
    k: int = Field(ge=2, le=MAX_CODES)
    embed_dim: int = Field(gt=0)
    metric: Literal["cosine"] = "cosine"
    fit: dict[str, Any] = Field(default_factory=dict, description="how it was fitted (videos, frames, tokens, ...)")

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.codes_sha256[:12]}"


def codebook_paths(path: str | Path) -> tuple[Path, Path]:
    """``(NAME.npy, NAME.json)`` for a codebook given as ``NAME``, ``NAME.npy`` or ``NAME.json``."""
    path = Path(path).expanduser()
    stem = path.with_suffix("") if path.suffix in (".npy", ".json") else path
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


class Codebook:
    """Centroids and manifest; :meth:`assign` maps patch tokens to codes."""

    def __init__(self, manifest: CodebookManifest, centroids: NDArray[np.float32], path: Path | None = None) -> None:
        if centroids.shape != (manifest.k, manifest.embed_dim):
            raise ModelError(f"codebook {path or manifest.name}: centroids {centroids.shape}, its manifest says "
                             f"({manifest.k}, {manifest.embed_dim})")
        self.manifest = manifest
        self.path = path
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        self.centroids: NDArray[np.float32] = (centroids / np.maximum(norms, 1e-12)).astype(np.float32)

    @property
    def k(self) -> int:
        return self.manifest.k

    def check_encoder(self, encoder: EncoderManifest) -> None:
        """A ModelError unless this codebook was fitted on ``encoder``'s tokens (same model id and D)."""
        m = self.manifest
        if m.encoder != encoder.model_id or m.embed_dim != encoder.embed_dim:
            raise ModelError(f"codebook {self.path or m.name} belongs to encoder {m.encoder} (D {m.embed_dim}), "
                             f"not {encoder.model_id} (D {encoder.embed_dim}): fit one for this encoder with "
                             "`frametok codebook fit VIDEO --encoder ...`")

    def assign(self, tokens: NDArray[np.floating]) -> NDArray[np.int16]:
        """Codes ``(...)`` of tokens ``(..., D)``: the nearest centroid by cosine (ties: the lowest code)."""
        if tokens.shape[-1] != self.manifest.embed_dim:
            raise ModelError(f"codebook {self.path or self.manifest.name}: tokens of {tokens.shape[-1]} values, "
                             f"it was fitted on {self.manifest.embed_dim}")
        flat = tokens.reshape(-1, tokens.shape[-1]).astype(np.float32, copy=False)
        scores = flat @ self.centroids.T  # the token's norm does not change its argmax
        return np.asarray(scores.argmax(axis=1), np.int16).reshape(tokens.shape[:-1])


def code_histogram(codes: NDArray[np.integer[Any]], k: int) -> NDArray[np.float32]:
    """How often each of the ``k`` codes occurs in ``codes``, as shares summing to 1 (all zero when empty)."""
    counts = np.bincount(np.asarray(codes, np.int64).reshape(-1), minlength=k)[:k].astype(np.float32)
    total = float(counts.sum())
    return counts / total if total else counts


def code_counts(codes: NDArray[np.integer[Any]], k: int | None = None) -> NDArray[np.int32]:
    """How many cells of ``codes`` hold each code: ``k`` counts, or (``k`` None) counts of codes 0 up to the
    highest one present (what the index stores: a subscriber knows the codes, not always ``k``)."""
    flat = np.asarray(codes, np.int64).reshape(-1)
    counts = np.bincount(flat, minlength=k or 0)
    return np.asarray(counts[:k] if k else counts, np.int32)


@functools.lru_cache(maxsize=8)
def _load(npy: Path, manifest_path: Path, mtime_ns: int) -> Codebook:
    try:
        manifest = CodebookManifest.model_validate(json.loads(manifest_path.read_text()))
    except FileNotFoundError as exc:
        raise ConfigError(f"codebook manifest not found: {manifest_path}") from exc
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(f"codebook manifest {manifest_path} is invalid: {exc}") from exc
    data = manifest_path.parent / manifest.codes_file
    if not data.is_file():
        raise ConfigError(f"codebook {manifest_path}: its centroids file {data} is missing")
    digest = file_sha256(data)
    if digest != manifest.codes_sha256:
        raise ConfigError(f"codebook {data}: sha256 {digest[:12]}... does not match its manifest "
                          f"({manifest.codes_sha256[:12]}...)")
    try:
        centroids = np.load(data, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"codebook {data} is not a readable .npy: {exc}") from exc
    return Codebook(manifest, np.asarray(centroids, np.float32), manifest_path)


def load_codebook(path: str | Path) -> Codebook:
    """The codebook at ``path`` (``NAME``, ``NAME.npy`` or ``NAME.json``), its sha256 checked; cached per file."""
    npy, manifest_path = codebook_paths(path)
    try:
        mtime = manifest_path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"codebook manifest not found: {manifest_path}") from exc
    return _load(npy.resolve(), manifest_path.resolve(), mtime)


# --------------------------------------------------------------------------- fitting


def _unit_tokens(frames_by_video: Mapping[str, Sequence[NDArray[np.uint8]]], encoder: Any,
                 batch: int) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Unit patch tokens ``(frames x gh x gw, D)`` of the frames, and what they came from."""
    chunks: list[NDArray[np.float32]] = []
    for video, frames in frames_by_video.items():
        if not frames:
            raise ConfigError(f"codebook fit: no frames from {video}")
        for i in range(0, len(frames), batch):
            patches = encoder(list(frames[i:i + batch])).patches
            flat = patches.reshape(-1, patches.shape[-1]).astype(np.float32)
            chunks.append(flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12))
    if not chunks:
        raise ConfigError("codebook fit: no videos")
    tokens = np.concatenate(chunks)
    used = {video: len(frames) for video, frames in frames_by_video.items()}
    return tokens, {"videos": used, "frames": sum(used.values()), "tokens": int(tokens.shape[0])}


def fit_codebook(frames_by_video: Mapping[str, Sequence[NDArray[np.uint8]]], encoder: Any, out: str | Path, *,
                 k: int = 256, seed: int = 0, batch: int = 4) -> Codebook:
    """Fit a ``k``-code codebook on the patch tokens ``encoder`` (a :class:`~frametok.models.encoder.Encoder`)
    gives for the RGB frames of each video (``frametok codebook fit`` samples them evenly over each video);
    write ``out`` (``NAME.npy`` and ``NAME.json``) and return it."""
    try:
        import sklearn
        from sklearn.cluster import MiniBatchKMeans
    except ImportError as exc:
        raise ConfigError("frametok codebook fit needs scikit-learn: pip install 'frametok[codebook]'") from exc
    if not 2 <= k <= MAX_CODES:
        raise ConfigError(f"codebook fit: k must be 2 to {MAX_CODES} (codes travel as int16), got {k}")
    tokens, fit = _unit_tokens(frames_by_video, encoder, batch)
    if tokens.shape[0] < k:
        raise ConfigError(f"codebook fit: {tokens.shape[0]} patch tokens for {k} codes; give more frames or videos")
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=max(1024, 4 * k), n_init=3,
                             max_iter=100)
    kmeans.fit(tokens)
    centroids = np.asarray(kmeans.cluster_centers_, np.float32)
    npy, manifest_path = codebook_paths(out)
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, centroids, allow_pickle=False)
    codebook_name = manifest_path.stem
    manifest = CodebookManifest(
        name=codebook_name, codes_file=npy.name, codes_sha256=file_sha256(npy), encoder=encoder.manifest.model_id,
        k=k, embed_dim=int(centroids.shape[1]),
        fit={**fit, "algorithm": "sklearn.cluster.MiniBatchKMeans on unit tokens", "sklearn": sklearn.__version__,
             "seed": seed, "inertia": float(kmeans.inertia_),
             "codes_used": int(np.unique(kmeans.labels_).size)},
    )
    manifest_path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return load_codebook(manifest_path)
