"""Code histograms in the index: a codebook (k = 16) fitted here on the real DINOv2's patch
tokens of vtest_small_3s; `frametok index` and `frametok record` store each frame's code histogram, and
`frametok search --like-codes VIDEO:FRAME` ranks frames by histogram intersection with that frame's."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml

pytest.importorskip("lancedb", reason="the index extra (lancedb) is not installed")

from frametok.errors import ConfigError
from frametok.index import open_index
from frametok.index.codes import hist_matrix, intersection, parse_like_codes
from frametok.index.store import SCHEMA_VERSION, Store
from frametok.index.writer import FrameWriter
from frametok.models.codebook import Codebook, code_counts, fit_codebook
from frametok.models.encoder import Encoder
from frametok.models.session import create_session
from frametok.packet import Detections, TokenPacket
from frametok.registry import resolve_model
from frametok.streamer.source.decode import decode_frames

from ..conftest import free_endpoint, run_cli, start_cli

K = 16
GRID = 16 * 16  # DINOv2 ViT-S/14 at 224: a 16 x 16 code grid


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
    out = tmp_path_factory.mktemp("codebook") / "vtest16"
    return fit_codebook({"vtest_small_3s.mp4": frames[::4]}, encoder, out, k=K, seed=0)


def _photo_clip(shared_media: Path, dst: Path, size_wh: tuple[int, int]) -> Path:
    """Another clip: four of the shared photos, three frames each, at vtest_small's size."""
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = size_wh[0], size_wh[1], "yuv420p"
        for name in ("bus.jpg", "zidane.jpg", "astronaut.png", "coffee.png"):
            rgb = cv2.cvtColor(cv2.resize(cv2.imread(str(shared_media / name)), size_wh), cv2.COLOR_BGR2RGB)
            for _ in range(3):
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        out.mux(stream.encode(None))
    return dst


def _config(path: Path, models: Path, codebook: Codebook, extra: dict[str, object] | None = None) -> Path:
    cfg = {"detector": None, "models_dir": str(models),
           "encoder": {"model": "dinov2_vits14", "tau": 0.05, "keyframe_interval": 0, "codebook": str(codebook.path)},
           **(extra or {})}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _hists(db: Path) -> dict[tuple[str, int], list[int] | None]:
    table = Store(db, create=False).read("frames", None, ["video_id", "frame", "code_hist"])
    return {(r["video_id"], r["frame"]): r["code_hist"] for r in table.to_pylist()}


@pytest.fixture(scope="module")
def codes_db(codebook: Codebook, frames: list[np.ndarray], shared_media: Path, shared_models: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("codes")
    h, w = frames[0].shape[:2]
    photos = _photo_clip(shared_media, tmp / "photos.mp4", (w, h))
    db = tmp / "codes.db"
    config = _config(tmp / "index.yaml", shared_models, codebook)
    result = run_cli("index", str(shared_media / "vtest_small_3s.mp4"), str(photos), "--db", str(db), "--config",
                     str(config), "--models", str(shared_models), "--no-progress", timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 video(s), 42 frames" in result.stdout
    return db


def test_index_stores_code_histograms(codes_db: Path, codebook: Codebook, encoder: Encoder,
                                      frames: list[np.ndarray]) -> None:
    videos = {Path(v["video"]).name: v["video_id"] for v in Store(codes_db, create=False).video_rows()}
    hists = _hists(codes_db)
    assert len(hists) == 42
    assert all(h is not None and sum(h) == GRID and len(h) <= K for h in hists.values())
    # the lossless subscriber's code grids are the encoder's own codes (the worker's batches change the last bits)
    truth = codebook.assign(encoder(frames).patches)
    for i in range(30):
        got = np.zeros(K)
        stored = hists[(videos["vtest_small_3s.mp4"], i)]
        assert stored is not None
        got[: len(stored)] = stored
        assert np.abs(got - code_counts(truth[i], K)).sum() <= 0.06 * GRID, i


def test_like_codes_finds_the_frame_first(codes_db: Path) -> None:
    videos = {Path(v["video"]).name: v["video_id"] for v in Store(codes_db, create=False).video_rows()}
    vtest, photos = videos["vtest_small_3s.mp4"], videos["photos.mp4"]
    result = run_cli("search", "--db", str(codes_db), "--json", "--limit", "0", "--like-codes", f"{vtest}:12")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 42 and {h["match"] for h in hits} == {"codes"}
    assert (hits[0]["video_id"], hits[0]["frame"], hits[0]["score"]) == (vtest, 12, 1.0)
    ranks = {(h["video_id"], h["frame"]): r for r, h in enumerate(hits)}
    worst_vtest = max(r for (v, _), r in ranks.items() if v == vtest)
    best_photo = min(r for (v, _), r in ranks.items() if v == photos)
    assert worst_vtest < best_photo, "every frame of the same scene ranks above a frame of another clip"
    # by part of the path, a photo frame: itself first, then its two copies, then the other photos
    hits = open_index(codes_db).search(like_codes="photos.mp4:4", limit=3)
    assert (hits[0].video_id, hits[0].frame) == (photos, 4)
    assert {h.frame for h in hits} == {3, 4, 5}
    # with --video and a time range: only those frames are ranked
    hits = open_index(codes_db).search(like_codes=(vtest, 12), video="photos", t_from=0.5, limit=None)
    assert hits and all(h.video_id == photos and h.t_s >= 0.5 for h in hits)
    bad = run_cli("search", "--db", str(codes_db), "--like-codes", "nothing:3")
    assert bad.returncode == 2 and "names no video" in bad.stderr
    with pytest.raises(ConfigError, match="not both"):
        open_index(codes_db).search(image="x.png", like_codes=(vtest, 1))


def test_record_stores_code_histograms(codebook: Codebook, codes_db: Path, shared_media: Path, shared_models: Path,
                                       tmp_path: Path) -> None:
    live, lossless = free_endpoint(), free_endpoint()
    config = _config(tmp_path / "run.yaml", shared_models, codebook, {
        "sources": [{"id": "cam", "uri": str(shared_media / "vtest_small_3s.mp4")}],
        "publisher": {"endpoint": live, "lossless_endpoint": lossless, "wait_subscribers": 1}})
    run = start_cli("run", str(config), "--no-progress")
    db = tmp_path / "rec.db"
    try:
        result = run_cli("record", lossless, "--db", str(db), "--lossless", "--timeout", "120", timeout=300)
        run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert result.returncode == 0, result.stderr
    recorded = _hists(db)
    assert len(recorded) == 30 and all(h is not None and sum(h) == GRID for h in recorded.values())
    # the same codes as `frametok index` stored (both from a lossless subscriber's code grids)
    vtest = next(v["video_id"] for v in Store(codes_db, create=False).video_rows() if "vtest" in v["video"])
    indexed = {f: h for (v, f), h in _hists(codes_db).items() if v == vtest}
    rec = {f: h for (_, f), h in recorded.items()}
    a, _ = hist_matrix([rec[f] for f in range(30)])
    b, _ = hist_matrix([indexed[f] for f in range(30)])
    assert min(float(intersection(a[i : i + 1], b[i])[0]) for i in range(30)) >= 0.97
    hits = open_index(db).search(like_codes="cam:7", limit=1)
    assert hits[0].frame == 7 and hits[0].score == 1.0


# --------------------------------------------------------------------------- an index without the column


def _packet(frame: int, codes: np.ndarray | None = None) -> TokenPacket:
    det = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9], np.float32), np.array([0], np.int32))
    return TokenPacket(stream_id="s", frame_index=frame, pts_s=frame / 10, size_wh=(64, 48), detections=det,
                       code_grid=codes)


def test_an_index_without_code_histograms(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    store = Store(db, create=True)
    base = {"video": "/x/old.mp4", "stream": "s", "size_bytes": 1, "mtime_ns": 1, "fps": 10.0, "every": 1,
            "width": 64, "height": 48, "frames": 3, "class_names": json.dumps(["person"]), "models": "{}",
            "encoder": "", "state": "complete", "updated_ns": 1}
    store.put_video({**base, "video_id": "old"})
    writer = FrameWriter(store, "old", fps=10.0, dim=0, content_tokens=0)  # as before code histograms
    for i in range(3):
        writer.add(_packet(i))
    writer.flush()
    assert "code_hist" not in store.table("frames").schema.names  # type: ignore[union-attr]
    # it opens (same schema version) and is searched by the other options
    assert SCHEMA_VERSION == 1
    index = open_index(db)
    assert [h.frame for h in index.search(["person"], limit=None)] == [0, 1, 2]
    with pytest.raises(ConfigError, match="no code histograms"):
        index.search(like_codes="old:1")
    # a run with a codebook writing into it adds the column: the old rows have none and are not ranked
    store = Store(db, create=True)
    store.put_video({**base, "video_id": "new", "video": "/x/new.mp4"})
    writer = FrameWriter(store, "new", fps=10.0, dim=0, content_tokens=0, codes=True)
    codes = np.arange(12, dtype=np.int16).reshape(3, 4) % 5
    for i in range(3):
        writer.add(_packet(i, codes if i < 2 else np.zeros((3, 4), np.int16)))
    writer.flush()
    hists = _hists(db)
    assert hists[("old", 0)] is None and hists[("new", 0)] == [3, 3, 2, 2, 2]
    index = open_index(db)
    assert len(index.search(["person"], limit=None)) == 6
    hits = index.search(like_codes="new.mp4:0", limit=None)
    assert [(h.video_id, h.frame) for h in hits] == [("new", 0), ("new", 1), ("new", 2)]
    assert [h.score for h in hits] == [1.0, 1.0, 0.25]
    with pytest.raises(ConfigError, match="expected VIDEO:FRAME"):
        parse_like_codes("new.mp4")
