"""``window="auto"``: choose the Picard window from what the run measures, round by round.

Whether parallel-in-time pays depends on two things that can only be measured while sampling:

* the cost ``c(r)`` of a denoiser call against its rows ``r`` (a latency-bound GPU call costs the same
  for 1 and 64 rows; a compute-bound CPU call costs about ``r`` times one row);
* how fast Picard converges on this model: the steps a sample accepts per round, ``a(W)``.

The policy maximises the *throughput* of a window, accepted steps per second at the current batch
``B``: ``T(W) = B a(W) / c(W B)``, over the powers of two up to ``max_window``.

**Acceptance, also for windows not run.** The slices of a window are causal: slice ``j``'s new state
depends only on slices ``< j``. A round of window ``W`` in which a sample accepts ``k`` steps is
therefore, on this window's state, the round a window ``W' < W`` would have run, which accepts
``min(k, W')``: every round measures every smaller window at once, so moving down needs no probe
(a smaller window run for itself refines its slices fewer times, so this leans a little towards
moving down). ``a(W)`` is the product of the *doublings* ``a(v) / a(v / 2)``, ``v = 2, 4, .., W``,
each the ratio of the averages of ``min(k, v)`` and ``min(k, v / 2)`` over the same rounds: a hard step
that stops every window alike leaves it unchanged, where a window's own average over a few rounds
would swing with it. A sample with fewer than ``v`` steps left does not measure ``v``. Above the
current window the estimate is optimistic: ``a(W') = a(W) + s(W) (W' - W)``, with ``s(W)`` the
fraction of samples that accepted the whole window with more steps left.

**Cost, also for row counts not run.** Each window keeps the median seconds of its last five timed
calls and their mean rows, made non-decreasing in rows (noisy violators are pooled); ``c`` at other
row counts is interpolated linearly between them, in proportion to rows below the smallest, and
above the largest by a power law through the two largest (exponent clipped to ``[0, 1]``: concave,
as device costs are). With a single timed window, ``c(2W)`` is taken equal to ``c(W)`` (optimistic:
it earns one probe of ``2W``). The *pessimistic* cost a probe risks raises the exponent by
``margin`` (to 1 from a single point: proportional to rows).

**Decision.** Each round chooses ``argmax T`` over ``1 .. 2W`` (``1 .. 4W`` once two windows were
timed); another window must promise ``1 + gain`` times the current throughput (``jump`` times for
``4W``), and a larger one must be *affordable*: one round at its pessimistic cost, beyond the current
window's, may cost at most ``risk`` of the time the current window still needs for the slowest
sample (late in a run, or on a short one, a probe cannot pay for itself). Choosing a window on an
optimistic estimate is a probe. Its first timed round decides it when it can:

* *aborted* (back to the window it came from) if its measured cost alone rules it out, even with the
  optimistic acceptance, against ``1 + gain`` times the throughput it came from;
* *won* if its call cost no more than ``1 + gain`` times the previous window's (a larger window never
  accepts fewer steps, so it pays): the next window up is considered at once, from the same anchor;
  a latency-bound device climbs ``1, 2, 8, 32, 64`` in one round each;
* *won* if its rounds so far, transient included, already accepted more steps per second than the
  bar.

Otherwise it runs a transition round (its acceptance counts only for the slices the previous window
also had, since new slices start from guesses), up to two settling rounds (``log2`` of the growth;
the new slices are not yet refined) and measured rounds until ``probe_samples`` sample-rounds decide
it; any window is judged on at least that many. A probe that loses (the policy moves back down)
doubles the wait, ``backoff`` rounds at first, before windows above the current one may again be
estimated optimistically; a probe that wins resets it. Where the cost grows in proportion to rows,
the estimate for ``W = 2`` never beats ``W = 1`` and the run stays at ``W = 1``, the sequential
sampler, after one round of ``W = 2``.

Exactness is unaffected: any sequence of windows gives the sequential tokens (``tol = 0``). Timing
is honest on CUDA: a round is timed to the end of its poll, a host read that waits for the device.
Not timed: the first call of a run and the first ``warmup`` calls of each window size (the sampler
sets 1 with compilation or CUDA graph capture, which the first call of a new shape includes).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


def _average(old: float, new: float, n: int, weight: float) -> float:
    """The ``n``-th value folded in: their plain mean while ``1 / n > weight`` (a single round does not
    stand for a window), then an exponential moving average of weight ``weight``."""
    return new if n == 1 else old + max(weight, 1.0 / n) * (new - old)


@dataclass
class WindowStats:
    """What one window size ``w`` measured. Per call: ``seconds``, the median of the last ``RECENT``
    timed calls (robust to a stray slow call on a shared machine), and ``rows``, their mean. Per
    sample, as moving averages (:func:`_average`) over the rounds that measured them (of this window or
    larger ones): ``longer``, the steps accepted within ``w`` slices, ``min(k, w)``, and ``shorter``,
    within ``w / 2`` on the same rounds (their ratio is what doubling the window gains; a hard step
    that stops every window alike leaves it unchanged), and ``saturated`` (the fraction of samples
    that accepted the whole window with steps left)."""

    RECENT = 5

    seconds: float = math.nan
    rows: float = math.nan
    longer: float = math.nan
    shorter: float = math.nan
    saturated: float = math.nan
    rounds: int = 0  # calls of this window that were timed
    measured: int = 0  # rounds that measured ``longer`` and ``shorter``
    saturations: int = 0  # rounds of this very window that measured ``saturated``
    samples: int = 0  # sample-rounds of this very window that measured them

    recent: list = field(default_factory=list, repr=False)  # (seconds, rows) of the last timed calls

    def time(self, seconds: float, rows: int) -> None:
        self.recent = (self.recent + [(seconds, rows)])[-self.RECENT:]
        self.seconds = statistics.median(t for t, _ in self.recent)
        self.rows = statistics.fmean(r for _, r in self.recent)
        self.rounds += 1

    @property
    def doubling(self) -> float:
        """``a(w) / a(w / 2)``: the ratio of the two averages (1 for ``w = 1``)."""
        return self.longer / max(self.shorter, 1e-9)

    def accept(self, longer: float, shorter: float, saturated: float | None, weight: float, samples: int) -> None:
        """Fold in one round's mean ``min(k, w)`` and ``min(k, w / 2)``; ``saturated`` and ``samples``
        only from a round of this very window (``None`` and 0 from a larger one)."""
        self.measured += 1
        self.longer = _average(self.longer, longer, self.measured, weight)
        self.shorter = _average(self.shorter, shorter, self.measured, weight)
        if saturated is not None:
            self.saturations += 1
            self.saturated = _average(self.saturated, saturated, self.saturations, weight)
        self.samples += samples

    def forget_acceptance(self) -> None:
        """Before a probe: its acceptance is measured afresh, not averaged with a stale value."""
        self.longer = self.shorter = self.saturated = math.nan
        self.measured, self.saturations, self.samples = 0, 0, 0


def _points(stats) -> list[tuple[float, float]]:
    """``(rows, seconds)`` of every timed window, the seconds made non-decreasing in rows (a call with
    more rows never costs less): adjacent violators are pooled, weighted by their timed calls, so
    timing noise on a flat (latency-bound) device does not rank equal costs."""
    blocks = []  # [rows of each pooled point, weighted seconds, weight]
    for st in sorted((st for st in stats if st.rounds > 0), key=lambda st: st.rows):
        blocks.append([[st.rows], st.seconds * len(st.recent), len(st.recent)])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            rows, total, weight = blocks.pop()
            blocks[-1][0] += rows
            blocks[-1][1] += total
            blocks[-1][2] += weight
    return [(r, total / weight) for rows, total, weight in blocks for r in rows]


def _exponent(points) -> float:
    """The power law's exponent above the largest timed row count: through the two largest points,
    clipped to ``[0, 1]`` (1 with fewer than two)."""
    if len(points) < 2:
        return 1.0
    (rp, cp), (r1, c1) = points[-2], points[-1]
    if not (rp < r1 and min(cp, c1) > 0):
        return 1.0
    return min(1.0, max(0.0, math.log(c1 / cp) / math.log(r1 / rp)))


def call_cost(stats, rows: float, margin: float | None = None) -> float:
    """Estimated seconds of a call of ``rows`` rows from the timed windows ``stats`` (module
    docstring); ``nan`` before any timing. ``margin`` (the cost a probe risks): above the largest
    timed row count, the exponent is raised by ``margin`` (and is 1 from a single point)."""
    points = _points(stats)
    if not points:
        return math.nan
    (r0, c0), (r1, c1) = points[0], points[-1]
    if rows <= r0:
        return c0 * rows / r0
    if rows >= r1:  # a power law: concave, like a device
        if len(points) == 1 and margin is None:
            return c1
        beta = _exponent(points)
        return c1 * (rows / r1) ** (beta if margin is None else min(1.0, beta + margin))
    for (ra, ca), (rb, cb) in zip(points, points[1:]):
        if ra <= rows <= rb:
            return ca + (cb - ca) * (rows - ra) / max(rb - ra, 1e-9)
    return c1


@dataclass
class WindowPolicy:
    """The policy of the module docstring. ``start()`` begins a ``sample()`` call, ``choose()`` gives
    the next round's window, ``observe()`` feeds back what the round measured; measurements are kept
    between calls with the same shapes."""

    max_window: int = 64
    gain: float = 0.1
    jump: float = 2.0
    backoff: int = 8
    smoothing: float = 0.3
    warmup: int = 0
    probe_samples: int = 2
    risk: float = 0.1
    margin: float = 0.25
    stats: dict[int, WindowStats] = field(default_factory=dict)
    current: int = 1
    limit: int = 1
    batch: int = 1  # samples in the last observed round
    _round: int = 0  # rounds observed, over all runs
    _run_start: int = 0  # ``_round`` when this run started
    _last_window: int = 0
    _calls: dict[int, int] = field(default_factory=dict)  # calls seen per window size
    _probe: int | None = None  # the window being probed (chosen on an optimistic estimate), if any
    _probe_from: int = 1  # the measured window whose acceptance anchors the probe's estimates
    _probe_back: int = 1  # the window the probe started from (where a lost probe returns)
    _settling: int = 0  # rounds after a larger window's transition round whose acceptance is not measured
    _interval: int = 0
    _next_probe: int = 0  # first round at which windows above the current may be estimated optimistically
    _left: int = 0  # the most steps a sample had left after the last round
    _probe_work: list = field(default_factory=lambda: [0.0, 0.0])  # the probe's timed rounds: steps, seconds

    def __post_init__(self):
        if self.max_window < 1:
            raise ValueError(f"max_window must be >= 1, got {self.max_window}")
        self._interval = self.backoff

    def start(self, plan_length: int) -> None:
        """A new ``sample()`` call: cap the windows at this run's plan length; keep what was learned."""
        self.limit = max(1, min(self.max_window, plan_length))
        self.current = min(self.current, 1 << (self.limit.bit_length() - 1))
        self._run_start, self._probe, self._settling = self._round, None, 0
        self._last_window = 1  # a run starts from fresh guesses: a transition from W = 1

    # -- the estimates ------------------------------------------------------------------------
    def cost(self, rows: float, pessimistic: bool = False) -> float:
        """Estimated seconds of a call of ``rows`` rows (:func:`call_cost` of the timed windows)."""
        return call_cost(self.stats.values(), rows, self.margin if pessimistic else None)

    def accepted(self, w: int, base: int | None = None) -> float:
        """Estimated steps per sample per round of window ``w`` (``nan`` if unknown): the product of
        the measured doublings ``a(v) / a(v / 2)`` for ``v = 1, 2, 4, ..., w`` (``a(1) = 1``: every
        round accepts a step), or, optimistic from a smaller measured window ``base``,
        ``a(base) + s(base) (w - base)``."""
        if base is not None and w > base:
            a, s = self.accepted(base), self.stats.get(base)
            sat = 1.0 if s is None or math.isnan(s.saturated) else s.saturated
            return a + sat * (w - base)
        a, v = 1.0, 1
        while v <= w:
            s = self.stats.get(v)
            if s is None or s.measured == 0:
                return math.nan
            a, v = a * s.doubling, 2 * v
        return a

    def throughput(self, w: int, base: int | None = None) -> float:
        """Estimated accepted steps per second (all samples) of window ``w`` at the current batch
        (optimistic from ``base`` if given, :meth:`accepted`)."""
        return self.batch * self.accepted(w, base) / max(self.cost(w * self.batch), 1e-12)

    def _need(self, w: int, base: int) -> float:
        """The throughput factor over ``base`` that window ``w`` must promise: ``1 + gain``; half that
        margin for a smaller window (moving down is safe and needs no probe, and where windows are
        within noise of each other the smaller one is nearer sequential); ``jump`` for a window 4x
        larger (its cost is extrapolated furthest, and a wrong probe of it costs the most)."""
        if w < base:
            return 1 + self.gain / 2
        return self.jump if w >= 4 * base else 1 + self.gain

    # -- the decisions --------------------------------------------------------------------------
    def choose(self) -> int:
        """The window of the next round."""
        cur, here = self.current, self._round - self._run_start
        s = self.stats.get(cur)
        anchor = cur  # the window whose measured acceptance anchors the optimistic estimates
        if self._probe is not None:
            base, back = self._probe_from, self._probe_back
            if s is None or s.samples < self.probe_samples:  # transition, settling, then measured rounds
                if s is None or s.rounds == 0:
                    return cur
                bar = self.throughput(back, base) * (1 + self.gain)
                if not self.throughput(cur, base) > bar:  # its measured cost alone rules it out
                    return self._probe_done(back, lost=True)
                if self.cost(cur * self.batch) > self.cost(back * self.batch) * (1 + self.gain):
                    steps, seconds = self._probe_work
                    if seconds > 0 and steps / seconds > bar:  # it already paid, transient and all
                        return self._probe_done(cur, lost=False)
                    return cur
                anchor = base  # its cost did not grow: it cannot accept fewer steps, so it pays; look further up
        elif here < 2 or s is None or s.samples < self.probe_samples:
            return cur  # the run's warm-up round and first measured round; a window measured too little
        top = 1 << (self.limit.bit_length() - 1)
        timed = sum(st.rounds > 0 for st in self.stats.values())
        reach = min(top, cur * (4 if timed >= 2 else 2))
        optimistic = self._round >= self._next_probe
        now = self.throughput(cur, anchor)
        best, best_t = cur, now
        w = 1 if anchor == cur else 2 * cur
        while w <= reach:
            t = self.throughput(w, anchor if optimistic else None)
            if w != cur and t > now * self._need(w, cur) and t > best_t and (w < cur or self._affordable(w, anchor)):
                best, best_t = w, t
            w *= 2
        if self._probe is not None:  # the probe was decided: it lost if the policy goes back down
            self._probe_done(cur, lost=best < self._probe)
        if best > cur and optimistic:  # a new probe, its stale acceptance (if any) measured afresh
            self._probe, self._probe_from, self._probe_back, self._probe_work = best, anchor, cur, [0.0, 0.0]
            if best in self.stats:
                self.stats[best].forget_acceptance()
        self.current = best
        return best

    def _affordable(self, w: int, anchor: int) -> bool:
        """Whether a probe of ``w`` risks at most ``risk`` of the run's remaining time: one round at the
        pessimistic cost (:meth:`cost`) beyond the current window's, against the rounds the current
        window would still need for the slowest sample (its acceptance estimated from ``anchor``)."""
        cur, B = self.current, self.batch
        here = self.cost(cur * B)
        remaining = self._left / max(self.accepted(cur, anchor), 1.0) * here
        return self.cost(w * B, pessimistic=True) - here <= self.risk * remaining

    def _probe_done(self, window: int, lost: bool) -> int:
        """End the probe and move to ``window``; a lost probe doubles the wait before the next."""
        self._interval = 2 * self._interval if lost else self.backoff
        if lost:
            self._next_probe = self._round + self._interval
        self._probe, self.current = None, window
        return window

    def observe(self, window: int, seconds: float, rows: int, tally: list[list[int]], left: int) -> None:
        """One round ran ``window`` with ``rows`` rows in ``seconds``. ``tally``: its
        :func:`~pit_sampler.engine.window.acceptance_tally`, for ``v = 1, 2, 4, ..``: over the samples
        with at least ``v`` steps left, the sums of ``min(k, v)`` and ``min(k, v / 2)``, their number,
        and how many accepted all ``v`` slices with steps to spare; ``left``: the most steps a sample
        has left after it."""
        self._round += 1
        calls = self._calls.get(window, 0) + 1
        self._calls[window] = calls
        previous, self._last_window = self._last_window, window
        if not tally or tally[0][2] == 0:  # no sample had a step left
            return
        self.batch, self._left = tally[0][2], left
        if self._round > self._run_start + 1 and calls > self.warmup:  # not the run's first call, nor a
            self.stats.setdefault(window, WindowStats()).time(seconds, rows)  # size's first (compilation)
            if window == self._probe:
                self._probe_work[0] += tally[-1][0]  # every step accepted: min(k, W) = k
                self._probe_work[1] += seconds
        if window > previous:  # new slices start from guesses: only the old ones count, and the next
            valid = previous  # rounds are a transient (the new slices are not yet refined)
            self._settling = min(2, (window // previous).bit_length() - 1)
        elif self._settling > 0 and window == previous:
            valid, self._settling = 0, self._settling - 1
        else:
            valid, self._settling = window, 0
        for i, (longer, shorter, n, full) in enumerate(tally):
            w = 1 << i
            if w > valid or n == 0:  # samples with fewer than w steps left cannot show min(k, w)
                break
            here = w == window
            self.stats.setdefault(w, WindowStats()).accept(longer / n, shorter / n, full / n if here else None,
                                                          self.smoothing, n if here else 0)

    def observe_rounds(self, window: int, seconds: float, rows: int, tallies: list, left: int) -> None:
        """The rounds between two polls, each with its own tally (:meth:`observe`); ``seconds``: their
        mean time. Acceptance is learned per round, never averaged over a poll interval first
        (``E[min(k, W)] != min(E[k], W)``)."""
        for tally in tallies:
            self.observe(window, seconds, rows, tally, left)

    def report(self) -> dict:
        """The cost model as measured: per window, seconds and rows per call, accepted steps per sample,
        the saturated fraction, timed rounds and the estimated throughput (accepted steps per second
        at the last batch size); and the window now chosen."""
        return {"chosen": self.current,
                "windows": {w: {"throughput": self.throughput(w), "accepted": self.accepted(w),
                                **{k: v for k, v in vars(s).items() if k != "recent"}}
                            for w, s in sorted(self.stats.items())}}
