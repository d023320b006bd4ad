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


def test_the_frame_goes_just_before_the_worker_is_due() -> None:
    pacer = _worker_paced()
    due = 0.003 + BATCH
    assert not pacer.due(0.05)
    assert not pacer.due(due - LEAD - 0.001)
    assert pacer.due(due - LEAD + 0.001)


def test_the_batch_running_when_the_frame_went_is_not_the_one_to_aim_at() -> None:
    """The worker took the frame but has not started its batch yet (pre-processing): the ring still says
    when the batch before ends, which is now. Announcing then would make the next frame sit out the whole
    batch: the pacer aims at the take plus the worker's cycle until the new batch is announced."""
    pacer = _worker_paced()
    pacer.announced()  # frame 2 goes during the batch started at 0.003...
    pacer.taken(0.097)  # ...and is taken when it ends; the ring still shows that batch
    assert not pacer.due(0.10)
    assert pacer.due(0.097 + BATCH - LEAD + 0.001)
    pacer.worker_cycle(0.100, 0.100 + BATCH, BATCH)  # now the batch holding frame 2 is announced
    assert not pacer.due(0.100 + BATCH - LEAD - 0.001)
    assert pacer.due(0.100 + BATCH - LEAD + 0.001)


def test_a_frame_that_missed_a_batch_aims_at_the_next_one_not_every_other() -> None:
    """Three cameras: one frame arrived after its batch closed and was taken a batch later. A pacer that
    learns its cycle from its own takes would then aim at every other batch (the cycle it sees is twice
    the worker's); with the worker's announcement it aims at the very next batch again."""
    pacer = _worker_paced()
    pacer.announced()  # frame 2 announced during the batch [0.003, 0.097]...
    pacer.worker_cycle(0.100, 0.194, BATCH)  # ...but missed the batch started at 0.100
    pacer.taken(0.194)  # taken when that one ended, into the batch started at 0.197
    pacer.worker_cycle(0.197, 0.291, BATCH)
    assert not pacer.due(0.291 - LEAD - 0.001)
    assert pacer.due(0.291 - LEAD + 0.001)  # the next batch, not 0.385
    pacer.announced()
    pacer.taken(0.291)
    pacer.worker_cycle(0.294, 0.388, BATCH)
    assert pacer.due(0.388 - LEAD + 0.001) and not pacer.due(0.388 - LEAD - 0.001)


def test_a_worker_that_keeps_up_still_gets_every_frame_at_once() -> None:
    pacer = _Pacer(lead_s=LEAD)
    for i in range(10):  # 30 fps, the worker takes each at once and runs it in 12 ms
        t = i * PERIOD
        pacer.arrived(t)
        assert pacer.due(t)
        pacer.announced()
        pacer.taken(t + 0.001)
        pacer.worker_cycle(t + 0.002, t + 0.014, 0.012)
