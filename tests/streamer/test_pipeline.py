"""End to end with real processes, sockets, video and models: frametok run -> Subscriber."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from frametok import EndOfStream, StatusMessage, StreamInfo, Subscriber, TokenPacket
from frametok.packet import Message

from ..conftest import start_cli


def run_and_collect(
    args: list[str], endpoint: str, timeout_s: float = 180, wait_subscribers: int = 1
) -> tuple[list[Message], str, int]:
    """Subscribe first, start `frametok run` (which waits for the subscription), collect until EOS."""
    with Subscriber(endpoint, timeout_s=timeout_s) as sub:
        proc = start_cli("run", *args, "--publish", endpoint, "--wait-subscribers", str(wait_subscribers),
                         "--no-progress")
        try:
            messages = list(sub)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        gaps = sub.gaps
    assert not gaps, f"sequence gaps: {gaps}"
    return messages, out + err, proc.returncode


def _frames(messages: list[Message]) -> list[TokenPacket]:
    return [m for m in messages if isinstance(m, TokenPacket)]


def test_small_clip_end_to_end(shared_media: Path, shared_models: Path, endpoint: str) -> None:
    messages, output, code = run_and_collect(
        ["--source", f"clip={shared_media / 'vtest_small_3s.mp4'}", "--models", str(shared_models)], endpoint)
    assert code == 0, output
    frames = _frames(messages)
    assert [p.frame_index for p in frames] == list(range(30))
    assert isinstance(messages[-1], EndOfStream) and messages[-1].frames == 30 and messages[-1].reason == "end"
    assert sum(isinstance(m, EndOfStream) for m in messages) == 1
    info = next(m for m in messages if isinstance(m, StreamInfo))
    assert info.class_names()[0] == "person"
    assert any(isinstance(m, StatusMessage) and m.state == "online" for m in messages)
    with_people = sum(1 for p in frames if p.detections is not None and (p.detections.class_id == 0).any())
    assert with_people >= 0.8 * len(frames)
    for p in frames:
        assert p.stream_id == "clip" and p.size_wh == (384, 288) and p.policy == "file"
        assert p.patch_tokens is not None and p.patch_tokens.shape == (16, 16, 384)
        assert p.context_token is not None and p.context_token.shape == (384,)
        assert np.isfinite(p.patch_tokens.astype(np.float32)).all()
        t = p.timestamps
        assert 0 < t.t_capture_ns <= t.t_decode_ns <= t.t_infer_ns <= t.t_publish_ns
        assert p.detections is not None
        boxes = p.detections.xyxy
        assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 384) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 288)).all()
    assert abs(frames[10].pts_s - 1.0) < 1e-6  # 10 fps clip
    assert re.search(r"30 frames from 1 stream\(s\) -> 30 packets", output)
    busy = re.search(r"models busy (\d+)% \(mean batch ([\d.]+)(, 2 in flight)?\)", output)
    assert busy is not None, output
    assert 0 < int(busy.group(1)) <= 100 and 1.0 <= float(busy.group(2)) <= 4.0, busy.group(0)


@pytest.mark.slow
def test_long_video_loses_nothing_while_a_slow_live_subscriber_loses_alone(
    shared_media: Path, shared_models: Path, endpoint: str, tmp_path: Path
) -> None:
    """795 frames of vtest.avi, full 16x16x384 grids: a subscriber that keeps up gets every packet; a
    deliberately slow live subscriber on the same publisher loses packets, reports them as gaps, and
    holds back neither the pipeline nor the other subscriber. (Compression off: with ~11 KB deltas the
    kernel's socket buffers alone hold hundreds of packets, and a slow reader would lose nothing.)"""
    config = tmp_path / "full-grids.yaml"
    config.write_text("encoder: {model: dinov2_vits14, compress: false}\npublisher: {hwm: 8}\n")
    slow_frames: list[int] = []
    slow_sub = Subscriber(endpoint, rcvhwm=1, timeout_s=15)
    run_over = threading.Event()

    def slow_loop() -> None:
        # reads until the run is over; what still sits in socket buffers then is not its concern
        for msg in slow_sub:
            if run_over.is_set():
                break
            if isinstance(msg, TokenPacket):
                slow_frames.append(msg.frame_index)
                time.sleep(0.3)

    slow = threading.Thread(target=slow_loop)
    slow.start()
    try:
        messages, output, code = run_and_collect(
            [str(config), "--source", f"vtest={shared_media / 'vtest.avi'}", "--models", str(shared_models)],
            endpoint, wait_subscribers=2)
    finally:
        run_over.set()
        slow.join(30)
        slow_gaps = sum(g.missing for g in slow_sub.gaps.values())
        slow_sub.close()
    assert code == 0, output
    frames = _frames(messages)
    assert [p.frame_index for p in frames] == list(range(795))
    assert isinstance(messages[-1], EndOfStream) and messages[-1].frames == 795
    assert "795 packets" in output
    assert not slow.is_alive()
    # the slow reader (0.3 s a packet, ~4x slower than the pipeline) cannot have seen every frame in order
    assert 0 < len(slow_frames) < 795, "the slow subscriber keeps up only by losing packets"
    assert slow_frames == sorted(slow_frames)
    lost_before_last = slow_frames[-1] + 1 - len(slow_frames)
    assert lost_before_last > 0, "the slow subscriber lost nothing: it was not slow"
    assert slow_gaps >= lost_before_last, "every lost packet is reported as a gap"
    print(output.strip().splitlines()[-1])


def test_previews(shared_media: Path, shared_models: Path, endpoint: str) -> None:
    messages, output, code = run_and_collect(
        ["--source", f"clip={shared_media / 'vtest_small_3s.mp4'}", "--models", str(shared_models),
         "--encoder", "none", "--preview"], endpoint)
    assert code == 0, output
    import cv2

    frames = _frames(messages)
    assert len(frames) == 30
    for p in frames:
        assert p.preview_jpeg is not None and p.preview_jpeg[:2] == b"\xff\xd8"
        img = cv2.imdecode(np.frombuffer(p.preview_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (288, 384, 3)  # 384x288 fits in the default 384 max side: not resized


def test_two_sources_one_worker(shared_media: Path, shared_models: Path, synthetic_video: Path, endpoint: str) -> None:
    messages, output, code = run_and_collect(
        ["--source", f"a={shared_media / 'vtest_small_3s.mp4'}", "--source", f"b={synthetic_video}",
         "--models", str(shared_models), "--encoder", "none"], endpoint)
    assert code == 0, output
    per_stream: dict[str, list[int]] = {"a": [], "b": []}
    for p in _frames(messages):
        per_stream[p.stream_id].append(p.frame_index)
        assert p.patch_tokens is None and p.context_token is None
    assert per_stream == {"a": list(range(30)), "b": list(range(24))}
    assert {m.stream_id for m in messages if isinstance(m, EndOfStream)} == {"a", "b"}


def test_track_ids_follow_people_across_frames(shared_media: Path, shared_models: Path, endpoint: str) -> None:
    messages, output, code = run_and_collect(
        ["--source", f"clip={shared_media / 'vtest_small_3s.mp4'}", "--models", str(shared_models),
         "--encoder", "none"], endpoint)
    assert code == 0, output
    frames = _frames(messages)
    assert len(frames) == 30
    info = next(m for m in messages if isinstance(m, StreamInfo))
    assert info.models["tracker"]["kind"] == "bytetrack"
    seen: dict[int, list[int]] = {}
    for p in frames:
        det = p.detections
        assert det is not None and det.track_id is not None and det.track_id.shape == (len(det),)
        ids = det.track_id[det.track_id >= 0]
        assert len(set(ids.tolist())) == len(ids), f"frame {p.frame_index}: one id on two boxes"
        for tid in ids.tolist():
            seen.setdefault(int(tid), []).append(p.frame_index)
    assert seen, "no detection was ever tracked"
    longest = max(len(v) for v in seen.values())
    assert longest >= 20, f"no person kept one id for 20 of 30 frames (longest {longest})"
    assert all(t > 0 for t in seen)


def test_no_track_flag(shared_media: Path, shared_models: Path, endpoint: str) -> None:
    messages, output, code = run_and_collect(
        ["--source", f"clip={shared_media / 'vtest_small_3s.mp4'}", "--models", str(shared_models),
         "--encoder", "none", "--no-track"], endpoint)
    assert code == 0, output
    frames = _frames(messages)
    assert frames and all(p.detections is not None and p.detections.track_id is None for p in frames)
