"""Damaged input with real processes, sockets, video and models: a truncated and a corrupted copy of
vtest.avi run next to a healthy stream; the healthy one loses nothing, the damaged ones deliver what is
decodable, report the damage as status messages, and the run exits 0 naming them."""

from __future__ import annotations

import random
import re
from pathlib import Path

import av
import pytest

from frametok import EndOfStream, StatusMessage, TokenPacket
from frametok.packet import Message
from frametok.streamer.source.decode import decode_frames

from ..conftest import free_endpoint
from .test_pipeline import run_and_collect


def head_copy(src: Path, dst: Path, packets: int) -> Path:
    """The first ``packets`` packets of ``src``, remuxed unchanged into an AVI (a shorter real vtest.avi)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="avi") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        n = 0
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            if n >= packets:
                break
            packet.stream = copy
            out.mux(packet)
            n += 1
    return dst


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])  # cut mid-file, mid-packet
    return dst


def corrupted_copy(src: Path, dst: Path, span: int) -> Path:
    """Random bytes over ``span`` bytes in the middle of the file (64 of every 997)."""
    data = bytearray(src.read_bytes())
    rng = random.Random(1)
    mid = len(data) // 2
    for at in range(mid, mid + span, 997):
        data[at : at + 64] = bytes(rng.randrange(256) for _ in range(64))
    dst.write_bytes(bytes(data))
    return dst


def _by_stream(messages: list[Message], sid: str) -> list[Message]:
    return [m for m in messages if m.stream_id == sid]


def _frames(messages: list[Message]) -> list[int]:
    return [m.frame_index for m in messages if isinstance(m, TokenPacket)]


def test_decoder_skips_damaged_parts_and_reports_them(shared_media: Path, tmp_path: Path) -> None:
    clip = head_copy(shared_media / "vtest.avi", tmp_path / "head.avi", 120)
    bad = corrupted_copy(clip, tmp_path / "bad.avi", 40_000)
    reports: list[str] = []
    n = sum(1 for _ in decode_frames(str(bad), on_damage=reports.append))
    assert 100 <= n < 120
    assert reports and all("damaged data" in r or "missing" in r for r in reports)
    healthy: list[str] = []
    assert sum(1 for _ in decode_frames(str(clip), on_damage=healthy.append)) == 120 and not healthy


def _check_damaged_run(messages: list[Message], output: str, code: int, total: int) -> None:
    assert code == 0, output
    ok = _by_stream(messages, "ok")
    assert _frames(ok) == list(range(total))
    assert isinstance(ok[-1], EndOfStream) and ok[-1].reason == "end" and ok[-1].frames == total
    assert not any(isinstance(m, StatusMessage) and m.state == "error" for m in ok)

    cut = _by_stream(messages, "cut")
    cut_frames = _frames(cut)
    assert cut_frames == list(range(len(cut_frames)))  # what was decodable, in order, once
    assert 0.4 * total <= len(cut_frames) < 0.55 * total
    assert isinstance(cut[-1], EndOfStream) and cut[-1].reason == "error" and "truncated" in cut[-1].detail
    assert any(isinstance(m, StatusMessage) and m.state == "error" and "truncated" in m.detail for m in cut)

    bad = _by_stream(messages, "bad")
    bad_frames = _frames(bad)
    assert bad_frames == list(range(len(bad_frames)))
    assert 0.85 * total <= len(bad_frames) < total
    states = [m.state for m in bad if isinstance(m, StatusMessage)]
    damage = [m.detail for m in bad if isinstance(m, StatusMessage) and m.state == "error"]
    assert damage and all("damaged data" in d or "missing" in d for d in damage)
    assert states[-1] == "online" or "missing" in damage[-1]  # decoding went on after the damage
    assert isinstance(bad[-1], EndOfStream) and bad[-1].reason == "end"
    # frames decoded before the damage arrive before its status report
    first_error = next(i for i, m in enumerate(bad) if isinstance(m, StatusMessage) and m.state == "error")
    assert any(isinstance(m, TokenPacket) for m in bad[:first_error])

    assert re.search(r"damaged input: .*\bbad \(\d+ part\(s\) skipped\)", output), output
    assert "failed: cut (" in output and "truncated" in output


def test_damaged_inputs_beside_a_healthy_stream(shared_media: Path, shared_models: Path, tmp_path: Path) -> None:
    """Short copies of vtest.avi (its first 120 packets, remuxed) keep this test quick on a CPU."""
    clip = head_copy(shared_media / "vtest.avi", tmp_path / "head.avi", 120)
    cut = truncated_copy(clip, tmp_path / "cut.avi")
    bad = corrupted_copy(clip, tmp_path / "bad.avi", 40_000)
    endpoint = free_endpoint()
    messages, output, code = run_and_collect(
        ["--source", f"ok={clip}", "--source", f"cut={cut}", "--source", f"bad={bad}",
         "--models", str(shared_models), "--encoder", "none", "--no-track"], endpoint)
    _check_damaged_run(messages, output, code, 120)


@pytest.mark.slow
def test_damaged_full_vtest_beside_a_healthy_stream(shared_media: Path, shared_models: Path,
                                                      tmp_path: Path) -> None:
    """The whole of vtest.avi (795 frames), cut mid-file and corrupted in the middle."""
    src = shared_media / "vtest.avi"
    cut = truncated_copy(src, tmp_path / "cut.avi")
    bad = corrupted_copy(src, tmp_path / "bad.avi", 200_000)
    endpoint = free_endpoint()
    messages, output, code = run_and_collect(
        ["--source", f"ok={src}", "--source", f"cut={cut}", "--source", f"bad={bad}",
         "--models", str(shared_models), "--encoder", "none", "--no-track"], endpoint)
    _check_damaged_run(messages, output, code, 795)
