"""Live sources with real processes, sockets and encoded video: a network camera on loopback (PyAV serving
MPEG-TS over TCP in a subprocess) that goes away, stalls and comes back; a live source faster than the
worker; image folders; cameras through OpenCV (faked: there is no camera here); the source config."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

from frametok import ConfigError, EndOfStream, StatusMessage, Subscriber, TokenPacket
from frametok.config import SourceConfig, parse_config
from frametok.packet import Message

from ..conftest import ROOT, frametok_cmd, start_cli, write_video
from .netserve import NetServer, free_port

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image encoder (one strided conv: 32x32 RGB -> a 4x4 grid of 8-d tokens, random weights) with its
    manifest: costs about nothing per frame, so a test is about the pipeline, not the model."""
    onnx = pytest.importorskip("onnx", reason="building the tiny test encoder needs onnx (the export extra)")
    from onnx import TensorProto, helper, numpy_helper

    from frametok.models.describe import describe_encoder_onnx
    from frametok.models.manifest import write_manifest

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(0, 0.1, (8, 3, 8, 8)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 8, 16], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["conv"], strides=[8, 8]),
         helper.make_node("Reshape", ["conv", "shape"], ["flat"]),
         helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", 16, 8])], [weights, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("tiny-encoder") / "tiny.onnx"
    onnx.save(model, str(path))
    write_manifest(describe_encoder_onnx(path, prefix_tokens=0, name="tiny"), path.with_suffix(".json"))
    return path


def tiny_models(encoder: Path) -> list[str]:
    return ["--detector", "none", "--encoder", str(encoder)]


def write_config(path: Path, sources: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"sources": sources}))
    return path


class Run:
    """``frametok run`` in a subprocess with a live subscriber attached, read by a thread all along (so
    that nothing is lost while the test waits): ``messages`` holds (seconds since start, receive time
    in ns, message)."""

    def __init__(self, config: Path, endpoint: str, *extra: str, own_group: bool = False) -> None:
        self.sub = Subscriber(endpoint, timeout_s=60)
        args = ("run", str(config), *extra, "--publish", endpoint, "--wait-subscribers", "1", "--no-progress")
        # own_group: in a process group of its own, as a shell runs a command (a terminal's Ctrl-C reaches
        # the whole group: stop(group=True))
        self.proc = subprocess.Popen(frametok_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, start_new_session=own_group) if own_group else start_cli(*args)
        self.messages: list[tuple[float, int, Message]] = []
        self.t0 = time.monotonic()
        self._last_rx = time.monotonic()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            msg = self.sub.recv(0.1)
            if msg is not None:
                self._last_rx = time.monotonic()
                self.messages.append((self._last_rx - self.t0, time.time_ns(), msg))

    def until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {self.describe()}")
            if self.proc.poll() is not None:
                self._quiet()  # what it published before it exited
                if done():
                    return
                raise AssertionError(f"frametok run exited ({self.proc.returncode}) while waiting for {what}: "
                                     f"{self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.02)

    def _quiet(self, silence_s: float = 0.5, timeout_s: float = 5.0) -> None:
        """Wait until nothing arrived for ``silence_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self._last_rx < silence_s and time.monotonic() < deadline:
            time.sleep(0.05)

    def received(self, stream: str) -> list[tuple[int, TokenPacket]]:
        """(receive time ns, packet) of a stream's frame packets."""
        return [(ns, m) for _, ns, m in list(self.messages) if isinstance(m, TokenPacket) and m.stream_id == stream]

    def frames(self, stream: str) -> list[TokenPacket]:
        return [m for _, m in self.received(stream)]

    def states(self, stream: str) -> list[str]:
        return [m.state for _, _, m in list(self.messages) if isinstance(m, StatusMessage) and m.stream_id == stream]

    def status_times(self, stream: str, state: str) -> list[float]:
        return [t for t, _, m in list(self.messages)
                if isinstance(m, StatusMessage) and m.stream_id == stream and m.state == state]

    def ended(self, stream: str) -> EndOfStream | None:
        return next((m for _, _, m in list(self.messages) if isinstance(m, EndOfStream) and m.stream_id == stream),
                    None)

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for _, _, m in list(self.messages):
            key = f"{m.stream_id}:{type(m).__name__}"
            kinds[key] = kinds.get(key, 0) + 1
        statuses = [(round(t, 2), m.stream_id, m.state, m.detail) for t, _, m in list(self.messages)
                    if isinstance(m, StatusMessage)]
        return f"{kinds}; statuses {statuses}"

    def stop(self, sig: int | None = signal.SIGINT, timeout_s: float = 30, group: bool = False) -> tuple[int, str, str]:
        """Send ``sig`` (None: wait for the run to end by itself; ``group``: to its whole process group) and
        collect what is left."""
        if sig is not None and self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self._quiet()
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self._closing.set()
        self._reader.join(5)
        self.sub.close()


def in_order(states: list[str], *wanted: str) -> bool:
    """``wanted`` appear in ``states`` in this order (not necessarily next to each other)."""
    it = iter(states)
    return all(any(s == w for s in it) for w in wanted)


# --------------------------------------------------------------------------- network streams


def test_network_stream_reconnects_while_a_file_source_loses_nothing(
    shared_models: Path, tmp_path: Path, endpoint: str
) -> None:
    """The loopback camera is killed mid-stream and restarted: its producer reports stalled, reconnecting,
    online; its packets resume; and the file source on the same worker keeps every frame, in order,
    through the outage, to its end-of-stream."""
    frames = 400  # still going when the camera is killed: the worker runs a batch while it gathers the next
    clip = write_video(tmp_path / "clip.mp4", frames=frames, size_wh=(160, 120), fps=10)
    with NetServer(fps=30) as server:
        config = write_config(tmp_path / "run.yaml", [
            {"id": "net", "uri": server.uri, "stall_timeout_s": 2.0, "reconnect_initial_s": 0.2,
             "reconnect_max_s": 1.0},
            {"id": "clip", "uri": str(clip)},
        ])
        run = Run(config, endpoint, "--models", str(shared_models), "--detector", "none")
        try:
            run.until(lambda: len(run.frames("net")) >= 5 and len(run.frames("clip")) >= 5, 120, "both streams")
            server.kill()
            killed_at = time.monotonic() - run.t0
            clip_at_kill = len(run.frames("clip"))
            run.until(lambda: in_order(run.states("net"), "online", "stalled", "reconnecting"), 20, "a reconnect")
            time.sleep(1.0)  # a few failed attempts (connection refused) while the camera is away
            server.start()
            run.until(lambda: in_order(run.states("net"), "online", "stalled", "reconnecting", "online"), 30,
                      "the camera back online")
            back_at = run.status_times("net", "online")[-1]
            before = len(run.frames("net"))
            run.until(lambda: len(run.frames("net")) >= before + 5, 30, "packets of the camera again")
            run.until(lambda: run.ended("clip") is not None, 120, "the end of the file")
            code, out, err = run.stop(signal.SIGINT)
        finally:
            run.close()
    assert code == 0, err
    assert "stopped early" in out
    net, clip_frames = run.frames("net"), run.frames("clip")
    assert [p.frame_index for p in clip_frames] == list(range(frames)), "the file source lost or reordered frames"
    eos = run.ended("clip")
    assert eos is not None and eos.reason == "end" and eos.frames == frames
    assert not run.sub.gaps.get("clip"), run.sub.gaps
    # the file source went on while the camera was away
    during = [t for t, _, m in run.messages if isinstance(m, TokenPacket) and m.stream_id == "clip"
              and killed_at < t < back_at]
    # a file source (every frame, always ready) does not fill the batches ahead of the live camera
    assert clip_at_kill < frames / 2, f"the camera was starved: {clip_at_kill} file packets before its 5th"
    assert during, f"no file packet between the kill ({killed_at:.1f} s) and the camera's return ({back_at:.1f} s)"
    # the camera's packets: before and after the outage, frame indices increasing across the reconnect
    indices = [p.frame_index for p in net]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert any(t > back_at for t, _, m in run.messages if isinstance(m, TokenPacket) and m.stream_id == "net")
    assert all(p.policy == "live" for p in net) and all(p.policy == "file" for p in clip_frames)
    stalled = next(m for _, _, m in run.messages if isinstance(m, StatusMessage) and m.state == "stalled")
    assert "ended" in stalled.detail
    for p in net:
        t = p.timestamps
        assert 0 < t.t_capture_ns <= t.t_decode_ns <= t.t_infer_ns <= t.t_publish_ns
        assert p.pts_s is not None


def test_stalled_stream_is_detected_and_reconnected(tiny_encoder: Path, tmp_path: Path, endpoint: str) -> None:
    """The camera freezes with its connection open (SIGSTOP): no frame for stall_timeout_s is a stall; the
    producer reconnects when it comes back, and the stream goes on."""
    with NetServer(fps=30) as server:
        config = write_config(tmp_path / "run.yaml", [
            {"id": "cam", "uri": server.uri, "stall_timeout_s": 1.0, "reconnect_initial_s": 0.2,
             "reconnect_max_s": 0.5},
        ])
        run = Run(config, endpoint, *tiny_models(tiny_encoder))
        try:
            run.until(lambda: len(run.frames("cam")) >= 10, 60, "packets")
            server.pause()
            paused_at = time.monotonic()
            run.until(lambda: "stalled" in run.states("cam"), 10, "a stall")
            stalled_after = time.monotonic() - paused_at
            run.until(lambda: in_order(run.states("cam"), "stalled", "reconnecting"), 10, "reconnecting")
            server.resume()
            run.until(lambda: in_order(run.states("cam"), "online", "stalled", "reconnecting", "online"), 30,
                      "online again")
            before = len(run.frames("cam"))
            run.until(lambda: len(run.frames("cam")) >= before + 10, 30, "packets again")
            code, _, err = run.stop(signal.SIGTERM)
        finally:
            run.close()
    assert code == 0, err
    assert 0.8 < stalled_after < 4.0, f"stall reported {stalled_after:.1f} s after the camera froze (timeout 1 s)"
    stalled = next(m for _, _, m in run.messages if isinstance(m, StatusMessage) and m.state == "stalled")
    assert "no frame for 1 s" in stalled.detail
    indices = [p.frame_index for p in run.frames("cam")]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    eos = run.ended("cam")
    assert eos is not None and eos.reason == "stopped"


def test_stream_end_reconnects_or_ends(tiny_encoder: Path, tmp_path: Path, endpoint: str) -> None:
    """A server that closes the stream after 20 frames: by default a stall to reconnect from (so frames keep
    coming, connection after connection); with end_on_eof the stream's end-of-stream."""
    with NetServer(fps=30, per_client=20) as again, NetServer(fps=30, per_client=20) as once:
        config = write_config(tmp_path / "run.yaml", [
            {"id": "again", "uri": again.uri, "reconnect_initial_s": 0.1, "reconnect_max_s": 0.2},
            {"id": "once", "uri": once.uri, "end_on_eof": True, "policy": "file"},
        ])
        run = Run(config, endpoint, *tiny_models(tiny_encoder))
        try:
            run.until(lambda: run.ended("once") is not None and len(run.frames("again")) > 45, 60,
                      "the end of 'once' and a third connection of 'again'")
            code, _, err = run.stop(signal.SIGINT)
        finally:
            run.close()
    assert code == 0, err
    once_eos = run.ended("once")
    assert once_eos is not None and once_eos.reason == "end" and once_eos.frames == 20
    assert [p.frame_index for p in run.frames("once")] == list(range(20)), "policy file: every frame"
    assert run.states("once") == ["connecting", "online"]
    states = run.states("again")
    assert states.count("online") >= 3 and in_order(states, "online", "stalled", "reconnecting", "online")
    indices = [p.frame_index for p in run.frames("again")]
    assert indices == sorted(indices) and len(set(indices)) == len(indices) and indices[-1] >= 40


def test_unreachable_stream_gives_up_and_the_other_source_goes_on(
    tiny_encoder: Path, tmp_path: Path, endpoint: str, synthetic_video: Path
) -> None:
    config = write_config(tmp_path / "run.yaml", [
        {"id": "gone", "uri": f"tcp://127.0.0.1:{free_port()}", "reconnect_initial_s": 0.1,
         "reconnect_max_s": 0.2, "reconnect_attempts": 2},
        {"id": "clip", "uri": str(synthetic_video)},
    ])
    run = Run(config, endpoint, *tiny_models(tiny_encoder))
    try:
        run.until(lambda: run.ended("gone") is not None and run.ended("clip") is not None, 60, "both ends")
        code, out, err = run.stop(None)
    finally:
        run.close()
    assert code == 0, err  # the run ended by itself: every stream sent its end-of-stream
    assert run.states("gone") == ["connecting", "reconnecting", "reconnecting", "offline"]
    gone = run.ended("gone")
    assert gone is not None and gone.reason == "error" and "offline after 2" in gone.detail
    assert [p.frame_index for p in run.frames("clip")] == list(range(24))
    assert "failed: gone" in out and "stopped early" not in out


# --------------------------------------------------------------------------- a live source faster than the worker


def test_live_source_faster_than_the_worker_drops_and_keeps_latency_bounded(
    shared_models: Path, tmp_path: Path, endpoint: str
) -> None:
    """A 30 fps camera into DINOv2 on 2 cores (about 10-15 frames/s): the producer drops what the worker
    cannot take (the frame index jumps, ``dropped`` grows), and the latency of the last packets is no
    larger than that of the first ones: it does not grow with run time."""
    with NetServer(fps=30, size_wh=(640, 480)) as server:
        config = write_config(tmp_path / "run.yaml", [{"id": "cam", "uri": server.uri}])
        run = Run(config, endpoint, "--models", str(shared_models), "--detector", "none")
        try:
            run.until(lambda: len(run.frames("cam")) >= 1, 120, "the first packet")
            time.sleep(12)
            code, _, err = run.stop(signal.SIGINT)
        finally:
            run.close()
    assert code == 0, err
    received = run.received("cam")
    rate = (len(received) - 1) / max(1e-9, (received[-1][0] - received[0][0]) / 1e9)
    if rate > 0.8 * 30:
        pytest.skip(f"the worker keeps up with the 30 fps camera here ({rate:.0f} packets/s): nothing to drop")
    packets = [p for _, p in received]
    assert len(packets) > 40
    assert all(p.policy == "live" for p in packets)
    indices = [p.frame_index for p in packets]
    assert indices == sorted(indices)
    jumps = np.diff(indices)
    # frames come in pairs at most (one taken while the models run, the next when they finish): then a jump
    assert (jumps > 1).mean() > 0.3, f"the frame index should jump (frames dropped): {indices[:20]}"
    drops = [p.dropped for p in packets]
    assert drops == sorted(drops) and drops[-1] > drops[0] and drops[-1] >= 0.3 * indices[-1]
    latency_ms = np.array([(t - p.timestamps.t_capture_ns) / 1e6 for t, p in received])
    first, last = np.median(latency_ms[5:25]), np.median(latency_ms[-20:])
    assert last <= first + 150, f"latency grew from {first:.0f} ms to {last:.0f} ms"
    assert latency_ms[5:].max() < 1500, f"latency not bounded: max {latency_ms.max():.0f} ms"


# --------------------------------------------------------------------------- image folders


def _write_images(folder: Path) -> list[tuple[int, int, int]]:
    """Images named 1, 2, 10 (natural order: 1, 2, 10), one of another size, a file that is no image."""
    import cv2

    folder.mkdir()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for name, colour, size in (("frame1.png", colours[0], (64, 48)), ("frame2.jpg", colours[1], (64, 48)),
                               ("frame10.png", colours[2], (80, 40))):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:] = colour[::-1]  # OpenCV writes BGR
        cv2.imwrite(str(folder / name), img)
    (folder / "notes.txt").write_text("not an image")
    return colours


def test_image_folder_and_glob(tiny_encoder: Path, tmp_path: Path, endpoint: str) -> None:
    import cv2

    colours = _write_images(tmp_path / "imgs")
    config = write_config(tmp_path / "run.yaml", [
        {"id": "folder", "uri": str(tmp_path / "imgs"), "fps": 2},
        {"id": "glob", "uri": str(tmp_path / "imgs" / "frame1*.png")},
    ])
    run = Run(config, endpoint, *tiny_models(tiny_encoder), "--preview")
    try:
        run.until(lambda: run.ended("folder") is not None and run.ended("glob") is not None, 60, "both ends")
        code, _, err = run.stop(None)
    finally:
        run.close()
    assert code == 0, err
    folder = run.frames("folder")
    assert [p.frame_index for p in folder] == [0, 1, 2]
    assert [p.pts_s for p in folder] == [0.0, 0.5, 1.0]
    assert [p.size_wh for p in folder] == [(64, 48), (64, 48), (80, 40)]
    assert all(p.policy == "file" for p in folder)
    for p, colour in zip(folder, colours, strict=True):
        assert p.preview_jpeg is not None
        rgb = cv2.imdecode(np.frombuffer(p.preview_jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        assert np.abs(rgb.reshape(-1, 3).mean(axis=0) - colour).max() < 20, "natural order: 1, 2, 10"
    glob_frames = run.frames("glob")
    assert [p.size_wh for p in glob_frames] == [(64, 48), (80, 40)] and all(p.pts_s is None for p in glob_frames)
    assert run.ended("folder").frames == 3  # type: ignore[union-attr]


def test_empty_image_folder_is_refused(tmp_path: Path) -> None:
    from frametok.streamer.supervision.supervisor import prepare_sources

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"source 'e'.*no images"):
        prepare_sources(parse_config({"sources": [{"id": "e", "uri": str(tmp_path / "empty")}]}))
    with pytest.raises(ConfigError, match=r"no images .*matches no file"):
        prepare_sources(parse_config({"sources": [{"id": "e", "uri": str(tmp_path / "*.jpg")}]}))


# --------------------------------------------------------------------------- cameras (OpenCV, faked)


class _FakeCapture:
    """Stands in for cv2.VideoCapture: 5 frames, then the camera is unplugged."""

    opened: ClassVar[list[Any]] = []

    def __init__(self, device: Any, *args: Any) -> None:
        self.device, self.n, self.props = device, 0, {}
        _FakeCapture.opened.append(self)

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def grab(self) -> bool:
        self.n += 1
        time.sleep(0.01)
        return self.n <= 5

    def retrieve(self) -> tuple[bool, np.ndarray]:
        img = np.zeros((4, 6, 3), np.uint8)
        img[..., 0] = self.n  # blue in BGR
        return True, img

    def release(self) -> None:
        self.released = True


def test_camera_frames_through_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from frametok.errors import SourceError
    from frametok.streamer.source.decode import decode_frames

    monkeypatch.setattr(cv2, "VideoCapture", _FakeCapture)
    frames = []
    with pytest.raises(SourceError, match="camera 0 stopped delivering frames after 5 frames"):
        for frame in decode_frames("0", 3.0, read_timeout_s=2.0, fps=15):
            frames.append(frame)
    cap = _FakeCapture.opened[-1]
    assert cap.device == 0 and cap.released and cap.props[cv2.CAP_PROP_FPS] == 15
    assert [f.index for f in frames] == list(range(5))
    assert [int(f.frame_rgb[0, 0, 2]) for f in frames] == [1, 2, 3, 4, 5], "BGR -> RGB"
    assert frames[0].pts_s == 0.0 and all(b.pts_s > a.pts_s for a, b in itertools.pairwise(frames))  # type: ignore[operator]
    assert all(f.t_capture_ns <= f.t_decode_ns for f in frames)
    assert next(iter(decode_frames("/dev/video3"))) and _FakeCapture.opened[-1].device == "/dev/video3"


def test_missing_camera_is_refused_before_anything_starts() -> None:
    from frametok.streamer.supervision.supervisor import prepare_sources

    config = parse_config({"sources": [{"id": "cam", "uri": "/dev/video97"}]})
    with pytest.raises(ConfigError, match=r"source 'cam': camera /dev/video97: no device"):
        prepare_sources(config)


# --------------------------------------------------------------------------- config


def test_source_config_live_fields() -> None:
    net = SourceConfig(id="n", uri="rtsp://cam/stream")
    assert net.effective_policy == "live" and net.effective_reconnect and net.reconnect_attempts == 0
    assert SourceConfig(id="c", uri="0").effective_reconnect
    assert not SourceConfig(id="f", uri="video.mp4").effective_reconnect
    assert not SourceConfig(id="n", uri="rtsp://cam/stream", reconnect=False).effective_reconnect
    assert SourceConfig(id="n", uri="rtsp://x", options={"rtsp_transport": "tcp"}).options == {"rtsp_transport": "tcp"}
    for bad, match in (({"uri": "video.mp4", "reconnect": True}, "reconnect applies to cameras"),
                       ({"uri": "0", "end_on_eof": True}, "end_on_eof applies to network"),
                       ({"uri": "rtsp://x", "reconnect_initial_s": 5, "reconnect_max_s": 1}, "reconnect_max_s"),
                       ({"uri": "rtsp://x", "stall_timeout_s": 0}, "stall_timeout_s"),
                       ({"uri": "imgs/*.png", "fps": -1}, "fps")):
        with pytest.raises(ConfigError, match=match):
            parse_config({"sources": [{"id": "a", **bad}]})
