"""The hub process on its own: a real hub process, a real worker feed (DEALER) and a real live subscriber."""

from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path

import zmq

from frametok import EndOfStream, Subscriber, TokenPacket
from frametok.config import Config
from frametok.packet import StreamInfo
from frametok.streamer.delivery.feed import HubFeed
from frametok.streamer.delivery.hub import hub_main
from frametok.streamer.ipc.notices import RunContext


def test_a_worker_that_flushed_has_its_end_of_stream_published_though_the_run_finishes_at_once(
    endpoint: str,
) -> None:
    """The end of a run: a worker hands over its last frames and its end-of-stream, waits for the hub to
    hold them (``flush``) and exits; the supervisor then tells the hub to finish. The subscriber gets every
    frame and the end-of-stream (a worker that exited without flushing could leave them unread in the
    hub's queue when ``finish`` came, and a subscriber waiting for the end would wait forever)."""
    spawn = multiprocessing.get_context("spawn")
    rundir = Path(tempfile.mkdtemp(prefix="frametok-hubtest-"))
    run = RunContext("hubtest", f"ipc://{rundir}/frames", f"ipc://{rundir}/events", "frametok-hubtest-",
                     hub_endpoint=f"ipc://{rundir}/hub")
    config = Config.model_validate({"sources": [{"id": "cam", "uri": "unused.mp4"}],
                                    "publisher": {"endpoint": endpoint, "wait_subscribers": 1}})
    ctx = zmq.Context()
    events = ctx.socket(zmq.PULL)
    events.bind(run.events_endpoint)
    stop, finish = spawn.Event(), spawn.Event()
    hub = spawn.Process(target=hub_main, args=(config, run, stop, finish), daemon=True)
    hub.start()
    try:
        with Subscriber(endpoint, timeout_s=60) as sub:
            feed = HubFeed(ctx, run.hub_endpoint, config.publisher, 0, 0, stop)
            feed.hello({"cam": StreamInfo("cam", "file")})
            frames = 30  # within the live high-water marks: the subscriber reads only after the flush
            for i in range(frames):
                feed.publish(TokenPacket("cam", i, i / 10, (64, 48)))
            feed.publish(EndOfStream("cam", frames, "end"))
            assert feed.flush(timeout_s=60), "the hub did not ack every message"
            assert feed.all_acked
            feed.close()
            finish.set()  # what the supervisor does once every worker exited
            got = list(sub)
        hub.join(30)
        assert hub.exitcode == 0
        assert [m.frame_index for m in got if isinstance(m, TokenPacket)] == list(range(frames))
        ends = [m for m in got if isinstance(m, EndOfStream)]
        assert len(ends) == 1 and ends[0].frames == frames and ends[0].reason == "end"
        assert not sub.gaps
    finally:
        if hub.is_alive():
            hub.kill()
        events.close(0)
        ctx.term()
