"""Prometheus metrics of a real run, scraped over HTTP from the worker while the run is going."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from frametok import EndOfStream, Subscriber, TokenPacket
from frametok.config import parse_config
from frametok.errors import ConfigError
from frametok.sdk.costs import packet_cost

from ..conftest import free_endpoint, run_cli, start_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_config_is_checked() -> None:
    cfg = parse_config({"sources": [{"id": "a", "uri": "x.mp4"}], "metrics": {"enabled": True, "port": 9999}})
    assert cfg.metrics.enabled and cfg.metrics.port == 9999 and cfg.metrics.host == "127.0.0.1"
    assert not parse_config({"sources": [{"id": "a", "uri": "x.mp4"}]}).metrics.enabled
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        parse_config({"sources": [{"id": "a", "uri": "x.mp4"}], "metrics": {"port": 70000}})


def test_frame_counters_match_the_packets_sent(shared_media: Path, shared_models: Path) -> None:
    """A lossless subscriber receives every packet; the worker's endpoint is scraped during the run,
    and at the end (the run waits for the subscriber to take what it was sent, so the worker is still
    up) its counters equal what the subscriber received."""
    port = _free_port()
    lossless = free_endpoint()
    sub = Subscriber(lossless, mode="lossless", credit=256, timeout_s=300)
    proc = start_cli("run", "--source", f"clip={shared_media / 'vtest_small_3s.mp4'}", "--models", str(shared_models),
                     "--publish", free_endpoint(), "--lossless-endpoint", lossless, "--wait-subscribers", "1",
                     "--metrics-port", str(port), "--no-progress")
    packets: list[TokenPacket] = []
    eos: list[EndOfStream] = []
    mid_run: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    try:
        while len(packets) < 30:
            msg = sub.recv(300)
            assert msg is not None, "no packet within 300 s"
            if isinstance(msg, TokenPacket):
                packets.append(msg)
                if len(packets) == 5:
                    mid_run = scrape(port)
        # Every frame received. What follows (the end-of-stream) stays unread for now: the SDK credits a
        # message when it decodes it, so the worker waits for that credit and its endpoint stays up.
        deadline = time.monotonic() + 30
        final = scrape(port)
        while final.get(("frametok_messages_total", (("kind", "eos"), ("stream", "clip")))) != 1:
            assert time.monotonic() < deadline, "the worker never counted its end-of-stream"
            time.sleep(0.1)
            final = scrape(port)
        for msg in sub:
            if isinstance(msg, EndOfStream):
                eos.append(msg)
            assert not isinstance(msg, TokenPacket), msg
        sub.close()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert len(packets) == 30 and len(eos) == 1

    def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"stream": "clip", **labels}.items())))]

    assert 4 <= value(mid_run, "frametok_frames_total") <= 30
    assert value(final, "frametok_frames_total") == len(packets) == 30
    assert value(final, "frametok_messages_total", kind="frame") == 30
    assert value(final, "frametok_messages_total", kind="eos") == 1
    assert value(final, "frametok_tokens_sent_total", kind="hard") == sum(len(p.detections or ()) for p in packets)
    costs = [packet_cost(p) for p in packets]
    assert value(final, "frametok_tokens_sent_total", kind="soft") == sum(c.soft_tokens_sent for c in costs)
    assert value(final, "frametok_patch_bytes_sent_total") == sum(c.patch_bytes_sent for c in costs)
    full = value(final, "frametok_patch_bytes_uncompressed_total")
    assert full == 30 * 16 * 16 * 384 * 2  # every frame encoded, float16
    assert value(final, "frametok_patch_bytes_sent_total") < full  # the compression saved something
    assert value(final, "frametok_frames_dropped_total") == 0
    assert value(final, "frametok_stage_latency_seconds_count", stage="total") == 30
    assert value(final, "frametok_stage_latency_seconds_count", stage="infer") == 30
    assert value(final, "frametok_stream_state", frametok_stream_state="ended") == 1
    batches = final[("frametok_worker_batch_size_count", (("worker", "0"),))]
    assert final[("frametok_worker_batch_size_sum", (("worker", "0"),))] == 30 and 30 / 4 <= batches <= 30
    assert final[("frametok_worker_model_seconds_count", (("model", "detector"), ("worker", "0")))] == batches
    assert final[("frametok_worker_model_seconds_count", (("model", "encoder"), ("worker", "0")))] == batches
    assert value(final, "frametok_bytes_sent_total") > 0


def test_metrics_port_in_use_is_a_clear_error(shared_media: Path, shared_models: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "--source", str(shared_media / "vtest_small_3s.mp4"), "--models", str(shared_models),
                         "--encoder", "none", "--publish", free_endpoint(), "--metrics-port", str(port),
                         "--no-progress", timeout=300)
    # checked before anything starts (exit 2, naming the endpoint); the worker says the same (exit 1) if the port
    # is taken between that check and its start
    assert result.returncode == 2, result.stdout + result.stderr
    assert "metrics" in result.stderr and f"127.0.0.1:{port}" in result.stderr
