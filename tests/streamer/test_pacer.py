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


# ---------------------------------------------------------------- with the worker's own announcement

BATCH = 0.094  # the worker's batch time
LEAD = 0.008


def _worker_paced() -> _Pacer:
    """A 30 fps source whose first frame the worker took at 0.0 into a batch it started at 0.003."""
    pacer = _Pacer(lead_s=LEAD)
    pacer.arrived(0.0)
    pacer.announced()
    pacer.taken(0.0)
    pacer.worker_cycle(0.003, 0.003 + BATCH, BATCH)
    return pacer


def _due(pacer: _Pacer, now: float, period: float = PERIOD) -> bool:
    """The source's frames up to ``now`` have arrived (one every ``period`` from 0): is the newest due?"""
    arrivals = [k * period for k in range(1, int(now / period + 1e-9) + 1)]
    for t in arrivals:
        if pacer._last_arrival is None or t > pacer._last_arrival + 1e-9:
            pacer.arrived(t)
    return pacer.due(now)


def _goes_at(pacer: _Pacer, target: float) -> None:
    """The frame goes with the last arrival before ``target`` (the worker's due time less the lead): held
    until then while a newer frame may still come, at once when none can before ``target``."""
    last = int(target / PERIOD + 1e-9) * PERIOD
    assert not _due(pacer, last - 0.001), "held while a newer frame may come before the worker is due"
    assert _due(pacer, last + 0.001), "no newer frame can come before the worker is due: it goes now"


def test_the_frame_goes_just_before_the_worker_is_due() -> None:
    pacer = _worker_paced()
    assert not _due(pacer, 0.05)
    _goes_at(pacer, 0.003 + BATCH - LEAD)
    assert _due(pacer, 0.003 + BATCH - LEAD + 0.001)


def test_the_batch_running_when_the_frame_went_is_not_the_one_to_aim_at() -> None:
    """The worker took the frame but has not started its batch yet (pre-processing): the ring still says
    when the batch before ends, which is now. Announcing then would make the next frame sit out the whole
    batch: the pacer aims at the take plus the worker's cycle until the new batch is announced."""
    pacer = _worker_paced()
    pacer.announced()  # frame 2 goes during the batch started at 0.003...
    pacer.taken(0.097)  # ...and is taken when it ends; the ring still shows that batch
    assert not _due(pacer, 0.10)
    assert not _due(pacer, 0.15)  # aiming at 0.097 + BATCH: frames still come before it
    pacer.worker_cycle(0.100, 0.100 + BATCH, BATCH)  # now the batch holding frame 2 is announced
    _goes_at(pacer, 0.100 + BATCH - LEAD)


def test_a_frame_that_missed_a_batch_aims_at_the_next_one_not_every_other() -> None:
    """Three cameras: one frame arrived after its batch closed and was taken a batch later. A pacer that
    learns its cycle from its own takes would then aim at every other batch (the cycle it sees is twice
    the worker's); with the worker's announcement it aims at the very next batch again."""
    pacer = _worker_paced()
    pacer.announced()  # frame 2 announced during the batch [0.003, 0.097]...
    pacer.worker_cycle(0.100, 0.194, BATCH)  # ...but missed the batch started at 0.100
    pacer.taken(0.194)  # taken when that one ended, into the batch started at 0.197
    pacer.worker_cycle(0.197, 0.291, BATCH)
    _goes_at(pacer, 0.291 - LEAD)  # the next batch, not 0.385
    pacer.announced()
    pacer.taken(0.291)
    pacer.worker_cycle(0.294, 0.388, BATCH)
    _goes_at(pacer, 0.388 - LEAD)


def test_a_worker_that_keeps_up_still_gets_every_frame_at_once() -> None:
    pacer = _Pacer(lead_s=LEAD)
    for i in range(10):  # 30 fps, the worker takes each at once and runs it in 12 ms
        t = i * PERIOD
        pacer.arrived(t)
        assert pacer.due(t)
        pacer.announced()
        pacer.taken(t + 0.001)
        pacer.worker_cycle(t + 0.002, t + 0.014, 0.012)


def test_a_source_slower_than_the_worker_is_neither_held_nor_replaced() -> None:
    """A 3 fps camera beside a busy one: its frame goes at once (no newer one can come before the worker
    is due, holding it would only risk losing it to the next) and is never replaced while it waits."""
    quiet = 1 / 3
    pacer = _Pacer(lead_s=LEAD)
    pacer.arrived(0.0)
    pacer.announced()
    pacer.taken(0.0)
    pacer.worker_cycle(0.003, 0.003 + BATCH, BATCH)
    pacer.arrived(quiet)
    assert pacer.due(quiet)  # the worker is due back at 0.097 - long before the next frame
    pacer.worker_cycle(0.3, 0.3 + BATCH, BATCH)
    assert pacer.due(quiet) and not pacer.may_replace()


def test_a_newer_frame_replaces_the_one_announced_only_when_the_worker_paces() -> None:
    """Paced by the worker (and slower than the source), a frame announced and not taken yet (the batch ran
    long) gives its place to a newer one; a pacer that only learnt the cycle from its takes keeps the old
    behaviour (no replacing)."""
    assert not _pacer([0.0, 0.2, 0.4]).may_replace()
    assert _worker_paced().may_replace()
