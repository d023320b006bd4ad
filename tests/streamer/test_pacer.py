"""The live producer's pacer: when to announce the newest frame so the worker finds it fresh."""

from __future__ import annotations

from frametok.streamer.source.pacer import Pacer as _Pacer

PERIOD = 1 / 30


def _pacer(takes: list[float]) -> _Pacer:
    pacer = _Pacer()
    t = 0.0
    while t < max(takes):  # a 30 fps source
        pacer.arrived(t)
        t += PERIOD
    for at in takes:
        pacer.taken(at)
    return pacer


def test_a_worker_that_keeps_up_gets_every_frame_at_once() -> None:
    pacer = _pacer([i * PERIOD for i in range(10)])
    assert not pacer.cycles
    assert pacer.due(9 * PERIOD + 0.001)


def test_a_slow_worker_gets_the_frame_just_before_it_comes_back() -> None:
    pacer = _pacer([0.0, 0.2, 0.4, 0.6])  # one take every 200 ms
    lead = 1.5 * PERIOD + 0.005
    assert not pacer.due(0.6 + 0.01)
    assert not pacer.due(0.6 + 0.2 - lead - 0.01)
    assert pacer.due(0.6 + 0.2 - lead + 0.001)


def test_two_frames_taken_into_one_batch_are_no_cycle() -> None:
    """A stale and a fresh frame taken together (a few ms apart, or the batch before went out in between)
    must not teach the pacer a short cycle: the next frame would go at once and wait out a whole batch,
    and every batch after would take a stale frame again."""
    pacer = _pacer([0.0, 0.2, 0.205, 0.4, 0.43, 0.6])
    assert min(pacer.cycles) > 0.15, list(pacer.cycles)
    assert not pacer.due(0.6 + 0.02)
