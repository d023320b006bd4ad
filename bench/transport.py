"""frametok's transport against raw pyzmq moving the same bytes, in one run. Prints one JSON object.

Two packet sizes: hard tokens only (~1 KB: 20 detections) and a full grid (~200 KB: 16x16x384
float16 patches + context). "frametok" = Publisher.publish (stamp + encode) in one process ->
Subscriber.recv (decode into typed packets with numpy views) in another; "raw" = the same multipart
frames, pre-built, through an XPUB -> SUB pair with send_multipart/recv_multipart(copy=False). Both over
TCP on loopback, without copies, high-water marks unlimited (nothing may be dropped). Neither receiving
side reads the buffers' bytes (frametok's arrays are views of the received frames). Both senders cycle
through the same ``--distinct`` packets (64: one buffer sent over and over stays in cache, a stream's
grids do not).

Rounds are interleaved: each mode's sender stays up (a process waiting on a pipe) and each pair of
rounds runs raw and frametok back to back, raw first in even pairs and frametok first in odd ones, so
that both meet the same load on a shared machine. ``round_ratios``: frametok / raw in each pair;
``ratio``: their median (the figure the goals are judged on); ``ratio_of_medians``: frametok's median
rate over raw's; ``ratio_of_upper_quartiles``: the same of their upper quartiles (other work on the machine
only ever slows a round down). The rounds are split between ``--sessions`` (4) pairs of fresh sender
processes and connections, each with a short warm-up pair not counted: within one pair of processes
one mode's cost per packet can stay 30-70% off the other's for its whole life (where the scheduler
put its threads, its TCP connection), which a median over one pair's rounds does not average out.
``--rcvbuf`` fixes both receiving sockets' receive buffer (0: the kernel's autotuning).
``cpu_us_per_packet``: the median CPU time per packet of each side's process (every thread: zmq's too).

    python bench/transport.py [--repeats 32] [--sessions 4] [--sizes grid_200kb] [--packets N]
                              [--distinct 64] [--rcvbuf BYTES]
"""


from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

SIZES = {"hard_1kb": 5000, "grid_200kb": 1500}  # packets per round (~0.2 s each)
MODES = ("raw", "frametok")


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


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sender(mode: str, kind: str, distinct: int, endpoint: str, conn: Connection) -> None:
    """One mode's sending end: sends as many packets as each message on ``conn`` says (0: stop)."""
    import zmq

    from frametok.config import PublisherConfig
    from frametok.packet import encode, stamp
    from frametok.streamer.delivery.publisher import Publisher

    ctx = zmq.Context()
    packets = [_packet(kind, i) for i in range(distinct)]
    items: list[Any]
    if mode == "frametok":
        pub = Publisher(ctx, PublisherConfig(endpoint=endpoint, hwm=10**9), {})
        pub.socket.setsockopt(zmq.SNDHWM, 0)
        pub.wait_for_subscribers(1, lambda: False)
        items, send, close = packets, pub.publish, pub.close
    else:
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.bind(endpoint)
        sock.recv()  # the subscription
        items = [encode(stamp(p, i, 4)) for i, p in enumerate(packets)]

        def send(frames: Any) -> None:
            sock.send_multipart(frames, copy=False)

        def close() -> None:
            sock.close(linger=-1)
    conn.send("ready")
    while count := conn.recv():
        if count < 0:  # the CPU seconds this process used so far (all its threads: zmq's too)
            conn.send(_cpu_s())
            continue
        for i in range(count):
            send(items[i % distinct])
    close()
    ctx.term()


class _Mode:
    """One mode's receiving end in this process, and its sender's process, kept up across rounds."""

    def __init__(self, mode: str, kind: str, distinct: int, rcvbuf: int) -> None:
        import zmq

        from frametok import Subscriber

        self.mode = mode
        endpoint = _endpoint()
        self.sub: Any = None
        self.ctx = zmq.Context()
        if rcvbuf:
            self.ctx.setsockopt(zmq.RCVBUF, rcvbuf)  # for every socket made in it: the Subscriber's too
        if mode == "frametok":
            self.sub = Subscriber(endpoint, rcvhwm=0, timeout_s=30, context=self.ctx)
        else:
            self.sock = self.ctx.socket(zmq.SUB)
            self.sock.setsockopt(zmq.RCVHWM, 0)
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
            self.sock.connect(endpoint)
        spawn = mp.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.proc = spawn.Process(target=_sender, args=(mode, kind, distinct, endpoint, child), daemon=True)
        self.proc.start()
        if not self.conn.poll(120):
            raise RuntimeError(f"{mode} sender did not start")
        self.conn.recv()
        self.sender_cpu_s = self._sender_cpu_s()

    def _sender_cpu_s(self) -> float:
        self.conn.send(-1)
        return float(self.conn.recv())

    def round(self, count: int) -> dict[str, float]:
        """Receive ``count`` packets; the rate is timed from the first to the last. The CPU time of each
        side (its process, every thread) is taken around the round."""
        from frametok import TokenPacket

        cpu0 = _cpu_s()
        self.conn.send(count)
        got = 0
        t0 = None
        if self.sub is not None:
            sub = self.sub
            while got < count:
                msg = sub.recv(10)
                if msg is None:
                    break
                if t0 is None:
                    t0 = time.perf_counter()
                got += isinstance(msg, TokenPacket)
        else:
            sock = self.sock
            while got < count:
                if not sock.poll(10_000):
                    break
                sock.recv_multipart(copy=False)
                if t0 is None:
                    t0 = time.perf_counter()
                got += 1
        t1 = time.perf_counter()
        recv_cpu = _cpu_s() - cpu0
        sender_cpu, self.sender_cpu_s = self.sender_cpu_s, self._sender_cpu_s()
        seconds = t1 - (t0 or t1)
        return {"packets": got, "lost": count - got, "packets_per_s": (got - 1) / seconds if seconds > 0 else 0.0,
                "send_cpu_us": (self.sender_cpu_s - sender_cpu) / max(got, 1) * 1e6,
                "recv_cpu_us": recv_cpu / max(got, 1) * 1e6}

    def close(self) -> None:
        self.conn.send(0)
        self.proc.join(30)
        if self.sub is not None:
            self.sub.close()
        else:
            self.sock.close(0)
        self.ctx.term()


def _spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """Min, quartiles and max (the median is the middle quartile)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {k: round(v, digits) if digits else round(v)
            for k, v in zip(("min", "q1", "median", "q3", "max"), (min(values), *q, max(values)), strict=True)}


def _measure(kind: str, count: int, repeats: int, sessions: int, distinct: int, rcvbuf: int) -> dict[str, Any]:
    from frametok.packet import encode, stamp

    nbytes = sum(len(f) if isinstance(f, bytes) else f.nbytes for f in encode(stamp(_packet(kind, 0), 0)))
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    r = 0
    bounds = [0]  # the first round of each session
    for session in range(sessions):  # fresh processes and connections each time
        ends = {m: _Mode(m, kind, distinct, rcvbuf) for m in MODES}
        try:
            for m in MODES:  # warm-up, not counted
                ends[m].round(max(2, count // 4))
            for _ in range(repeats * (session + 1) // sessions - repeats * session // sessions):
                for m in MODES if r % 2 == 0 else MODES[::-1]:
                    runs[m].append(ends[m].round(count))
                r += 1
        finally:
            for end in ends.values():
                end.close()
        bounds.append(r)
    rates = {m: [r["packets_per_s"] for r in rs] for m, rs in runs.items()}
    med = {m: statistics.median(v) for m, v in rates.items()}
    upper = {m: _spread(v)["q3"] for m, v in rates.items()}
    ratios = [f / r for f, r in zip(rates["frametok"], rates["raw"], strict=True) if r > 0]
    return {
        "packet_bytes": nbytes,
        "packets": count,
        "lost": {m: sum(int(r["lost"]) for r in rs) for m, rs in runs.items()},
        "raw": {"packets_per_s": round(med["raw"]), "mb_per_s": round(med["raw"] * nbytes / 1e6, 1)},
        "frametok": {"packets_per_s": round(med["frametok"]), "mb_per_s": round(med["frametok"] * nbytes / 1e6, 1)},
        "ratio": round(statistics.median(ratios), 3) if ratios else None,
        "runs_packets_per_s": {m: [round(v) for v in vs] for m, vs in rates.items()},
        "rounds": repeats,
        "sessions": sessions,
        "distinct_packets": distinct,
        "rcvbuf_bytes": rcvbuf,
        "ratio_of_medians": round(med["frametok"] / med["raw"], 3) if med["raw"] else None,
        "round_ratios": [round(x, 3) for x in ratios],
        "round_ratio_spread": _spread(ratios) if ratios else None,
        "session_ratios": [round(statistics.median(ratios[a:b]), 3) for a, b in itertools.pairwise(bounds)
                           if ratios[a:b]],
        # other work on the machine only ever slows a round down: the upper quartiles are the least touched
        "ratio_of_upper_quartiles": round(upper["frametok"] / upper["raw"], 3) if upper["raw"] else None,
        "packets_per_s_spread": {m: _spread(v, 0) for m, v in rates.items()},
        "cpu_us_per_packet": {m: {side: round(statistics.median(r[f"{side}_cpu_us"] for r in rs), 1)
                                  for side in ("send", "recv")} for m, rs in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=32, help="rounds of each mode, interleaved (default 32)")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument("--packets", type=int, help="packets per round (default: "
                        + ", ".join(f"{k} {n}" for k, n in SIZES.items()) + ")")
    parser.add_argument("--sessions", type=int, default=4,
                        help="the rounds are split between this many pairs of fresh processes and connections")
    parser.add_argument("--rcvbuf", type=int, default=0,
                        help="receive buffer of both receiving sockets, bytes (0: the kernel's autotuning)")
    parser.add_argument("--distinct", type=int, default=64, help="distinct packets each sender cycles through")
    args = parser.parse_args()
    if min(args.repeats, args.sessions, args.distinct) < 1 or (args.packets is not None and args.packets < 2) \
            or args.rcvbuf < 0:
        parser.error("--repeats, --sessions and --distinct must be >= 1, --packets >= 2, --rcvbuf >= 0")
    out: dict[str, Any] = {"transport": "tcp loopback", "repeats": args.repeats, "order": "interleaved"}
    load = [os.getloadavg()[0]]
    for kind in args.sizes:
        out[kind] = _measure(kind, args.packets or SIZES[kind], args.repeats, min(args.sessions, args.repeats),
                             args.distinct, args.rcvbuf)
    load.append(os.getloadavg()[0])
    out["loadavg_1min"] = [round(x, 2) for x in load]  # at the start and the end: other work on the machine
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
