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
