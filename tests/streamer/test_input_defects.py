"""Inputs as they come: files the tests make themselves with PyAV, each a defect an independent
subscriber found: a complete variable-frame-rate AVI, packed B-frames, concealed damage, damaged images."""

from __future__ import annotations

import fractions
import itertools
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from frametok.config import load_config
from frametok.errors import ConfigError, SourceError
from frametok.packet import EndOfStream, Message, StatusMessage, TokenPacket, decode, encode
from frametok.streamer.source.decode import decode_frames

from ..conftest import free_endpoint
from .test_pipeline import run_and_collect

_W, _H = 160, 120


def picture(i: int) -> NDArray[np.uint8]:
    """A gradient with a bright square that moves with ``i``."""
    img = np.zeros((_H, _W, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, _W, dtype=np.uint8)[None, :]
    img[..., 2] = np.linspace(0, 255, _H, dtype=np.uint8)[:, None]
    x = (i * 3) % (_W - 30)
    img[40:70, x : x + 30] = 255
    return img


def vfr_avi(path: Path, codec: str = "mjpeg") -> Path:
    """68 frames whose pts run from 0 to 443 in 1/15 s ticks: the AVI header announces 444 frames."""
    ticks = sorted({0, 443, *np.linspace(0, 443, 68).astype(int).tolist()})
    assert len(ticks) == 68
    tb = fractions.Fraction(1, 15)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream(codec, rate=15)
        stream.width, stream.height = _W, _H
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.time_base = tb
        for i, pts in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = pts, tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("codec", ["mjpeg", "mpeg4"])
def test_complete_vfr_avi_is_not_truncated(tmp_path: Path, codec: str) -> None:
    """Defect 1: it ended with "is truncated: it ends after 68 frames, its container announces 444"."""
    path = vfr_avi(tmp_path / f"vfr_{codec}.avi", codec)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 444  # what the header announces
    reports: list[str] = []
    frames = list(decode_frames(str(path), on_damage=reports.append))
    assert len(frames) == 68 and not reports
    pts = [f.pts_s for f in frames]
    assert pts[0] == 0.0 and pts[-1] == pytest.approx(443 / 15)


def test_cut_vfr_avi_is_still_truncated(tmp_path: Path) -> None:
    path = vfr_avi(tmp_path / "vfr.avi")
    cut = tmp_path / "cut.avi"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated"):
        for _ in decode_frames(str(cut)):
            pass


def _photo_folder(folder: Path, media: Path, names: list[str]) -> Path:
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / f"{i:02d}_{name}").symlink_to(media / name)
    return folder


def _track_ids(messages: list[Message]) -> list[list[int]]:
    frames = [m for m in messages if isinstance(m, TokenPacket)]
    out = []
    for packet in frames:
        assert packet.detections is not None and packet.detections.track_id is not None
        out.append([int(t) for t in packet.detections.track_id if t >= 0])
    return out


def test_unrelated_photos_are_not_tracked_across(shared_media: Path, shared_models: Path, tmp_path: Path) -> None:
    """Defect 2: id 4 went to the bus of bus.jpg, then to a person of zidane.jpg; bus.jpg's people got their
    ids back after the other photos (tracked across unrelated images)."""
    folder = _photo_folder(tmp_path / "photos", shared_media, ["bus.jpg", "zidane.jpg", "bus.jpg", "zidane.jpg"])
    messages, output, code = run_and_collect(
        ["--source", f"p={folder}", "--models", str(shared_models), "--encoder", "none"], free_endpoint())
    assert code == 0, output
    ids = _track_ids(messages)
    assert len(ids) == 4 and all(ids), ids  # every photo has tracked detections
    flat = [t for frame in ids for t in frame]
    assert len(flat) == len(set(flat)), f"a track id in two photos: {ids}"


def test_an_image_sequence_is_tracked_across(shared_media: Path, shared_models: Path, tmp_path: Path) -> None:
    folder = _photo_folder(tmp_path / "seq", shared_media, ["bus.jpg", "bus.jpg", "bus.jpg"])
    config = tmp_path / "seq.yaml"
    config.write_text(f"sources:\n  - {{id: s, uri: '{folder}', sequence: true}}\nencoder: null\n")
    messages, output, code = run_and_collect([str(config), "--models", str(shared_models)], free_endpoint())
    assert code == 0, output
    ids = _track_ids(messages)
    assert set(ids[0]) and set(ids[0]) == set(ids[1]) == set(ids[2]), ids


def test_sequence_is_for_image_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sequence applies to image folders"):
        load_config(None, {"sources": [{"id": "v", "uri": str(tmp_path / "x.mp4"), "sequence": True}]})


def xvid_avi(path: Path, frames: int = 90) -> Path:
    """An xvid-tagged MPEG-4 AVI, a keyframe every 30 frames, with some texture so that frames are large."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, (_H, _W), dtype=np.uint8)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = _W, _H, "yuv420p"
        stream.codec_context.codec_tag = "XVID"
        stream.codec_context.gop_size = 30
        stream.codec_context.bit_rate = 800_000
        for i in range(frames):
            img = picture(i)
            img[..., 1] = np.roll(noise, i, axis=1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def overwritten(src: Path, dst: Path, span: int = 12_000) -> Path:
    """16 random bytes of every 997 over ``span`` bytes in the middle of the file."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(1)
    mid = len(data) // 2
    for at in range(mid, mid + span, 997):
        data[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_concealed_damage_is_marked(tmp_path: Path) -> None:
    """Defect 6: frames the decoder concealed errors in (or predicted from skipped data) came out as healthy."""
    clip = xvid_avi(tmp_path / "x.avi")
    bad = overwritten(clip, tmp_path / "bad.avi")
    reports: list[str] = []
    frames = list(decode_frames(str(bad), on_damage=reports.append))
    damaged = [f.index for f in frames if f.damaged]
    assert damaged, "no frame marked damaged"
    assert len(damaged) < len(frames) and not frames[0].damaged and not frames[-1].damaged
    assert any("concealed errors" in r and "marked damaged" in r for r in reports), reports
    healthy: list[str] = []
    assert not any(f.damaged for f in decode_frames(str(clip), on_damage=healthy.append)) and not healthy


def test_the_damaged_flag_is_an_optional_header_field() -> None:
    """Defect 6: a per-packet flag, ``"damaged": true`` in the header only when set (1.2, minor addition)."""
    packet = TokenPacket("cam0", 3, 0.1, (64, 48), seq=5, damaged=True)
    parts = encode(packet)
    assert json.loads(bytes(parts[1]))["damaged"] is True
    assert decode(parts).damaged is True  # type: ignore[union-attr]
    plain = encode(TokenPacket("cam0", 4, 0.2, (64, 48), seq=6))
    assert "damaged" not in json.loads(bytes(plain[1]))
    assert decode(plain).damaged is False  # type: ignore[union-attr]


def _damaged_folder(folder: Path, media: Path) -> Path:
    folder.mkdir()
    (folder / "01_bus.jpg").symlink_to(media / "bus.jpg")
    (folder / "02_noise.jpg").write_bytes(np.random.default_rng(2).integers(0, 256, 5000, np.uint8).tobytes())
    data = (media / "zidane.jpg").read_bytes()
    (folder / "03_cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (folder / "04_zidane.jpg").symlink_to(media / "zidane.jpg")
    return folder


def test_damaged_images_are_reported(shared_media: Path, tmp_path: Path) -> None:
    """Defect 7: a random-bytes .jpg was skipped with a log line only; a truncated JPEG passed as healthy."""
    folder = _damaged_folder(tmp_path / "photos", shared_media)
    reports: list[str] = []
    frames = list(decode_frames(str(folder), on_damage=reports.append))
    assert [f.damaged for f in frames] == [False, True, False]
    assert any("02_noise.jpg" in r and "not a readable image" in r for r in reports), reports
    assert any("03_cut.jpg" in r and "truncated JPEG" in r for r in reports), reports


def test_damaged_images_reach_subscribers_and_the_summary(shared_media: Path, shared_models: Path,
                                                        tmp_path: Path) -> None:
    folder = _damaged_folder(tmp_path / "photos", shared_media)
    messages, output, code = run_and_collect(
        ["--source", f"p={folder}", "--models", str(shared_models), "--encoder", "none", "--no-track"],
        free_endpoint())
    assert code == 0, output
    packets = [m for m in messages if isinstance(m, TokenPacket)]
    assert [(p.frame_index, p.damaged) for p in packets] == [(0, False), (1, True), (2, False)]
    errors = [m.detail for m in messages if isinstance(m, StatusMessage) and m.state == "error"]
    assert any("02_noise.jpg" in e for e in errors) and any("03_cut.jpg" in e for e in errors), errors
    assert isinstance(messages[-1], EndOfStream) and messages[-1].reason == "end"
    assert re.search(r"damaged input: .*\bp \(2 part", output), output


def _vop_type(data: bytes) -> str:
    at = data.find(b"\x00\x00\x01\xb6")  # an MPEG-4 VOP start code; the next two bits are its type
    return "IPBS"[data[at + 4] >> 6] if at >= 0 else "?"


def packed_bframes_avi(path: Path, frames: int = 60) -> Path:
    """An Xvid AVI with packed B-frames, as DivX 5 and old Xvid wrote them: a P frame and the B frame after it
    in one chunk, then a tiny N-VOP chunk (the decoder hands out the held-back frame there), and the DivX user
    data that says so (``DivX503b1393p``)."""
    tb = fractions.Fraction(1, 30)
    enc = av.CodecContext.create("mpeg4", "w")
    enc.width, enc.height, enc.pix_fmt = _W, _H, "yuv420p"
    enc.time_base, enc.framerate = tb, 30
    enc.max_b_frames, enc.gop_size = 2, 12
    packets: list[bytes] = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
        frame.pts, frame.time_base = i, tb
        packets += [bytes(p) for p in enc.encode(frame)]
    packets += [bytes(p) for p in enc.encode(None)]
    at = packets[0].find(b"\x00\x00\x01\xb6")
    packets[0] = packets[0][:at] + b"\x00\x00\x01\xb2DivX503b1393p" + packets[0][at:]
    chunks: list[bytes] = []
    i = 0
    while i < len(packets):
        if _vop_type(packets[i]) in "IP" and i + 1 < len(packets) and _vop_type(packets[i + 1]) == "B":
            chunks.append(packets[i] + packets[i + 1])
            i += 2
            while i < len(packets) and _vop_type(packets[i]) == "B":
                chunks.append(packets[i])
                i += 1
            chunks.append(b"\x00\x00\x01\xb6\x7f\xff")  # N-VOP placeholder
        else:
            chunks.append(packets[i])
            i += 1
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = _W, _H, "yuv420p"
        stream.codec_context.codec_tag = "XVID"
        for k, chunk in enumerate(chunks):
            packet = av.Packet(chunk)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, k, k, tb
            packet.is_keyframe = _vop_type(chunk) == "I"
            out.mux(packet)
    return path


def test_packed_bframes_have_monotonic_pts(tmp_path: Path) -> None:
    """Defect 5: pts_s went backwards in a third of the frames (1, 2, 4, 3, 5, 7, 6, ...)."""
    path = packed_bframes_avi(tmp_path / "packed.avi")
    with av.open(str(path)) as c:  # what FFmpeg guesses for them
        raw = [f.pts for f in c.decode(c.streams.video[0])]
    assert any(b < a for a, b in itertools.pairwise(raw)), "the file does not reproduce the defect"
    frames = list(decode_frames(str(path)))
    assert len(frames) == 60
    pts = [f.pts_s for f in frames]
    assert all(p is not None for p in pts)
    assert all(b > a for a, b in itertools.pairwise(pts)), pts  # type: ignore[operator]
    # and the pixels are in presentation order: the square moves 3 px a frame
    xs = [int(np.argmax(f.frame_rgb[55, :, 1] > 200)) for f in frames[:30]]
    assert xs == sorted(xs), xs
