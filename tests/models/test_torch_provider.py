"""The torch execution provider (frametok/models/torch_session.py) against onnxruntime: the real YOLOv8n and
DINOv2 from ../shared on real photos, through the same Detector/Encoder, on this machine's CPU.

Gates (the fp32 ones): detector raw outputs close; after NMS the same detections both ways (class, IoU >= 0.9,
score within 0.02), and the reference finds the bus and the people; encoder tokens cosine >= 0.999 each.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from frametok.errors import ModelError
from frametok.exporters._common import box_iou
from frametok.models import torch_session
from frametok.models.detector import Detector
from frametok.models.encoder import Encoder
from frametok.models.session import ModelFiles, SessionRunner, create_session
from frametok.packet import Detections
from frametok.registry import resolve_model

PHOTOS = ("bus.jpg", "zidane.jpg")
_WHY = torch_session.torch_available()
needs_torch = pytest.mark.skipif(_WHY is not None, reason=f"torch provider unavailable: {_WHY}")


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def det_files(shared_models: Path) -> ModelFiles:
    return resolve_model("yolov8n", "detector", [shared_models], allow_online=False)


@pytest.fixture(scope="module")
def enc_files(shared_models: Path) -> ModelFiles:
    return resolve_model("dinov2_vits14", "encoder", [shared_models], allow_online=False)


@pytest.fixture(scope="module")
def detectors(det_files: ModelFiles) -> tuple[Detector, Detector]:
    """(onnxruntime CPU, torch provider) on the same weights."""
    if _WHY is not None:
        pytest.skip(f"torch provider unavailable: {_WHY}")
    ort = Detector(det_files.manifest, create_session(det_files, ("cpu",), threads=2))  # type: ignore[arg-type]
    pt = Detector(det_files.manifest, create_session(det_files, ("torch",), threads=2))  # type: ignore[arg-type]
    return ort, pt


@pytest.fixture(scope="module")
def encoders(enc_files: ModelFiles) -> tuple[Encoder, Encoder]:
    if _WHY is not None:
        pytest.skip(f"torch provider unavailable: {_WHY}")
    ort = Encoder(enc_files.manifest, create_session(enc_files, ("cpu",), threads=2))  # type: ignore[arg-type]
    pt = Encoder(enc_files.manifest, create_session(enc_files, ("torch",), threads=2))  # type: ignore[arg-type]
    return ort, pt


def _twins(ref: Detections, other: Detections) -> list[tuple[int, float, float]]:
    """For each detection of ``ref``: (class, best IoU with a same-class detection of ``other``, |score diff|)."""
    out = []
    for box, cls, score in zip(ref.xyxy, ref.class_id, ref.score, strict=True):
        same = np.flatnonzero(other.class_id == cls)
        if not len(same):
            out.append((int(cls), 0.0, 1.0))
            continue
        ious = box_iou(box[None], other.xyxy[same])[0]
        best = int(np.argmax(ious))
        out.append((int(cls), float(ious[best]), abs(float(score) - float(other.score[same[best]]))))
    return out


@needs_torch
def test_session_interface_matches_onnxruntime(detectors: tuple[Detector, Detector],
                                               encoders: tuple[Encoder, Encoder]) -> None:
    for ort, pt in (detectors, encoders):
        for mine, theirs in ((pt.session.get_inputs(), ort.session.get_inputs()),
                             (pt.session.get_outputs(), ort.session.get_outputs())):
            assert [(a.name, list(a.shape), a.type) for a in mine] == \
                   [(a.name, list(a.shape), a.type) for a in theirs]
        assert pt.session.get_providers() == ["torch:cpu"]  # no GPU on this machine
        assert pt.precision == "fp32"
        assert not SessionRunner(pt.session, pt.manifest.input_name, pt.manifest.output_name).bound


@needs_torch
def test_detector_parity_on_photos(detectors: tuple[Detector, Detector], shared_media: Path) -> None:
    ort, pt = detectors
    names = ort.manifest.class_names
    for photo in PHOTOS:
        img = _rgb(shared_media / photo)
        h, w = ort.input_hw
        batch = np.empty((1, 3, h, w), np.float32)
        info = ort.preprocess(img, batch[0])
        raw_ort, raw_pt = ort.infer(batch), pt.infer(batch)
        assert raw_pt.shape == raw_ort.shape and raw_pt.dtype == np.float32
        # boxes in input pixels (0..640), class scores in 0..1
        np.testing.assert_allclose(raw_pt[:, :4], raw_ort[:, :4], atol=0.05, rtol=1e-4)
        np.testing.assert_allclose(raw_pt[:, 4:], raw_ort[:, 4:], atol=1e-3)
        a, b = ort.postprocess(raw_ort[0], info), pt.postprocess(raw_pt[0], info)
        found = [names[c] for c in a.class_id]
        want = {"bus.jpg": ("bus", 3), "zidane.jpg": ("tie", 2)}[photo]
        assert want[0] in found and found.count("person") >= want[1], (photo, found)  # the reference finds boxes
        assert len(a) == len(b), (photo, len(a), len(b))
        for twins in (_twins(a, b), _twins(b, a)):
            for cls, iou, dscore in twins:
                assert iou >= 0.9 and dscore <= 0.02, (photo, names[cls], iou, dscore)


@needs_torch
def test_encoder_parity_on_photos(encoders: tuple[Encoder, Encoder], shared_media: Path) -> None:
    ort, pt = encoders
    h, w = ort.input_hw
    batch = np.empty((len(PHOTOS), 3, h, w), np.float32)
    for i, photo in enumerate(PHOTOS):
        ort.preprocess(_rgb(shared_media / photo), batch[i])
    a, b = ort.infer(batch), pt.infer(batch)  # (B, 1 + 256, 384): CLS and patch tokens
    assert a.shape == b.shape == (len(PHOTOS), 257, 384)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert float(cos.min()) >= 0.999, float(cos.min())
    split_a, split_b = ort.split(a), pt.split(b)
    np.testing.assert_allclose(split_b.context, split_a.context, atol=2e-3, rtol=1e-3)


# --- provider choice: no torch needed (torch_available is replaced) ---


def test_torch_missing_falls_back_on_the_next_providers(det_files: ModelFiles, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch_session, "torch_available", lambda: "no torch here (test)")
    with caplog.at_level(logging.WARNING, logger="frametok.models.session"):
        session = create_session(det_files, ("torch", "cpu"), threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "no torch here (test)" in caplog.text and "falling back on providers cpu" in caplog.text


def test_torch_alone_without_torch_is_an_error(det_files: ModelFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_session, "torch_available", lambda: "no torch here (test)")
    with pytest.raises(ModelError, match=r"detector yolov8n: no torch here \(test\)"):
        create_session(det_files, ("torch",), threads=1)
