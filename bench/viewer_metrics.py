"""What the Prometheus metrics cost the worker, and what the viewer's server adds per packet.

Prints one JSON object. Runs ``frametok run`` once on a clip (previews on) with a lossless subscriber
that keeps every packet, then replays those real packets in this process through:

* ``RunMetrics.on_sent`` (what the worker's publisher calls per message with metrics on) and
  ``RunMetrics.on_batch``: microseconds per packet, and that as a share of the worker's time per
  frame in the same run (first to last publish over the frames in between, from the packets' timestamps);
* the viewer's ``Board.apply`` (token/byte accounting, preview to base64) and one snapshot as the JSON
  an SSE event carries: microseconds per packet, and the event's size.

The browser's part (receive, decode the JPEG, draw) is measured by tests/viewer (the page records
draw time minus publish time per frame; see tests/artifacts/viewer_clip.json).

    python bench/viewer_metrics.py --models ../shared/models [--clip ../shared/media/vtest_small_3s.mp4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRAMETOK_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))

from frametok import Subscriber, TokenPacket  # noqa: E402
from frametok.sdk.costs import wire_bytes  # noqa: E402
from frametok.streamer.delivery.metrics import RunMetrics  # noqa: E402
from frametok.viewer.state import Board  # noqa: E402


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def collect(clip: Path, models: Path) -> list[TokenPacket]:
    lossless = _free_endpoint()
    with Subscriber(lossless, mode="lossless", timeout_s=600) as sub:
        proc = subprocess.Popen([sys.executable, "-m", "frametok", "run", "--source", f"clip={clip}", "--models",
                                 str(models), "--publish", _free_endpoint(), "--lossless-endpoint", lossless,
                                 "--wait-subscribers", "1", "--preview", "--no-progress"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        packets = list(sub.packets())
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"frametok run failed: {err}")
    return packets


def per_call_us(fn: object, items: list[TokenPacket], repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)  # type: ignore[operator]
    return (time.perf_counter() - t0) / (repeat * len(items)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--clip", type=Path, default=SHARED / "media" / "vtest_small_3s.mp4")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    packets = collect(args.clip, args.models)
    sizes = {id(p): wire_bytes(p) for p in packets}
    publish = np.array([p.timestamps.t_publish_ns for p in packets], np.float64)
    frame_ms = float(publish[-1] - publish[0]) / (len(packets) - 1) / 1e6  # the worker's time per frame

    metrics = RunMetrics(["clip"], 4, process_metrics=False)
    on_sent_us = per_call_us(lambda p: metrics.on_sent(p, sizes[id(p)], p.timestamps.t_publish_ns), packets,
                             args.repeat)
    t0 = time.perf_counter()
    for _ in range(args.repeat * len(packets)):
        metrics.on_batch(0, 1, 0.01, 0.02, {}, {})
    on_batch_us = (time.perf_counter() - t0) / (args.repeat * len(packets)) * 1e6

    board = Board()
    apply_us = per_call_us(lambda p: board.apply(p, time.time_ns()), packets, args.repeat)
    t0 = time.perf_counter()
    event = b""
    for _ in range(args.repeat):
        for snap in board.changes({}, 0.0):
            event = json.dumps(snap).encode()
    snapshot_us = (time.perf_counter() - t0) / args.repeat * 1e6
    print(json.dumps({
        "packets": len(packets),
        "bytes_per_packet": round(float(np.mean(list(sizes.values())))),
        "preview_bytes_per_packet": round(float(np.mean([len(p.preview_jpeg or b"") for p in packets]))),
        "worker_ms_per_frame": round(frame_ms, 2),
        "metrics": {"on_sent_us": round(on_sent_us, 1), "on_batch_us": round(on_batch_us, 1),
                    "share_of_frame_time": round((on_sent_us + on_batch_us) / 1000 / frame_ms, 5)},
        "viewer_server": {"apply_us": round(apply_us, 1), "snapshot_json_us": round(snapshot_us, 1),
                          "event_bytes": len(event)},
    }))


if __name__ == "__main__":
    main()
