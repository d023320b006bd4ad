"""`frametok view` end to end: a real run with previews, the viewer's web page in headless Chromium,
and what the page drew checked against the packets this test received itself."""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from frametok import EndOfStream, Subscriber, TokenPacket
from frametok.sdk.costs import packet_cost

from ..conftest import ROOT, free_endpoint, start_cli
from .browser import Browser, find_chromium

ARTIFACTS = Path(os.environ.get("FRAMETOK_ARTIFACTS", ROOT / "tests" / "artifacts"))


def _start_viewer(endpoint: str) -> tuple[subprocess.Popen[str], str]:
    """`frametok view ENDPOINT --port 0`, and the URL it prints."""
    proc = start_cli("view", endpoint, "--port", "0")
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline() if proc.stdout else ""), daemon=True).start()
    try:
        line = lines.get(timeout=60)
    except queue.Empty:
        proc.kill()
        raise AssertionError("frametok view printed nothing in 60 s") from None
    assert line.startswith("frametok view: http://127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
    return proc, line.split()[2]


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out + err


def _edge_match(shot: np.ndarray, rect: dict[str, float], scale: tuple[float, float], det: dict[str, Any],
                color: str) -> float:
    """Share of points along the box's four edges that have the box's colour in the screenshot."""
    want = np.array([int(color[i:i + 2], 16) for i in (5, 3, 1)], np.int32)  # BGR
    x1, y1, x2, y2 = det["xyxy"]
    sx, sy = scale
    points = []
    for t in np.linspace(0.15, 0.85, 12):
        x, y = x1 + t * (x2 - x1), y1 + t * (y2 - y1)
        points += [(x, y1), (x, y2), (x1, y), (x2, y)]
    hits = 0
    for x, y in points:
        px, py = round(rect["x"] + x * sx), round(rect["y"] + y * sy)
        patch = shot[max(0, py - 1):py + 2, max(0, px - 1):px + 2].reshape(-1, 3).astype(np.int32)
        hits += bool(patch.size and (np.abs(patch - want).max(axis=1) <= 40).any())
    return hits / len(points)


def test_viewer_draws_the_stream_live(shared_media: Path, shared_models: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("websocket", reason="websocket-client (dev extra) drives Chromium over DevTools")
    endpoint = free_endpoint()
    viewer, url = _start_viewer(endpoint)
    run: subprocess.Popen[str] | None = None
    try:
        with Browser(chromium) as browser, Subscriber(endpoint, timeout_s=300) as sub:
            browser.goto(url)
            browser.wait_for("window.frametokView && window.frametokView.connected", 60)
            # the viewer's subscription and ours: the run holds its first packet until both are in
            run = start_cli("run", "--source", f"clip={shared_media / 'vtest_small_3s.mp4'}", "--models",
                            str(shared_models), "--publish", endpoint, "--wait-subscribers", "2", "--preview",
                            "--no-progress")
            messages = list(sub)
            assert not sub.gaps, sub.gaps
            names = sub.class_names("clip")
            out, err = run.communicate(timeout=120)
            assert run.returncode == 0, out + err
            packets = {m.frame_index: m for m in messages if isinstance(m, TokenPacket)}
            assert sorted(packets) == list(range(30)) and isinstance(messages[-1], EndOfStream)
            assert all(p.preview_jpeg for p in packets.values())
            # the page shows the last frame and the end of the stream
            browser.wait_for("(window.frametokDrawn.clip || {}).frame === 29", 60)
            browser.wait_for("document.querySelector('.stream[data-stream=\"clip\"] .state').textContent"
                             ".startsWith('ended')", 30)
            page = browser.eval("""(() => {
                const card = document.querySelector('.stream[data-stream="clip"]');
                const r = card.querySelector('canvas.frame').getBoundingClientRect();
                return {drawn: window.frametokDrawn, dom: JSON.parse(document.getElementById('drawn').textContent),
                        view: window.frametokView, dpr: window.devicePixelRatio,
                        rect: {x: r.x, y: r.y, width: r.width, height: r.height},
                        numbers: card.querySelector('.numbers').textContent,
                        state: card.querySelector('.state').textContent};
            })()""")
            png = browser.screenshot(ARTIFACTS / "viewer_clip.png")
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        view_output = _stop(viewer)
    drawn = page["drawn"]["clip"]
    assert page["dom"] == page["drawn"]  # the DOM element says what the window variable says
    latencies = page["view"]["viewerLatencyMs"]["clip"]
    (ARTIFACTS / "viewer_clip.json").write_text(json.dumps({"page": page, "viewer_latency_ms": latencies}, indent=1))

    # 1. what the page drew is what was sent: frame 29's detections, classes, scores, boxes, track ids
    packet = packets[drawn["frame"]]
    det = packet.detections
    assert det is not None and det.track_id is not None and len(det) >= 1
    assert drawn["size_wh"] == [384, 288] and drawn["preview"] is True
    assert len(drawn["detections"]) == len(det)
    for i, shown in enumerate(drawn["detections"]):
        assert shown["class"] == names[int(det.class_id[i])]
        assert shown["score"] == pytest.approx(float(det.score[i]), abs=1e-3)
        assert shown["xyxy"] == pytest.approx([float(v) for v in det.xyxy[i]], abs=0.01)
        assert shown["track_id"] == int(det.track_id[i])
    assert page["state"].startswith("ended") and "frames 30" in page["numbers"]
    assert page["view"]["drawn"]["clip"] >= 2  # it was live: several frames were drawn as they came
    costs = [packet_cost(p) for p in packets.values()]
    saved = 1 - sum(c.patch_bytes_sent for c in costs) / sum(c.patch_bytes_full for c in costs)
    assert f"compression saves {100 * saved:.1f}% of patch bytes" in page["numbers"]

    # 2. the screenshot shows the video (the preview) with the boxes drawn on it
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    dpr = float(page["dpr"])
    rect = {k: v * dpr for k, v in page["rect"].items()}
    cw, ch = drawn["canvas_wh"]
    crop = shot[round(rect["y"]):round(rect["y"] + rect["height"]),
                round(rect["x"]):round(rect["x"] + rect["width"])]
    crop = cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_AREA)
    preview = cv2.imdecode(np.frombuffer(packet.preview_jpeg or b"", np.uint8), cv2.IMREAD_COLOR)
    assert preview.shape[:2] == (ch, cw)
    diff = np.abs(crop.astype(np.int16) - preview.astype(np.int16)).mean(axis=2)
    assert np.median(diff) < 12, f"the canvas does not show the frame: median difference {np.median(diff):.1f}"
    scale = (rect["width"] / 384, rect["height"] / 288)
    matches = [_edge_match(shot, rect, scale, d, c) for d, c in zip(drawn["detections"], drawn["colors"],
                                                                      strict=True)]
    assert np.median(matches) >= 0.6, f"boxes not visible in the screenshot: edge colour matches {matches}"
    assert "Traceback" not in view_output, view_output


def test_view_serves_its_page_and_state(tmp_path: Path) -> None:
    """Without a publisher: the page, its script and the state route are served; nothing from a CDN."""
    endpoint = free_endpoint()
    viewer, url = _start_viewer(endpoint)
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            html = resp.read().decode()
        with urllib.request.urlopen(url + "viewer.js", timeout=10) as resp:
            js = resp.read().decode()
        with urllib.request.urlopen(url + "state.json", timeout=10) as resp:
            state = json.load(resp)
    finally:
        _stop(viewer)
    assert '<script src="viewer.js">' in html and "<canvas" not in html  # canvases are made per stream
    assert "http://" not in html + js.replace("http://127.0.0.1", "") and "https://" not in html + js
    assert "EventSource" in js and "frametokDrawn" in js
    assert state == {"endpoint": endpoint, "streams": []}


def _read_events(url: str, snapshots: dict[str, dict[str, Any]], stop: threading.Event) -> None:
    """Keep the latest snapshot of each stream from the page's Server-Sent Events."""
    with urllib.request.urlopen(url + "events", timeout=60) as resp:
        event, data = "", ""
        while not stop.is_set():
            line = resp.readline().decode()
            if not line:
                return
            if line.startswith("event: "):
                event = line[7:].strip()
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "\n" and event == "stream":
                snap = json.loads(data)
                snapshots[snap["stream"]] = snap


def test_view_sends_each_streams_state_as_server_sent_events(shared_media: Path, shared_models: Path) -> None:
    """No browser: what the page is sent (frame, detections, preview, state, statistics) matches the packets."""
    endpoint = free_endpoint()
    viewer, url = _start_viewer(endpoint)
    snapshots: dict[str, dict[str, Any]] = {}
    stop = threading.Event()
    reader = threading.Thread(target=_read_events, args=(url, snapshots, stop), daemon=True)
    reader.start()
    try:
        with Subscriber(endpoint, timeout_s=300) as sub:
            run = start_cli("run", "--source", f"clip={shared_media / 'vtest_small_3s.mp4'}", "--models",
                            str(shared_models), "--publish", endpoint, "--wait-subscribers", "2", "--preview",
                            "--no-progress")
            messages = list(sub)
            names = sub.class_names("clip")
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, out + err
        deadline = time.monotonic() + 30
        while snapshots.get("clip", {}).get("state") != "ended" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        _stop(viewer)
    packets = {m.frame_index: m for m in messages if isinstance(m, TokenPacket)}
    snap = snapshots["clip"]
    assert snap["state"] == "ended" and snap["detail"] == "end after 30 frames" and snap["policy"] == "file"
    assert snap["class_names"] == names
    frame = snap["frame"]
    assert frame["frame"] == 29
    packet = packets[29]
    assert base64.b64decode(frame["preview_jpeg"]) == packet.preview_jpeg
    assert frame["t_publish_ms"] == packet.timestamps.t_publish_ns / 1e6
    det = packet.detections
    assert det is not None and len(frame["detections"]) == len(det)
    assert [d["track_id"] for d in frame["detections"]] == det.track_id.tolist()  # type: ignore[union-attr]
    stats = snap["stats"]
    costs = [packet_cost(p) for p in packets.values()]
    assert stats["frames"] == 30 and stats["gaps"] == 0
    assert stats["totals"]["tokens_sent"] == sum(c.tokens_sent for c in costs)
    assert stats["totals"]["tokens_full"] == sum(c.tokens_full for c in costs)
    assert stats["totals"]["patch_bytes_sent"] == sum(c.patch_bytes_sent for c in costs)
    assert stats["totals"]["preview_bytes"] == sum(len(p.preview_jpeg or b"") for p in packets.values())
    assert 0 < stats["patch_bytes_saved"] < 1 and stats["fps"] > 0 and stats["latency_ms"] > 0
