import json

import numpy as np
import pytest

from frametok import (
    Detections,
    EndOfStream,
    ProtocolError,
    StatusMessage,
    StreamInfo,
    Timestamps,
    TokenPacket,
    decode,
    encode,
)
from frametok.packet import stamp, topic_for


def _packet(n: int = 3) -> TokenPacket:
    rng = np.random.default_rng(0)
    det = Detections(rng.uniform(0, 100, (n, 4)), rng.uniform(0, 1, n), np.arange(n))
    return TokenPacket(
        stream_id="cam1", frame_index=7, pts_s=0.7, size_wh=(640, 480), policy="file", dropped=2,
        timestamps=Timestamps(1, 2, 3), detections=det,
        context_token=rng.standard_normal(8).astype(np.float16),
        patch_tokens=rng.standard_normal((2, 3, 8)).astype(np.float16),
        models={"detector": "yolo@abc"}, seq=5,
    )


def _wire(parts: list) -> list[bytes]:
    return [bytes(p) for p in parts]


def test_frame_roundtrip() -> None:
    pkt = _packet()
    out = decode(_wire(encode(pkt)))
    assert isinstance(out, TokenPacket)
    got = (out.stream_id, out.frame_index, out.pts_s, out.size_wh, out.dropped, out.seq)
    assert got == ("cam1", 7, 0.7, (640, 480), 2, 5)
    assert out.timestamps == pkt.timestamps
    assert out.detections is not None and pkt.detections is not None
    np.testing.assert_array_equal(out.detections.xyxy, pkt.detections.xyxy)
    np.testing.assert_array_equal(out.detections.class_id, pkt.detections.class_id)
    assert out.detections.track_id is None
    assert out.patch_tokens is not None and out.patch_tokens.dtype == np.float16
    np.testing.assert_array_equal(out.patch_tokens, pkt.patch_tokens)
    assert dict(out.models) == {"detector": "yolo@abc"}


def test_other_kinds_roundtrip() -> None:
    for msg in (StatusMessage("a", "online", "1x1", 5, seq=1), EndOfStream("a", 10, "error", "boom", seq=2),
                StreamInfo("a", "live", {"detector": {"class_names": ["x"]}}, seq=0)):
        assert decode(_wire(encode(msg))) == msg


def test_topic_is_prefix_safe() -> None:
    assert topic_for("cam1") == b"cam1/"
    assert not topic_for("cam10").startswith(topic_for("cam1"))


def test_empty_detections_and_no_tokens() -> None:
    pkt = TokenPacket("s", 0, None, (10, 10), detections=Detections.empty(), seq=0)
    out = decode(_wire(encode(pkt)))
    assert isinstance(out, TokenPacket) and out.detections is not None and len(out.detections) == 0
    assert out.context_token is None and out.pts_s is None


def test_unstamped_message_is_refused() -> None:
    with pytest.raises(ValueError, match="sequence number"):
        encode(StatusMessage("a", "online"))


def test_stamp_sets_seq_and_publish_time() -> None:
    out = stamp(_packet(), 42, 99)
    assert isinstance(out, TokenPacket) and out.seq == 42 and out.timestamps.t_publish_ns == 99


@pytest.mark.parametrize("bad", [
    {"xyxy": np.zeros((2, 3)), "score": np.zeros(2), "class_id": np.zeros(2)},
    {"xyxy": np.zeros((2, 4)), "score": np.zeros(3), "class_id": np.zeros(2)},
    {"xyxy": np.zeros((2, 4)), "score": np.zeros(2), "class_id": np.zeros(2), "track_id": np.zeros(1)},
])
def test_detections_check_shapes(bad: dict) -> None:
    with pytest.raises(ValueError, match="expected shape"):
        Detections(**bad)


def _mutate_header(parts: list[bytes], **changes) -> list[bytes]:
    header = json.loads(parts[1])
    header.update(changes)
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


@pytest.mark.parametrize("mutate", [
    lambda p: p[:1],
    lambda p: [p[0], b"\xff\xfe", *p[2:]],
    lambda p: [p[0], b"[1,2]", *p[2:]],
    lambda p: p[:-1],
    lambda p: [*p[:-1], p[-1][:-2]],
    lambda p: [b"other/", *p[1:]],
    lambda p: _mutate_header(p, v=[2, 0]),
    lambda p: _mutate_header(p, kind="nope"),
    lambda p: _mutate_header(p, seq=-1),
    lambda p: _mutate_header(p, size_wh=[0, 3]),
    lambda p: _mutate_header(p, buffers=[{"name": "det_xyxy", "dtype": "complex64", "shape": [3, 4]}]),
    lambda p: _mutate_header(p, buffers=[{"name": "x", "dtype": "uint8", "shape": [10**12, 10**12]}] * 5),
])
def test_malformed_messages_raise_protocol_error(mutate) -> None:
    with pytest.raises(ProtocolError):
        decode(mutate(_wire(encode(_packet()))))


def test_unknown_minor_version_and_fields_are_accepted() -> None:
    parts = _mutate_header(_wire(encode(_packet())), v=[1, 9], future_field={"x": 1})
    assert isinstance(decode(parts), TokenPacket)


# --------------------------------------------------------------------------- the fast path vs the reference
# decode() parses with msgspec and hands whatever it cannot vouch for to the reference decoder (every §9
# check, in order, with its message). The fast path must never accept what the reference rejects, nor
# decode anything differently.

import dataclasses  # noqa: E402
from typing import Any  # noqa: E402

import zmq  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from frametok.packet._decode import _decode_reference  # noqa: E402
from frametok.packet._fast import _decode_fast, _Slow  # noqa: E402
from tests.protocol import make_vectors  # noqa: E402
from tests.protocol.test_fuzz import FUZZ, mutated, random_headers, valid_messages  # noqa: E402


def _agree(parts: list[Any]) -> None:
    try:
        fast = _decode_fast(parts)
    except (_Slow, Exception):
        return  # the reference decides: decode() is the reference here
    ref = _decode_reference(parts)  # raises if the fast path accepted what the reference rejects
    assert type(fast) is type(ref)
    assert make_vectors.content(fast) == make_vectors.content(ref)
    assert set(vars(fast)) == {f.name for f in dataclasses.fields(fast)}
    for f in dataclasses.fields(fast):
        a, b = getattr(fast, f.name), getattr(ref, f.name)
        if isinstance(a, np.ndarray) or dataclasses.is_dataclass(a):
            continue  # compared through content()
        assert a == b and type(a) is type(b), f.name


@settings(FUZZ, max_examples=1500)
@given(st.one_of(mutated(), random_headers(), valid_messages()))
def test_fast_path_agrees_with_the_reference(parts: list[bytes]) -> None:
    _agree(parts)
    _agree([zmq.Frame(p) for p in parts])


def _header(parts: list[bytes], text: bytes) -> list[bytes]:
    return [parts[0], text, *parts[2:]]


def test_fast_path_edge_cases() -> None:
    parts = _wire(encode(_packet()))
    head = parts[1]
    cases = {
        "integer as 12.0": head.replace(b'"frame":7', b'"frame":7.0'),
        "integer as 7e0": head.replace(b'"frame":7', b'"frame":7e0'),
        "boolean as number": head.replace(b'"dropped":2', b'"dropped":true'),
        "NaN": head.replace(b'"pts_s":0.7', b'"pts_s":NaN'),
        "Infinity in an unknown field": head[:-1] + b',"x":Infinity}',
        "1e400": head.replace(b'"pts_s":0.7', b'"pts_s":1e400'),
        "repeated kind": head[:-1] + b',"kind":"status"}',
        "invalid UTF-8 in an unknown field": head[:-1] + b',"x":"\xff"}',
        "byte-order mark": b"\xef\xbb\xbf" + head,
        "over 1 MiB": head[:-1] + b" " * (1 << 20) + b"}",
    }
    for what, text in cases.items():
        with pytest.raises(ProtocolError):
            decode(_header(parts, text))
        with pytest.raises(Exception):  # noqa: B017
            _decode_fast(_header(parts, text))
        assert what
    # what the reference accepts and msgspec does not (a lone surrogate escape): decode() still accepts it
    status = _wire(encode(StatusMessage("a", "online", "x", 5, seq=1)))
    lone = _header(status, status[1].replace(b'"detail":"x"', b'"detail":"\\ud800"'))
    got = decode(lone)
    assert isinstance(got, StatusMessage) and got.detail == "\ud800"
    # a repeated key keeps the last value, as the reference does
    last = decode(_header(parts, head[:-1] + b',"frame":9}'))
    assert isinstance(last, TokenPacket) and last.frame_index == 9


@pytest.mark.parametrize("pts", [0.1, 1e16, 1e-05, 123456789.123, 2.5e-300, 7, None])
def test_encoder_writes_what_json_writes(pts: float | None) -> None:
    pkt = replace_pts = dataclasses.replace(_packet(), pts_s=pts)
    head = bytes(encode(pkt)[1])
    header = json.loads(head)
    assert head == json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    assert replace_pts.pts_s == pts
    for detail in ("plain", "café", "del\x7f", "ctl\x00\n\t\"\\"):
        status = bytes(encode(StatusMessage("a", "online", detail, 5, seq=1))[1])
        assert status == json.dumps(json.loads(status), separators=(",", ":"), allow_nan=False).encode()
        assert status.isascii() and b"\x7f" not in status
    with pytest.raises(ValueError):
        encode(dataclasses.replace(_packet(), pts_s=float("nan")))


def test_buffers_are_views_of_the_arrays_in_wire_byte_order() -> None:
    # the same float16 under another dtype object (np.dtype("float16") and its "<" variant are equal but not
    # the same object): both go out as views of the array, not copies
    grid = np.arange(2 * 3 * 8, dtype=np.float16).reshape(2, 3, 8)
    for patches in (grid, grid.view(np.dtype("float16").newbyteorder("<"))):
        frames = encode(dataclasses.replace(_packet(), patch_tokens=patches))
        assert np.shares_memory(np.frombuffer(frames[-1], np.uint8), grid)
        assert bytes(frames[-1]) == grid.tobytes()
    # big-endian and non-contiguous arrays are converted: little-endian, C order
    swapped = grid.astype(grid.dtype.newbyteorder(">"))
    strided = np.ascontiguousarray(np.swapaxes(grid, 0, 1)).swapaxes(0, 1)
    for patches in (swapped, strided):
        frames = encode(dataclasses.replace(_packet(), patch_tokens=patches))
        assert bytes(frames[-1]) == grid.tobytes()
        out = decode(_wire(frames))
        assert isinstance(out, TokenPacket) and out.patch_tokens is not None
        np.testing.assert_array_equal(out.patch_tokens, grid)
    with pytest.raises(ValueError, match="'patches': dtype bool"):
        encode(dataclasses.replace(_packet(), patch_tokens=np.zeros((2, 3, 8), bool)))


def test_fast_path_buffer_shapes_go_to_the_reference() -> None:
    # a multi-dim buffer whose bytes do not fill its shape, and an empty one whose other dims are too large:
    # the fast path does not accept them, the reference names the buffer
    parts = _wire(encode(_packet()))
    head = parts[1]
    assert b'"shape":[2,3,8]' in head
    too_many = _header(parts, head.replace(b'"shape":[2,3,8]', b'"shape":[2,3,9]'))
    empty_huge = _header(parts, head.replace(b'"shape":[2,3,8]', b'"shape":[0,4611686018427387904,8]'))
    empty_huge[-1] = b""
    for bad, error in ((too_many, "'patches': shape \\[2, 3, 9\\] of float16 needs 108 bytes, got 96"),
                       (empty_huge, "'patches': shape .* is too large")):
        with pytest.raises(Exception):  # noqa: B017  (_Slow, numpy's ValueError: either way not accepted)
            _decode_fast(bad)
        with pytest.raises(ProtocolError, match=error):
            decode(bad)
    # an empty multi-dim buffer of a sane shape is accepted by both, as a (0, 3, 8) view
    empty = _header(parts, head.replace(b'"shape":[2,3,8]', b'"shape":[0,3,8]'))
    empty[-1] = b""
    for decoder in (_decode_fast, _decode_reference):
        got = decoder(empty)
        assert isinstance(got, TokenPacket) and got.patch_tokens is not None and got.patch_tokens.shape == (0, 3, 8)
