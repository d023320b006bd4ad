"""The detector's neck as the soft-token grid, with the real YOLOv8n (yolov8n_coco.pt): the export adds the P5 map
as an output and leaves the detection output bit for bit as it was, the map is PyTorch's head input, one session
run gives both, the grid is cropped to the cells over the image, and a config asking for it without a neck output
is refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frametok.config import Config, parse_config
from frametok.errors import ConfigError, ExportError
from frametok.models.detector import Detector, LetterboxInfo, letterbox_into
from frametok.models.manifest import DetectorManifest
from frametok.models.neck import NeckReader, image_cells, neck_grid
from frametok.models.session import ModelFiles, create_session
from frametok.streamer.source.decode import decode_frames
from frametok.streamer.worker.models import prepare_models


@pytest.fixture(scope="session")
def neck_yolo(dynamic_yolo: ModelFiles, tmp_path_factory: pytest.TempPathFactory, shared_models: Path) -> ModelFiles:
    """The session's dynamic YOLOv8n export with its P5 map added as an output (a copy: the fixture stays as it is)."""
    from frametok.exporters.neck import add_neck

    return add_neck(dynamic_yolo, "P5", weights=shared_models / "yolov8n_coco.pt",
                    out_dir=tmp_path_factory.mktemp("yolo-neck"), name="yolov8n_neck")


def _frames(shared_media: Path, n: int) -> list[np.ndarray]:
    return [f.frame_rgb for f, _ in zip(decode_frames(str(shared_media / "vtest_small_3s.mp4")), range(n),
                                         strict=False)]


def test_export_adds_p5_and_keeps_the_detections(neck_yolo: ModelFiles, dynamic_yolo: ModelFiles) -> None:
    man = neck_yolo.manifest
    assert isinstance(man, DetectorManifest) and man.neck is not None
    assert (man.neck.output_name, man.neck.level, man.neck.channels, man.neck.stride) == ("neck_p5", "P5", 256, 32)
    assert man.onnx_sha256 != dynamic_yolo.manifest.onnx_sha256 and man.dynamic_hw
    parity = man.parity["neck"]  # type: ignore[index]
    assert parity["detection_max_abs_diff_square"] == 0.0 and parity["detection_max_abs_diff_rect"] == 0.0
    assert parity["feature_shape_square"] == [1, 256, 20, 20]
    assert parity["feature_shape_rect"] == [1, 256, 20, 15]  # bus.jpg (810x1080, portrait) at 640x480 rect
    torch = parity["torch"]
    assert torch["ref_max_abs"] > 1.0 and torch["relative"] < 1e-4, torch  # a real map, as PyTorch's hook saw it
    assert dynamic_yolo.manifest.neck is None  # the source export untouched


def test_export_names_the_levels_it_has(dynamic_yolo: ModelFiles, tmp_path: Path) -> None:
    from frametok.exporters.neck import add_neck

    with pytest.raises(ExportError, match=r"no head input at P6.*P3 \(stride 8.*P4 \(stride 16.*P5 \(stride 32"):
        add_neck(dynamic_yolo, "P6", out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_one_run_gives_the_same_detections_and_the_map(neck_yolo: ModelFiles, dynamic_yolo: ModelFiles,
                                                       shared_media: Path) -> None:
    """Real vtest frames through NeckReader (one run, both outputs) and the plain Detector of the source export:
    the same raw detection output bit for bit, and boxes found (people walking)."""
    plain = Detector(dynamic_yolo.manifest, create_session(dynamic_yolo, ("cpu",), threads=2),  # type: ignore[arg-type]
                     rect=True)
    det = Detector(neck_yolo.manifest, create_session(neck_yolo, ("cpu",), threads=2), rect=True)  # type: ignore[arg-type]
    reader = NeckReader(det)
    frames = _frames(shared_media, 3)
    shape = det.input_hw_for(frames[0].shape[:2])
    assert shape == (480, 640)
    batch = np.empty((len(frames), 3, *shape), np.float32)
    infos = [det.preprocess(f, batch[i]) for i, f in enumerate(frames)]
    both = reader.infer(batch)
    assert np.array_equal(np.asarray(both.raw), plain.infer(batch))
    assert both.maps.shape == (3, 256, 15, 20)
    boxes = sum(len(det.postprocess(both[i][0], infos[i]).score) for i in range(3))
    assert boxes >= 3
    context, patches = reader.grid(both[0][1], infos[0])
    assert patches.shape == (15, 20, 256) and context.shape == (256,)  # 640x480 input: no padding cell
    assert np.allclose(context, both.maps[0].mean(axis=(1, 2)), atol=1e-5)
    assert float(np.abs(patches).max()) > 0.5  # not an empty map


def test_grid_is_cropped_to_the_image() -> None:
    frame = np.zeros((576, 768, 3), np.uint8)  # vtest.avi's size: 640x480 inside a 640x640 square input
    _, square = letterbox_into(frame, (640, 640))
    assert image_cells(square, (20, 20), 32) == (slice(3, 18), slice(0, 20))  # 80 px of padding top and bottom
    _, rect = letterbox_into(frame, (640, 640), stride=32)
    assert image_cells(rect, (15, 20), 32) == (slice(0, 15), slice(0, 20))
    fmap = np.random.default_rng(0).standard_normal((8, 20, 20)).astype(np.float32)
    context, patches = neck_grid(fmap, square, 32)
    assert patches.shape == (15, 20, 8)
    assert np.array_equal(patches, fmap[:, 3:18].transpose(1, 2, 0))
    assert np.allclose(context, fmap[:, 3:18].mean(axis=(1, 2)), atol=1e-6)
    assert neck_grid(fmap, square, 32, crop=False)[1].shape == (20, 20, 8)
    tall = LetterboxInfo(1.0, (300.0, 0.0), (10, 640), input_hw=(640, 640))  # 10 px wide: still one column
    assert image_cells(tall, (20, 20), 32) == (slice(0, 20), slice(9, 10))


def test_config_without_a_neck_is_refused(dynamic_yolo: ModelFiles, neck_yolo: ModelFiles, tmp_path: Path) -> None:
    def config(detector: ModelFiles | None, **encoder: object) -> Config:
        return parse_config({
            "sources": [{"id": "v", "uri": str(tmp_path / "v.mp4")}],
            "detector": None if detector is None else {"model": str(detector.onnx_path)},
            "encoder": {"model": "detector", **encoder}, "worker": {"providers": ["cpu"]},
        })

    with pytest.raises(ConfigError, match=r"encoder\.model: 'detector'.*yolov8n_coco.*has none.*--neck"):
        prepare_models(config(dynamic_yolo))
    with pytest.raises(ConfigError, match=r"encoder\.model.*detector is null"):
        config(None)
    with pytest.raises(ConfigError, match=r"encoder\.queries"):
        prepare_models(config(neck_yolo, queries=[{"name": "q", "vector": str(tmp_path / "q.npy")}]))
    models = prepare_models(config(neck_yolo))
    assert models.neck and models.encoder is None and models.detector is not None


def test_cli_export_with_neck(shared_models: Path, tmp_path: Path) -> None:
    """``frametok export yolo yolov8n_coco.pt --neck P4 --out DIR``: one model pair, its manifest with the P4 map
    (stride 16, 128 channels for YOLOv8n), checked against PyTorch."""
    pytest.importorskip("ultralytics", reason="needs ultralytics (pip install 'frametok[export]')")
    from frametok.models.session import locate_model

    from ..conftest import run_cli

    done = run_cli("export", "yolo", str(shared_models / "yolov8n_coco.pt"), "--neck", "P4", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "added the neck output neck_p4" in done.stdout
    files = locate_model(tmp_path / "yolov8n_coco.json")
    man = files.manifest
    assert isinstance(man, DetectorManifest) and man.neck is not None
    assert (man.neck.level, man.neck.channels, man.neck.stride) == ("P4", 128, 16)
    assert man.parity["neck"]["torch"]["relative"] < 1e-4  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolov8n_coco.json", "yolov8n_coco.onnx"]
    refused = run_cli("export", "yolo", str(shared_models / "yolov8n_coco.pt"), "--neck", "P5", "--half",
                      "--out", str(tmp_path / "half"))
    assert refused.returncode != 0 and "--neck" in refused.stderr


def test_skip_threshold_is_refused_with_the_neck(synthetic_video: Path, tmp_path: Path) -> None:
    """``encoder.skip_threshold`` skips the encoder on still frames; with the neck the detector runs on every frame
    anyway, so it would save nothing: refused when the config is read, before anything starts, naming the field."""
    from ..conftest import run_cli

    base = {"sources": [{"id": "v", "uri": str(synthetic_video)}], "detector": {"model": "yolov8n"}}
    with pytest.raises(ConfigError, match=r"encoder: .*skip_threshold: 0\.1 has no effect with model 'detector'.*"
                                          r"runs on every frame anyway.*leave it at 0 or name an encoder"):
        parse_config({**base, "encoder": {"model": "detector", "skip_threshold": 0.1}})
    neck = parse_config({**base, "encoder": {"model": "detector", "skip_threshold": 0.0}}).encoder
    assert neck is not None and neck.from_detector
    own = parse_config({**base, "encoder": {"skip_threshold": 0.1}}).encoder
    assert own is not None and own.skip_threshold == 0.1  # an encoder of its own: skipping saves its runs
    config = tmp_path / "neck.yaml"
    config.write_text(f"sources: [{{id: v, uri: '{synthetic_video}'}}]\n"
                      "encoder: {model: detector, skip_threshold: 0.02}\n")
    done = run_cli("run", str(config), timeout=60)
    assert done.returncode != 0 and "skip_threshold: 0.02 has no effect" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and str(config) in done.stderr
