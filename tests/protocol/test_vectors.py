"""The wire format pinned by test vectors, an independent reader, and docs/protocol.md.

(a) the independent reader (written from docs/protocol.md only) decodes every valid vector to its
expected content and rejects every invalid one; (b) frametok.packet.decode agrees; (c) re-encoding
what decode returns gives the vector bytes back, so any change of the writer's output fails here;
(d) the vectors on disk are exactly what make_vectors.py generates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frametok.errors import ProtocolError
from frametok.packet import PROTOCOL_VERSION, decode, encode

from . import make_vectors
from .reader import Malformed, read

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
VECTORS = make_vectors.VECTORS_DIR


def _load(name: str) -> tuple[list[bytes], dict[str, Any]]:
    folder = VECTORS / name
    count = len(list(folder.glob("part-*.bin")))
    parts = [(folder / f"part-{i}.bin").read_bytes() for i in range(count)]
    return parts, json.loads((folder / "expected.json").read_text(encoding="utf-8"))


def _names(valid: bool) -> list[str]:
    names = sorted(p.name for p in VECTORS.iterdir() if p.is_dir())
    return [n for n in names if json.loads((VECTORS / n / "expected.json").read_text("utf-8"))["valid"] is valid]


VALID = _names(True)
INVALID = _names(False)
CANONICAL = [n for n in VALID if _load(n)[1]["canonical"]]


def test_the_vectors_cover_the_brief() -> None:
    assert {"frame_detections_f16", "frame_empty", "frame_tracks_f32", "status", "eos", "info",
            "frame_newer_minor"} <= set(VALID)
    assert {"invalid_major", "invalid_size_mismatch", "invalid_dtype", "invalid_truncated"} <= set(INVALID)
    total = sum(f.stat().st_size for f in VECTORS.rglob("*") if f.is_file())
    assert total < 200_000


# --------------------------------------------------------------------------- (a) independent reader


@pytest.mark.parametrize("name", VALID)
def test_reader_decodes_valid_vector(name: str) -> None:
    parts, expected = _load(name)
    assert read(parts) == expected["content"]


@pytest.mark.parametrize("name", INVALID)
def test_reader_rejects_invalid_vector(name: str) -> None:
    parts, expected = _load(name)
    with pytest.raises(Malformed) as info:
        read(parts)
    assert info.value.code == expected["error"]


# --------------------------------------------------------------------------- (b) frametok.packet.decode


@pytest.mark.parametrize("name", VALID)
def test_decode_gives_the_expected_content(name: str) -> None:
    parts, expected = _load(name)
    message = decode(parts)
    assert make_vectors.content(message) == expected["content"]
    if expected["content"]["buffers"]:  # dtypes survive as such (float16 stays float16)
        got = make_vectors.content(message)["buffers"]
        assert {k: v["dtype"] for k, v in got.items()} == {
            k: v["dtype"] for k, v in expected["content"]["buffers"].items()}


@pytest.mark.parametrize("name", INVALID)
def test_decode_rejects_invalid_vector(name: str) -> None:
    parts, _ = _load(name)
    with pytest.raises(ProtocolError):
        decode(parts)


def test_decode_accepts_zmq_frames() -> None:
    zmq = pytest.importorskip("zmq")
    parts, expected = _load("frame_detections_f16")
    frames = [zmq.Frame(p) for p in parts]
    assert make_vectors.content(decode(frames)) == expected["content"]


# --------------------------------------------------------------------------- (c) the writer's bytes


@pytest.mark.parametrize("name", CANONICAL)
def test_reencoding_reproduces_the_vector_bytes(name: str) -> None:
    parts, _ = _load(name)
    assert [bytes(p) for p in encode(decode(parts))] == parts


def test_newer_minor_reencodes_as_version_1_0_without_the_unknowns() -> None:
    parts, _ = _load("frame_newer_minor")
    plain, _ = _load("frame_tracks_f32")
    assert [bytes(p) for p in encode(decode(parts))] == plain


def test_the_vectors_speak_the_current_version() -> None:
    for name in CANONICAL:
        assert json.loads(_load(name)[0][1])["v"] == list(PROTOCOL_VERSION) == [1, 3]


# --------------------------------------------------------------------------- (1.3) instance masks

READER_1_2 = "df7f2cb0e760866a39ba2ae9b6b332f02a8a5ff4"  # the last commit of tests/protocol/reader.py at 1.2


def test_mask_vectors_pin_the_layout() -> None:
    """det_mask (3, 6, 2): 6x16 cells a box; cell (0, 15) is set in every vector mask (bit 0 of row 0's last
    byte), the cells unpack most significant bit first, and frametok reads them back so."""
    from frametok.packet import TokenPacket

    parts, expected = _load("frame_masks")
    buf = expected["content"]["buffers"]["det_mask"]
    assert buf["dtype"] == "uint8" and buf["shape"] == [3, 6, 2]
    assert all(row[0][1] & 0x01 for row in buf["data"])
    packet = decode(parts)
    assert isinstance(packet, TokenPacket) and packet.detections is not None
    dets = packet.detections
    assert dets.mask_hw == (6, 16)
    cells = dets.box_masks()
    assert cells.shape == (3, 6, 16) and cells[:, 0, 15].all()
    assert np.array_equal(np.packbits(cells, axis=-1), np.asarray(buf["data"], np.uint8))


def test_mask_areas_agree_with_the_independent_reader() -> None:
    """§5.3's pixels: frametok's areas and full-frame masks equal those of the reader written from the spec."""
    from frametok.packet import TokenPacket

    from .reader import mask_area

    parts, expected = _load("frame_masks")
    packet = decode(parts)
    assert isinstance(packet, TokenPacket) and packet.detections is not None
    dets = packet.detections
    areas = dets.mask_areas(packet.size_wh)
    assert areas.tolist() == [mask_area(expected["content"], i) for i in range(len(dets))]
    assert (areas > 100).all()
    for i in range(len(dets)):
        full = dets.frame_mask(i, packet.size_wh)
        assert full.shape == (480, 640) and int(full.sum()) == int(areas[i])
        ys, xs = np.nonzero(full)  # inside the box
        x1, y1, x2, y2 = dets.xyxy[i]
        assert (xs + 0.5 >= x1).all() and (xs + 0.5 < x2).all() and (ys + 0.5 >= y1).all() and (ys + 0.5 < y2).all()


def test_a_1_2_reader_reads_the_1_3_vectors(tmp_path: Path) -> None:
    """A decoder of 1.2 (this repository's reader.py before 1.3) decodes every valid vector, det_mask left out,
    and rejects the invalid ones but for det_mask's own rules: the minor version adds only what it may ignore."""
    import importlib.util
    import subprocess

    shown = subprocess.run(["git", "show", f"{READER_1_2}:tests/protocol/reader.py"], cwd=ROOT,
                           capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"no git history with reader.py at 1.2 ({READER_1_2[:12]}): {shown.stderr.strip()[:200]}")
    (tmp_path / "reader_1_2.py").write_text(shown.stdout)
    spec = importlib.util.spec_from_file_location("reader_1_2", tmp_path / "reader_1_2.py")
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    assert "1.2" in (old.__doc__ or "")
    for name in VALID:
        parts, expected = _load(name)
        want = json.loads(json.dumps(expected["content"]))
        want["buffers"].pop("det_mask", None)
        assert old.read(parts) == want, name
    for name in INVALID:
        parts, expected = _load(name)
        if name.startswith("invalid_mask_"):  # a 1.2 decoder does not know det_mask: valid to it
            assert "det_mask" not in old.read(parts)["buffers"]
            continue
        with pytest.raises(old.Malformed):
            old.read(parts)


# --------------------------------------------------------------------------- (d) regenerated vectors


def test_vectors_on_disk_are_what_make_vectors_generates() -> None:
    want = make_vectors.render(make_vectors.build())
    have = {f.relative_to(VECTORS).as_posix(): f.read_bytes() for f in VECTORS.rglob("*") if f.is_file()}
    assert sorted(have) == sorted(want), "run: python tests/protocol/make_vectors.py"
    for rel in want:
        assert have[rel] == want[rel], f"{rel} differs; run: python tests/protocol/make_vectors.py"


def test_make_vectors_is_deterministic() -> None:
    assert make_vectors.render(make_vectors.build()) == make_vectors.render(make_vectors.build())


# --------------------------------------------------------------------------- docs/protocol.md


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_worked_example_header_is_the_writers() -> None:
    parts = [bytes(p) for p in encode(make_vectors.worked_example())]
    block = re.search(r"<!-- worked-example-header[^\n]*\n```json\n(.*?)\n```", _doc(), re.S)
    assert block is not None
    assert json.loads(block.group(1)) == json.loads(parts[1])
    assert f"compact, {len(parts[1])} bytes" in _doc()


def test_worked_example_parts_table_is_the_writers() -> None:
    parts = [bytes(p) for p in encode(make_vectors.worked_example())]
    after = _doc().split("<!-- worked-example-parts -->", 1)[1].strip().splitlines()
    table = after[: next(i for i, line in enumerate(after) if not line.startswith("|"))]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [int(r[0]) for r in rows] == list(range(len(parts)))
    for row, part in zip(rows, parts, strict=True):
        assert int(row[2]) == len(part), row
        shown = re.match(r"`([0-9a-f ]+)`", row[4])
        if shown:
            hexes = shown.group(1)
            assert part[: len(hexes.split())].hex(" ") == hexes, row
    # the worked example's claim about where a patch token starts
    pkt = make_vectors.worked_example()
    assert pkt.patch_tokens is not None
    start = (3 * 16 + 5) * 384 * 2
    assert parts[6][start : start + 768] == np.ascontiguousarray(pkt.patch_tokens[3, 5]).tobytes()


def test_the_documented_rule_codes_cover_the_vectors() -> None:
    doc = _doc()
    for name in INVALID:
        assert f"`{_load(name)[1]['error']}`" in doc, name


def test_the_document_lists_the_writers_enumerations() -> None:
    from frametok.packet import END_REASONS, MAX_BUFFERS, MAX_HEADER_BYTES, MAX_NDIM, STATUS_STATES
    from frametok.packet._messages import _DTYPES

    doc = _doc()
    for word in (*_DTYPES, *END_REASONS, *STATUS_STATES):
        assert f"`{word}`" in doc, word
    assert MAX_HEADER_BYTES == 1_048_576 and "1 048 576 bytes" in doc
    assert MAX_BUFFERS == 64 and MAX_NDIM == 4
