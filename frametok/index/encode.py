"""The stream's encoder, loaded again (through the model registry) to encode query images and crops: an
encoder of its own, or with ``encoder: {model: detector}`` the detector and its neck output (:class:`NeckEncoder`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, ModelError
from ..models.detector import Detector
from ..models.encoder import Encoder
from ..models.manifest import DetectorManifest
from ..models.neck import NeckReader
from ..models.session import ModelFiles, Precision

__all__ = ["NeckEncoder", "QueryEncoder", "QueryVectors", "embed_dim", "encode_images", "load_encoder",
           "load_neck_encoder", "load_query_encoder", "neck_encoder", "read_image", "soft_token_ref", "unit"]

NECK_REF = "detector:"  # a video's ``encoder`` ref for soft tokens from its detector's neck: ``detector:REF``
_RECORDED_PRECISION: dict[str, Precision] = {"fp16": "fp16", "int8": "int8"}  # stream info's precision: the graph


def unit(x: NDArray[np.floating]) -> NDArray[np.float32]:
    x32 = np.asarray(x, np.float32)
    out: NDArray[np.float32] = x32 / np.maximum(np.linalg.norm(x32, axis=-1, keepdims=True), 1e-12)
    return out


@dataclass(frozen=True)
class QueryVectors:
    """Unit vectors of images: ``context`` (the encoder's context token) and ``mean`` (mean patch token,
    the space of 1x1 content tokens), each (B, D)."""

    context: NDArray[np.float32]
    mean: NDArray[np.float32]


class NeckEncoder:
    """The detector's neck as the encoder of an index made with ``encoder: {model: detector}``: each image goes
    through the detector as the index's frames did (its letterbox, rect or square, one run an image: a rect
    input follows the image's aspect), and its neck map over the image is its soft tokens (context: the mean of
    the cropped grid, :func:`~frametok.models.neck.neck_grid`)."""

    def __init__(self, reader: NeckReader) -> None:
        self.reader = reader

    @property
    def embed_dim(self) -> int:
        return self.reader.embed_dim

    def encode(self, images_rgb: Sequence[NDArray[np.uint8]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Each image's context token and mean patch token, (B, C) each (one token: the grid's mean)."""
        det = self.reader.detector
        contexts = np.zeros((len(images_rgb), self.embed_dim), np.float32)
        for i, image in enumerate(images_rgb):
            batch = np.empty((1, 3, *det.input_hw_for((image.shape[0], image.shape[1]))), np.float32)
            info = det.preprocess(image, batch[0])
            contexts[i] = self.reader.grid(self.reader.infer(batch).maps[0], info)[0]
        return contexts, contexts.copy()


QueryEncoder: TypeAlias = Encoder | NeckEncoder


def embed_dim(encoder: QueryEncoder) -> int:
    """The token size of ``encoder``'s soft tokens."""
    return encoder.embed_dim if isinstance(encoder, NeckEncoder) else int(encoder.manifest.embed_dim)


def soft_token_ref(config: Any) -> str:
    """What a video's ``encoder`` column keeps of a run config's soft tokens: the encoder as configured (a
    registry name or path), ``detector:REF`` for the detector ``REF``'s neck (``encoder.model: detector``), or
    "" without soft tokens."""
    enc = config.encoder
    if enc is None:
        return ""
    if enc.from_detector and config.detector is not None:
        return f"{NECK_REF}{config.detector.model}"
    return str(enc.model)


def load_query_encoder(video: dict[str, Any], models_dirs: Sequence[str] = ()) -> QueryEncoder:
    """The model that made a ``videos`` row's soft tokens, on CPU, to encode images as its frames were."""
    models = json.loads(video["models"] or "{}")
    info = models.get("encoder") or {}
    ref = str(video["encoder"] or "")
    if info.get("output_layout") == "neck" or ref.startswith(NECK_REF):
        det = models.get("detector") or {}
        name = ref[len(NECK_REF):] if ref.startswith(NECK_REF) else str(det.get("name", ""))
        return load_neck_encoder(name, models_dirs, info, det.get("id"))
    return load_encoder(ref or str(info.get("name", "")), models_dirs, info.get("id"))


def load_neck_encoder(ref: str, models_dirs: Sequence[str] = (), info: dict[str, Any] | None = None,
                      expect_id: str | None = None) -> NeckEncoder:
    """The detector ``ref`` (registry name or path) with its neck output on CPU, set up as the stream ``info``
    (its ``encoder`` entry) says its frames were: the graph's precision, the rect letterbox, the crop; ``expect_id``:
    the detector's model id the index was made with (other weights give tokens in another space: an error)."""
    from ..registry import resolve_model

    info = info or {}
    neck = info.get("neck") or {}
    files = resolve_model(ref, "detector", tuple(models_dirs))
    man = files.manifest
    if expect_id and man.model_id != expect_id:
        raise ModelError(f"detector {ref} resolves to {man.model_id}, the index was made with {expect_id}; "
                         "give the same model (--models DIR)")
    if not isinstance(man, DetectorManifest) or man.neck is None:
        raise ModelError(f"detector {ref} ({files.manifest_path}) has no neck output in its manifest; the index's "
                         "soft tokens came from one (give the model the index was made with: --models DIR)")
    if neck.get("level") not in (None, man.neck.level):
        raise ModelError(f"detector {ref}: its neck output is {man.neck.level}, the index was made with "
                         f"{neck['level']}; give the model the index was made with (--models DIR)")
    return neck_encoder(files, info)


def neck_encoder(files: ModelFiles, info: dict[str, Any] | None = None) -> NeckEncoder:
    """The detector of ``files`` with its neck output on CPU, set up as the stream ``info`` (its ``encoder``
    entry) says its frames ran: the graph's precision, the rect letterbox (absent: the detector's default), the
    crop."""
    from ..models.session import create_session
    from ..streamer.worker.models import detector_rect

    info = info or {}
    neck = info.get("neck") or {}
    man = files.manifest
    if not isinstance(man, DetectorManifest):
        raise ModelError(f"model {files.manifest_path} is a {man.kind}, not a detector")
    precision = _RECORDED_PRECISION.get(str(info.get("precision")), "fp32")
    rect = neck.get("rect")
    rect = detector_rect(None, files) if rect is None else bool(rect)
    detector = Detector(man, create_session(files, ("cpu",), precision=precision), rect=rect)
    return NeckEncoder(NeckReader(detector, crop=bool(neck.get("crop", True))))


def load_encoder(ref: str, models_dirs: Sequence[str] = (), expect_id: str | None = None) -> Encoder:
    """The encoder ``ref`` (registry name or path) on CPU; ``expect_id``: the model id the index was made
    with (other weights give tokens in another space: an error)."""
    from ..models.session import create_session
    from ..registry import resolve_model

    if not ref:
        raise ConfigError("this index has no soft tokens (it was made with --encoder none): no image search")
    files = resolve_model(ref, "encoder", tuple(models_dirs))
    if expect_id and files.manifest.model_id != expect_id:
        raise ModelError(
            f"encoder {ref} resolves to {files.manifest.model_id}, the index was made with {expect_id}; "
            "give the same model (--models DIR)"
        )
    return Encoder(files.manifest, create_session(files, ("cpu",)))  # type: ignore[arg-type]


def encode_images(encoder: QueryEncoder, images_rgb: Sequence[NDArray[np.uint8]], batch: int = 8) -> QueryVectors:
    contexts, means = [], []
    for i in range(0, len(images_rgb), batch):
        if isinstance(encoder, NeckEncoder):
            context, mean = encoder.encode(images_rgb[i : i + batch])
        else:
            out = encoder(images_rgb[i : i + batch])
            context, mean = out.context, out.patches.mean(axis=(1, 2))
        contexts.append(context)
        means.append(mean)
    dim = embed_dim(encoder)
    if not contexts:
        return QueryVectors(np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32))
    return QueryVectors(unit(np.concatenate(contexts)), unit(np.concatenate(means)))


def read_image(path: str | Path, crop_xyxy: Sequence[int] | None = None) -> NDArray[np.uint8]:
    """An RGB image file, optionally cropped to ``crop_xyxy`` (pixels); errors name the file and crop."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"cannot read image {path}")
    if crop_xyxy is not None:
        x1, y1, x2, y2 = (int(v) for v in crop_xyxy)
        h, w = bgr.shape[:2]
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise ConfigError(f"crop {list(crop_xyxy)} lies outside the {w}x{h} image {path}")
        bgr = bgr[y1:y2, x1:x2]
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
