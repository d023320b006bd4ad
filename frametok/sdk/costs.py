"""What a frame packet costs on the wire: tokens and bytes, as sent and as they would be without the
cross-frame compression of the patch grid (shared by the Prometheus metrics and the viewer)."""

from __future__ import annotations

from dataclasses import dataclass

from ..packet import TokenPacket, encode

__all__ = ["PacketCost", "packet_cost", "wire_bytes"]


@dataclass(frozen=True)
class PacketCost:
    """One frame packet's tokens and patch-grid bytes.

    ``hard_tokens``: detections. ``soft_tokens_sent``: context, content, query and the patch tokens
    actually sent; ``soft_tokens_full``: the same with the whole patch grid. ``patch_bytes_sent`` and
    ``patch_bytes_full``: bytes of the patch buffers sent (keyframe grid, or delta index + values +
    bias; 0 for a skip) and of a whole grid. ``preview_bytes``: the JPEG preview.
    """

    hard_tokens: int = 0
    soft_tokens_sent: int = 0
    soft_tokens_full: int = 0
    patch_bytes_sent: int = 0
    patch_bytes_full: int = 0
    preview_bytes: int = 0

    @property
    def tokens_sent(self) -> int:
        return self.hard_tokens + self.soft_tokens_sent

    @property
    def tokens_full(self) -> int:
        return self.hard_tokens + self.soft_tokens_full


def packet_cost(packet: TokenPacket) -> PacketCost:
    hard = len(packet.detections) if packet.detections is not None else 0
    other = 0  # soft tokens that are never compressed
    if packet.context_token is not None:
        other += 1
    if packet.content_tokens is not None:
        other += int(packet.content_tokens.shape[0] * packet.content_tokens.shape[1])
    if packet.query_tokens is not None:
        other += int(packet.query_tokens.shape[0])
    sent_tokens = full_tokens = sent_bytes = full_bytes = 0
    update = packet.grid_update
    if update is not None:
        gh, gw = update.grid_hw
        full_tokens = gh * gw
        sent_tokens = update.tokens_sent
        ref = update.values if update.values is not None else packet.patch_tokens
        if ref is None:
            ref = packet.context_token
        if ref is not None:
            full_bytes = full_tokens * int(ref.shape[-1]) * ref.dtype.itemsize
        for arr in (update.values, update.index, update.bias):
            if arr is not None:
                sent_bytes += int(arr.nbytes)
    elif packet.patch_tokens is not None:
        gh, gw = packet.patch_tokens.shape[:2]
        full_tokens = sent_tokens = int(gh * gw)
        full_bytes = sent_bytes = int(packet.patch_tokens.nbytes)
    preview = len(packet.preview_jpeg) if packet.preview_jpeg is not None else 0
    return PacketCost(hard, other + sent_tokens, other + full_tokens, sent_bytes, full_bytes, preview)


def wire_bytes(packet: TokenPacket) -> int:
    """Bytes of the packet's ZeroMQ message (topic, header and buffers), as the publisher sent it."""
    frames = encode(packet, max(packet.seq, 0))
    return sum(len(f) if isinstance(f, bytes) else f.nbytes for f in frames)
