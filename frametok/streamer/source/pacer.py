"""The live producer's pacer: when to announce the newest frame so the worker finds it fresh."""

from __future__ import annotations

from collections import deque

__all__ = ["Pacer"]

LEAD_S = 0.008  # announced this long before the worker is due: the notice's way there and the timing's jitter


class Pacer:
    """When to announce the next frame of a live source to the worker.

    The worker takes frames in the order it was told of them and runs them in batches. A frame announced
    as soon as the worker took the previous one would sit out the rest of the batch in progress before its
    own ran: up to twice the batch time old when published.

    **The worker's own clock** (:meth:`worker_cycle`, read from the ring's header, where the worker writes
    when it started the batch now in its models, when it expects to be back for frames, and what a batch
    takes it): the newest frame goes ``LEAD_S`` before the worker is due back, so a frame is at most a frame
    period and the lead old when taken (the floor: one batch plus that age). The due time used is always
    the one of a batch the worker started *after* the last frame was announced (the batch holding that
    frame, or a later one), never the one it was already running: a stream whose frame missed a batch
    aims at the very next one again, and cannot settle at every other batch. Between the worker taking a
    frame and starting its batch (its pre-processing) the due time is the take plus the worker's cycle.
    A worker that keeps up is back before the next frame arrives: every frame goes at once. A frame that
    arrives while the one announced is still not taken (the batch took longer than the worker said)
    takes its place in the ring (:meth:`may_replace`): the worker finds the newest frame, whatever its
    timing error. Only a source at least twice as fast as the worker is held or replaced, and a frame only
    while a newer one may still arrive before it goes: one about as fast as the worker, or slower (a quiet
    camera beside a busy one), has every frame announced at once and loses none to a slow batch.

    **Without it** (a worker that announces nothing yet): the pacer learns the worker's cycle (the shortest
    of the last few times between two takes) and lets the newest frame go a frame period and a half before
    the worker is due back. (Half a period cut the p50 latency of one 30 fps camera from 173 to 146 ms, but
    with three cameras one kept missing its batch and settled at every other one, its learnt cycle then
    twice the worker's: 602 packets against 1,194 each for the other two; with a period and a half the
    p99 was 2.4-2.6 batch times, which is why the worker now says when it is due.) A worker that keeps up
    takes each frame at once, so its cycle is the source's frame period and every frame goes at once; a
    worker that is late finds the frame waiting (never worse than announcing at once).
    """

    def __init__(self, window: int = 8, lead_s: float = LEAD_S) -> None:
        self.taken_at: float | None = None
        self.cycles: deque[float] = deque(maxlen=window)
        self.period: float | None = None  # the source's frame period (moving average)
        self._last_arrival: float | None = None
        self.lead_s = lead_s
        # the worker's announcement (monotonic seconds): batch started, due back, a batch's time (0: none yet)
        self.submitted_s = self.worker_due_s = self.worker_cycle_s = 0.0
        self._announced_in = -1.0  # ``submitted_s`` when the last frame was announced
        self.replace = False  # the frame announced is not taken yet and a newer one may replace it (the writer)

    def arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            dt = now - self._last_arrival
            self.period = dt if self.period is None else 0.9 * self.period + 0.1 * dt
        self._last_arrival = now

    def worker_cycle(self, submitted_s: float, due_s: float, cycle_s: float) -> None:
        """What the worker announced last (see :meth:`FrameRing.worker_cycle`); ``cycle_s`` 0: nothing yet."""
        self.submitted_s, self.worker_due_s, self.worker_cycle_s = submitted_s, due_s, cycle_s

    def announced(self) -> None:
        """A frame was just announced to the worker."""
        self._announced_in = self.submitted_s

    def _lead(self) -> float:
        return 1.5 * (self.period or 1 / 30) + 0.005

    def taken(self, now: float) -> None:
        # two frames taken into one batch (one early, one as the worker came back, maybe after it published
        # the batch before) are no cycle of the worker: counted, the next frame would go at once, wait out
        # a whole batch, and batches would keep taking a stale frame. A worker about as fast as the source
        # loses nothing by that: with no cycle learnt every frame goes at once.
        if self.taken_at is not None and now - self.taken_at >= 1.5 * (self.period or 1 / 30) + 0.005:
            self.cycles.append(now - self.taken_at)
        self.taken_at = now

    def worker_due(self) -> float | None:
        """When the worker will be back for frames, by its own announcement (None: it announced nothing)."""
        if self.worker_cycle_s <= 0.0 or self.taken_at is None:
            return None
        if self.submitted_s > self._announced_in:  # a batch started since our last frame went: its end
            return self.worker_due_s
        return self.taken_at + self.worker_cycle_s  # it took our frame and is still preparing its batch

    def may_replace(self) -> bool:
        """May a newer frame take the place of the one announced and not yet taken? Yes when the worker paces
        us: the frame was announced just before the worker is due, and if the worker is late the newest
        frame, not the one announced, is what it should find (it drops the first notice, whose frame is gone)."""
        return self._faster_than_worker()

    def _faster_than_worker(self) -> bool:
        """At least two frames arrive per batch of the worker: it drops frames anyway, and the pacer picks
        which. A source about as fast as the worker, or slower, is announced at once and never replaced: a
        slow batch then delays its frames instead of losing them (a quiet camera beside a busy one)."""
        return 0.0 < 2 * (self.period or 1 / 30) <= self.worker_cycle_s

    def due(self, now: float) -> bool:
        if self.replace or self.taken_at is None:
            return True
        worker_due = self.worker_due()
        if worker_due is not None:
            # held only while a newer frame may still come before it would go: a source slower than the
            # worker has each frame announced at once (holding it would only risk losing it to the next)
            next_arrival = (self._last_arrival or now) + (self.period or 1 / 30)
            return not self._faster_than_worker() or now >= worker_due - self.lead_s \
                or next_arrival >= worker_due - self.lead_s
        if not self.cycles:
            return True
        return now >= self.taken_at + min(self.cycles) - self._lead()
