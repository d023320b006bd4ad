"""Shared fixtures: the real models and media in ../shared (skipped with a reason when absent),
a synthetic video made with PyAV, free endpoints, and helpers to run the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from frametok.models.session import ModelFiles

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))
SHARED_REASON = (
    f"needs the real models and media of ../shared ({SHARED}; set FRAMETOK_SHARED): "
    "not present in a fresh clone"
)


def have_shared() -> bool:
    return (SHARED / "models" / "yolov8n_coco.onnx").exists() and (SHARED / "media" / "vtest.avi").exists()


@pytest.fixture(scope="session")
def shared() -> Path:
    if not have_shared():
        pytest.skip(SHARED_REASON)
    return SHARED


@pytest.fixture(scope="session")
def shared_models(shared: Path) -> Path:
    return shared / "models"


@pytest.fixture(scope="session")
def shared_media(shared: Path) -> Path:
    return shared / "media"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session gets its own frametok cache; nothing is downloaded."""
    cache = tmp_path_factory.mktemp("frametok-cache")
    old = {k: os.environ.get(k) for k in ("FRAMETOK_CACHE", "FRAMETOK_MODELS")}
    os.environ["FRAMETOK_CACHE"] = str(cache)
    os.environ.pop("FRAMETOK_MODELS", None)
    yield cache
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def endpoint() -> str:
    return free_endpoint()


def write_video(path: Path, frames: int = 24, size_wh: tuple[int, int] = (160, 120), fps: int = 12) -> Path:
    """A real encoded video (MPEG-4 via PyAV): a bright square moving over a gradient."""
    import av

    w, h = size_wh
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    base[..., 2] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = base.copy()
            x = (i * 5) % (w - 30)
            img[40:70, x : x + 30] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "moving_square.mp4")


def frametok_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "frametok", *args]


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(frametok_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(frametok_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT)


@pytest.fixture(scope="session")
def dynamic_yolo(shared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    """The real YOLOv8n weights (``yolov8n_coco.pt``) exported by ``export_yolo`` once per test session: dynamic
    batch, height and width (the shared ``yolov8n_coco.onnx`` has a fixed 1x3x640x640 input); its ModelFiles."""
    pytest.importorskip("torch", reason="needs torch (pip install 'frametok[export]')")
    pytest.importorskip("ultralytics", reason="needs ultralytics (pip install 'frametok[export]')")
    from frametok.exporters.yolo import export_yolo

    return export_yolo(shared_models / "yolov8n_coco.pt", tmp_path_factory.mktemp("yolo-dynamic"))
