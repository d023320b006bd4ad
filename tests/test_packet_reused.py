"""``reused`` (protocol 1.2): a still frame's packet says its tokens are the last ones; both decode paths agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from frametok import ProtocolError, TokenPacket, decode, encode
from frametok.packet._decode import _decode_reference
from frametok.packet._fast import _decode_fast


def _packet(reused: bool) -> TokenPacket:
    return TokenPacket("cam", 3, 0.1, (64, 48), policy="live", seq=4, reused=reused,
                       context_token=np.ones(8, np.float16))


@pytest.mark.parametrize("reused", [False, True])
def test_reused_roundtrips_on_both_paths(reused: bool) -> None:
    parts = [bytes(p) for p in encode(_packet(reused))]
    header = json.loads(parts[1])
    assert ("reused" in header) is reused  # omitted for frames the models ran on
    fast, ref = _decode_fast(parts), _decode_reference(parts)
    assert isinstance(fast, TokenPacket) and isinstance(ref, TokenPacket)
    assert fast.reused is ref.reused is reused
    assert decode(parts).reused is reused  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [b"1", b'"yes"', b"null"])
def test_a_reused_that_is_not_a_boolean(value: bytes) -> None:
    parts = [bytes(p) for p in encode(_packet(False))]
    parts[1] = parts[1][:-1] + b',"reused":' + value + b"}"
    if value == b"null":  # an optional field given as null reads as absent, on both paths
        assert decode(parts).reused is False  # type: ignore[union-attr]
        assert _decode_reference(parts).reused is False  # type: ignore[union-attr]
        return
    with pytest.raises(ProtocolError):
        decode(parts)
    with pytest.raises(ProtocolError):
        _decode_reference(parts)
