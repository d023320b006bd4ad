"""Image search in an index whose soft tokens came from the detector's neck (``encoder: {model: detector}``), with
the real YOLOv8n exported with its P5 map and a real clip: the query image goes through the index's detector as
the frames did, a frame saved as an image finds itself, an unrelated image does not score like it, the track
crops are embedded by the neck too, and encoder settings that mean nothing there are refused."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("lancedb", reason="the index extra (lancedb) is not installed")

from frametok.errors import ModelError
from frametok.index import open_index
from frametok.index.encode import NeckEncoder, encode_images, load_query_encoder, read_image
from frametok.index.frames import crop
from frametok.index.store import Store
from frametok.models.session import ModelFiles
from frametok.streamer.source.decode import decode_frames

from ..conftest import run_cli
from ..models.test_neck import neck_yolo  # noqa: F401 (the fixture)

CLIP = "vtest_small_3s.mp4"  # 30 frames of people walking, 384x288


@pytest.fixture(scope="module")
def neck_db(neck_yolo: ModelFiles, shared_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    db = tmp_path_factory.mktemp("neck-index") / "clip.db"
    done = run_cli("index", str(shared_media / CLIP), "--db", str(db), "--detector", str(neck_yolo.onnx_path),
                   "--encoder", "detector", "--no-progress", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 video(s), 30 frames" in done.stdout, done.stdout
    return db


@pytest.fixture(scope="module")
def frames(shared_media: Path) -> dict[int, np.ndarray]:
    return {f.index: f.frame_rgb for f in decode_frames(str(shared_media / CLIP))}


def _save(rgb: np.ndarray, path: Path) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # png: lossless, the frame's own pixels
    return path


def test_the_index_keeps_the_neck_and_its_detector(neck_db: Path, neck_yolo: ModelFiles) -> None:  # noqa: F811
    video = Store(neck_db, create=False).video_rows()[0]
    assert video["encoder"] == f"detector:{neck_yolo.onnx_path}"
    enc = json.loads(video["models"])["encoder"]
    assert (enc["output_layout"], enc["embed_dim"], enc["neck"]["level"], enc["neck"]["rect"]) == ("neck", 256,
                                                                                                   "P5", True)
    encoder = load_query_encoder(video)
    assert isinstance(encoder, NeckEncoder) and encoder.reader.detector.rect and encoder.embed_dim == 256


def test_a_frame_as_an_image_finds_itself(neck_db: Path, frames: dict[int, np.ndarray], shared_media: Path,
                                          tmp_path: Path) -> None:
    index = open_index(neck_db)
    stored = Store(neck_db, create=False).read("frames", None, ["frame", "ctx"])
    ctx = {r["frame"]: np.asarray(r["ctx"], np.float32) for r in stored.to_pylist()}
    best = {}
    for k in (4, 17, 26):
        image = _save(frames[k], tmp_path / f"frame{k}.png")
        # the query's tokens are the indexed frame's (float16 on the wire: not bit for bit)
        q = encode_images(load_query_encoder(Store(neck_db, create=False).video_rows()[0]), [read_image(image)])
        cos = float(q.context[0] @ ctx[k] / np.linalg.norm(ctx[k]))
        assert cos > 0.9999, (k, cos)
        hits = index.search(image=image, limit=5)
        assert hits and abs(hits[0].frame - k) <= 1, (k, [(h.frame, h.score, h.match) for h in hits])
        best[k] = hits[0].score
    assert min(best.values()) > 0.999, best
    for other in ("bus.jpg", "zidane.jpg"):
        hits = index.search(image=shared_media / other, limit=1)
        assert hits and hits[0].score < min(best.values()) - 0.05, (other, [(h.frame, h.score) for h in hits])


def test_cli_image_search(neck_db: Path, frames: dict[int, np.ndarray], tmp_path: Path) -> None:
    image = _save(frames[12], tmp_path / "frame12.png")
    done = run_cli("search", "--db", str(neck_db), "--image", str(image), "--json", "--limit", "3")
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert abs(hits[0]["frame"] - 12) <= 1, hits


def test_track_crops_are_embedded_by_the_neck(neck_db: Path, frames: dict[int, np.ndarray], tmp_path: Path) -> None:
    store = Store(neck_db, create=False)
    tracks = store.read("tracks", None, ["track_id", "best_frame", "best_xyxy", "embedding"]).to_pylist()
    assert len(tracks) >= 2, tracks  # people walking
    encoder = load_query_encoder(store.video_rows()[0])
    for t in tracks:
        emb = np.asarray(t["embedding"], np.float32)
        assert np.linalg.norm(emb) > 0.5, t["track_id"]  # not the zeros of a crop that was not embedded
        again = encode_images(encoder, [crop(frames[t["best_frame"]], t["best_xyxy"])]).context[0]
        assert float(again @ emb) / float(np.linalg.norm(emb)) > 0.9999, (t["track_id"], t["best_xyxy"])
    # a person's crop finds the frame it came from (tokens and the track's boxes compared with its pixels)
    row = store.read("frames", "frame = 15", ["det_score", "det_xyxy"]).to_pylist()[0]
    i = int(np.argmax(row["det_score"]))
    x1, y1, x2, y2 = (row["det_xyxy"][4 * i + j] for j in range(4))
    box = (max(0, int(x1) - 2), max(0, int(y1) - 2), min(384, int(x2) + 3), min(288, int(y2) + 3))
    hits = open_index(neck_db).search(image=_save(frames[15], tmp_path / "frame15.png"), crop_xyxy=box, limit=3)
    assert hits and abs(hits[0].frame - 15) <= 1, (box, [(h.frame, h.score, h.match) for h in hits])


def test_a_detector_of_other_weights_is_refused(neck_db: Path, dynamic_yolo: ModelFiles) -> None:
    video = {**Store(neck_db, create=False).video_rows()[0], "encoder": f"detector:{dynamic_yolo.onnx_path}"}
    with pytest.raises(ModelError, match=r"resolves to .*, the index was made with .*--models"):
        load_query_encoder(video)


def test_the_engine_embeds_track_crops_alike(neck_db: Path, neck_yolo: ModelFiles,  # noqa: F811
                                             shared_media: Path) -> None:
    """The index's FrameEngine (each Ray actor holds one) embeds a track's crop as the single-machine index did."""
    from frametok.config import parse_config
    from frametok.index.engine import FrameEngine
    from frametok.streamer.worker.models import prepare_models

    config = parse_config({
        "sources": [{"id": "v", "uri": str(shared_media / CLIP)}], "encoder": {"model": "detector"},
        "detector": {"model": str(neck_yolo.onnx_path)}, "worker": {"max_batch": 4, "threads": 2, "providers": ["cpu"]},
    })
    engine = FrameEngine(config, prepare_models(config))
    assert isinstance(engine.track_encoder(), NeckEncoder)
    tracks = Store(neck_db, create=False).read("tracks", None, ["best_frame", "best_xyxy", "embedding"]).to_pylist()
    got = engine.embeddings(str(shared_media / CLIP), [(t["best_frame"], t["best_xyxy"]) for t in tracks])
    for t, vec in zip(tracks, got, strict=True):
        assert float(np.dot(vec, np.asarray(t["embedding"], np.float32))) > 0.9999, t["best_frame"]
