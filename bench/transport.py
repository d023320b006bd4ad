"""frametok's transport against raw pyzmq moving the same bytes, in one run. Prints one JSON object.

Two packet sizes: hard tokens only (~1 KB: 20 detections) and a full grid (~200 KB: 16x16x384
float16 patches + context). "frametok" = Publisher.publish (stamp + encode) in one process ->
Subscriber.recv (decode into typed packets with numpy views) in another; "raw" = the same multipart
frames, pre-built, through an XPUB -> SUB pair with send_multipart/recv_multipart. Both over TCP on
loopback, without copies, high-water marks unlimited (nothing may be dropped). Runs alternate
(raw, frametok, raw, ...) and the median of each is reported; ``ratio`` = frametok / raw.

    python bench/transport.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
import time
from typing import Any

import numpy as np

SIZES = {"hard_1kb": 20000, "grid_200kb": 2000}  # packets per run


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _packet(kind: str, i: int) -> Any:
    from frametok.packet import Detections, Timestamps, TokenPacket

    rng = np.random.default_rng(0)
    det = Detections(rng.uniform(0, 500, (20, 4)), rng.uniform(0, 1, 20), rng.integers(0, 80, 20),
                     rng.integers(0, 100, 20))
    grid = rng.standard_normal((16, 16, 384)).astype(np.float16) if kind == "grid_200kb" else None
    ctx = rng.standard_normal(384).astype(np.float16) if kind == "grid_200kb" else None
    return TokenPacket("cam0", i, i / 30, (768, 576), timestamps=Timestamps(1, 2, 3), detections=det,
                       context_token=ctx, patch_tokens=grid, models={"detector": "yolov8n@0123456789ab"})


def _sender(mode: str, kind: str, count: int, endpoint: str) -> None:
    import zmq

    from frametok.config import PublisherConfig
    from frametok.packet import encode, stamp
    from frametok.streamer.delivery.publisher import Publisher

    ctx = zmq.Context()
    template = _packet(kind, 0)
    if mode == "frametok":
        pub = Publisher(ctx, PublisherConfig(endpoint=endpoint, hwm=10**9), {})
        pub.socket.setsockopt(zmq.SNDHWM, 0)
        pub.wait_for_subscribers(1, lambda: False)
        time.sleep(0.2)
        packets = [_packet(kind, i) for i in range(min(count, 64))]
        for i in range(count):
            pub.publish(packets[i % len(packets)])
        pub.close()
    else:
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.bind(endpoint)
        sock.recv()  # the subscription
        time.sleep(0.2)
        frames = [bytes(f) if isinstance(f, bytes) else f for f in encode(stamp(template, 0, 4))]
        for _ in range(count):
            sock.send_multipart(frames, copy=False)
        sock.close(linger=-1)
    ctx.term()


def _receive(mode: str, kind: str, count: int) -> dict[str, float]:
    import zmq

    from frametok import Subscriber, TokenPacket
    from frametok.packet import encode, stamp

    endpoint = _endpoint()
    spawn = mp.get_context("spawn")
    nbytes = sum(len(f) if isinstance(f, bytes) else f.nbytes for f in encode(stamp(_packet(kind, 0), 0)))
    got = 0
    if mode == "frametok":
        sub = Subscriber(endpoint, rcvhwm=0, timeout_s=30)
        proc = spawn.Process(target=_sender, args=(mode, kind, count, endpoint))
        proc.start()
        t0 = None
        while got < count:
            msg = sub.recv(10)
            if msg is None:
                break
            if t0 is None:
                t0 = time.perf_counter()
            got += isinstance(msg, TokenPacket)
        t1 = time.perf_counter()
        sub.close()
    else:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        proc = spawn.Process(target=_sender, args=(mode, kind, count, endpoint))
        proc.start()
        t0 = None
        while got < count:
            if not sock.poll(10_000):
                break
            sock.recv_multipart(copy=False)
            if t0 is None:
                t0 = time.perf_counter()
            got += 1
        t1 = time.perf_counter()
        sock.close(0)
        ctx.term()
    proc.join(30)
    seconds = t1 - (t0 or t1)
    rate = (got - 1) / seconds if seconds > 0 else 0.0
    return {"packets": got, "packets_per_s": rate, "mb_per_s": rate * nbytes / 1e6, "bytes": nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out: dict[str, Any] = {"transport": "tcp loopback", "repeats": args.repeats}
    for kind, count in SIZES.items():
        runs: dict[str, list[dict[str, float]]] = {"raw": [], "frametok": []}
        for _ in range(args.repeats):
            for mode in ("raw", "frametok"):
                runs[mode].append(_receive(mode, kind, count))
        med = {m: statistics.median(r["packets_per_s"] for r in rs) for m, rs in runs.items()}
        nbytes = runs["frametok"][0]["bytes"]
        out[kind] = {
            "packet_bytes": nbytes,
            "packets": count,
            "lost": {m: sum(count - r["packets"] for r in rs) for m, rs in runs.items()},
            "raw": {"packets_per_s": round(med["raw"]), "mb_per_s": round(med["raw"] * nbytes / 1e6, 1)},
            "frametok": {"packets_per_s": round(med["frametok"]),
                         "mb_per_s": round(med["frametok"] * nbytes / 1e6, 1)},
            "ratio": round(med["frametok"] / med["raw"], 3) if med["raw"] else None,
            "runs_packets_per_s": {m: [round(r["packets_per_s"]) for r in rs] for m, rs in runs.items()},
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
