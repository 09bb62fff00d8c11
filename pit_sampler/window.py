"""``window="auto"``: choose the Picard window from what the run measures, round by round.

Whether parallel-in-time pays depends on two things that can only be measured while sampling:

* the cost ``c(r)`` of a denoiser call against its rows ``r`` (a latency-bound GPU call costs the same
  for 1 and 64 rows; a compute-bound CPU call costs about ``r`` times one row);
* how fast Picard converges on this model: the steps a sample accepts per round, ``a(W)``.

The policy maximises the *throughput* of a window, accepted steps per second at the current batch
``B``: ``T(W) = B a(W) / c(W B)``, over the powers of two up to ``max_window``.

**Acceptance, also for windows not run.** The slices of a window are causal: slice ``j``'s new state
depends only on slices ``< j``. A round of window ``W`` in which a sample accepts ``k`` steps is
therefore, slice for slice, the round a window ``W' < W`` would have run, which accepts
``min(k, W')``. Every round measures ``a(W')`` for every ``W' <= W`` at once, so moving down needs no
probe. Above the current window, the estimate is optimistic: ``a(W') = a(W) + s(W) (W' - W)``,
with ``s(W)`` the fraction of samples that accepted the whole window with more steps left (they might
use all of a larger one).

**Cost, also for row counts not run.** Each window keeps the median seconds of its last five timed
calls and their mean rows; ``c`` at other row counts is interpolated linearly between them, in
proportion to rows below the smallest, and above the largest by a power law through the two largest
(exponent clipped to ``[0, 1]``: concave, as device costs are). With a single timed window, ``c(2W)``
is taken equal to ``c(W)`` (optimistic: it earns one probe of ``2W``).

**Decision.** Each round chooses ``argmax T`` over ``1 .. 2W`` (``1 .. 4W`` once two windows were
timed); another window must promise ``1 + gain`` times the current throughput (``jump`` times for
``4W``). Choosing a window on an optimistic estimate is a probe: a transition round (its acceptance counts
only for the slices the previous window also had, since new slices start from guesses), up to two
settling rounds (``log2`` of the growth; the new slices are not yet refined) and measured rounds
until ``probe_samples`` sample-rounds decide it. It is aborted as soon as its measured cost alone
rules it out. A probe that loses (the policy moves back down) doubles the wait, ``backoff`` rounds at
first, before windows above the current one may again be estimated optimistically; a probe that wins
resets it. Where the cost grows in proportion to rows, the estimate for ``W = 2`` never beats
``W = 1`` and the run stays at ``W = 1``, the sequential sampler, after one probe; where it grows
slower but PIT still does not pay, probes recur about ``log2(rounds / backoff)`` times.

Exactness is unaffected: any sequence of windows gives the sequential tokens (``tol = 0``). Timing
is honest on CUDA: a round is timed to the end of its poll, a host read that waits for the device.
Not timed: the first call of a run and the first ``warmup`` calls of each window size (the sampler
sets 1 with compilation or CUDA graph capture, which the first call of a new shape includes).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


def _ema(old: float, new: float, weight: float, first: bool) -> float:
    return new if first else old + weight * (new - old)


@dataclass
class WindowStats:
    """What one window size measured. Per call: ``seconds``, the median of the last ``RECENT`` timed
    calls (robust to a stray slow call on a shared machine), and ``rows``, their mean. Per sample, as
    exponential moving averages: ``accepted`` steps (from rounds of this window or larger ones) and
    ``saturated`` (the fraction that accepted the whole window with steps left)."""

    RECENT = 5

    seconds: float = math.nan
    rows: float = math.nan
    accepted: float = math.nan
    saturated: float = math.nan
    rounds: int = 0  # calls of this window that were timed
    accepted_at: int = -1  # the last round that measured ``accepted``
    samples: int = 0  # sample-rounds of this very window that measured ``accepted``

    recent: list = field(default_factory=list, repr=False)  # (seconds, rows) of the last timed calls

    def time(self, seconds: float, rows: int) -> None:
        self.recent = (self.recent + [(seconds, rows)])[-self.RECENT:]
        self.seconds = statistics.median(t for t, _ in self.recent)
        self.rows = statistics.fmean(r for _, r in self.recent)
        self.rounds += 1

    def accept(self, accepted: float, saturated: float | None, weight: float, round_: int, samples: int) -> None:
        """Fold in one round's mean accepted steps; ``saturated`` and ``samples`` only from a round of
        this very window (``None`` and 0 from a larger one)."""
        self.accepted = _ema(self.accepted, accepted, weight, self.accepted_at < 0)
        if saturated is not None:
            self.saturated = _ema(self.saturated, saturated, weight, math.isnan(self.saturated))
        self.accepted_at = round_
        self.samples += samples

    def forget_acceptance(self) -> None:
        """Before a probe: its acceptance is measured afresh, not averaged with a stale value."""
        self.accepted, self.saturated, self.accepted_at, self.samples = math.nan, math.nan, -1, 0


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
    stats: dict[int, WindowStats] = field(default_factory=dict)
    current: int = 1
    limit: int = 1
    batch: int = 1  # samples in the last observed round
    _round: int = 0  # rounds observed, over all runs
    _run_start: int = 0  # ``_round`` when this run started
    _last_window: int = 0
    _calls: dict[int, int] = field(default_factory=dict)  # calls seen per window size
    _probe: int | None = None  # the window being probed (chosen on an optimistic estimate), if any
    _probe_from: int = 1  # the window the probe started from
    _settling: int = 0  # rounds after a larger window's transition round whose acceptance is not measured
    _interval: int = 0
    _next_probe: int = 0  # first round at which windows above the current may be estimated optimistically

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
    def cost(self, rows: float) -> float:
        """Estimated seconds of a call of ``rows`` rows (module docstring); ``nan`` before any timing."""
        points = sorted((s.rows, s.seconds) for s in self.stats.values() if s.rounds > 0)
        if not points:
            return math.nan
        (r0, c0), (r1, c1) = points[0], points[-1]
        if rows <= r0:
            return c0 * rows / r0
        if rows >= r1:  # a power law through the two largest, exponent in [0, 1]: concave, like a device
            if len(points) == 1:
                return c1
            rp, cp = points[-2]
            beta = min(1.0, max(0.0, math.log(c1 / cp) / math.log(r1 / rp))) if rp < r1 and min(cp, c1) > 0 else 1.0
            return c1 * (rows / r1) ** beta
        for (ra, ca), (rb, cb) in zip(points, points[1:]):
            if ra <= rows <= rb:
                return ca + (cb - ca) * (rows - ra) / max(rb - ra, 1e-9)
        return c1

    def accepted(self, w: int, base: int | None = None) -> float:
        """Estimated steps per sample per round of window ``w`` (``nan`` if unknown): as measured, or,
        optimistic from a smaller measured window ``base``, ``a(base) + s(base) (w - base)``."""
        if base is not None and w > base:
            s = self.stats.get(base)
            if s is None or s.accepted_at < 0:
                return math.nan
            sat = 1.0 if math.isnan(s.saturated) else s.saturated
            return s.accepted + sat * (w - base)
        s = self.stats.get(w)
        return s.accepted if s is not None and s.accepted_at >= 0 else math.nan

    def throughput(self, w: int, base: int | None = None) -> float:
        """Estimated accepted steps per second (all samples) of window ``w`` at the current batch
        (optimistic from ``base`` if given, :meth:`accepted`)."""
        return self.batch * self.accepted(w, base) / max(self.cost(w * self.batch), 1e-12)

    def _need(self, w: int, base: int) -> float:
        """The throughput factor over ``base`` that window ``w`` must promise: ``1 + gain``, and
        ``jump`` for a window 4x larger (its cost is extrapolated furthest, and a wrong probe of it
        costs the most)."""
        return self.jump if w >= 4 * base else 1 + self.gain

    # -- the decisions --------------------------------------------------------------------------
    def choose(self) -> int:
        """The window of the next round."""
        cur, here = self.current, self._round - self._run_start
        s = self.stats.get(cur)
        if self._probe is not None:
            base = self._probe_from
            if s is None or s.samples < self.probe_samples:  # transition, settling, then measured rounds;
                if s is not None and s.rounds > 0 and not (  # abort once the measured cost rules it out
                        self.throughput(cur, base) > self.throughput(base) * self._need(cur, base)):
                    return self._probe_done(base, lost=True)
                return cur
        elif here < 2 or s is None or s.accepted_at < 0:
            return cur  # the run's warm-up round and first measured round
        top = 1 << (self.limit.bit_length() - 1)
        timed = sum(st.rounds > 0 for st in self.stats.values())
        reach = min(top, cur * (4 if timed >= 2 else 2))
        optimistic = self._round >= self._next_probe
        now = self.throughput(cur)
        best, best_t = cur, now
        w = 1
        while w <= reach:
            t = self.throughput(w, cur if optimistic else None)
            if w != cur and t > now * self._need(w, cur) and t > best_t:
                best, best_t = w, t
            w *= 2
        if self._probe is not None:  # the probe was measured: it lost if the policy goes back down
            self._probe_done(cur, lost=best < self._probe)
        if best > cur and optimistic:  # a new probe, its stale acceptance (if any) measured afresh
            self._probe, self._probe_from = best, cur
            if best in self.stats:
                self.stats[best].forget_acceptance()
        self.current = best
        return best

    def _probe_done(self, window: int, lost: bool) -> int:
        """End the probe and move to ``window``; a lost probe doubles the wait before the next."""
        self._interval = 2 * self._interval if lost else self.backoff
        if lost:
            self._next_probe = self._round + self._interval
        self._probe, self.current = None, window
        return window

    def observe(self, window: int, seconds: float, rows: int, accepted: list[float], left: list[int]) -> None:
        """One round ran ``window`` on ``len(accepted)`` samples with ``rows`` rows in ``seconds``; sample
        ``b`` had ``left[b]`` steps to go and accepted ``accepted[b]`` of them."""
        self._round += 1
        calls = self._calls.get(window, 0) + 1
        self._calls[window] = calls
        previous, self._last_window = self._last_window, window
        if not accepted:
            return
        self.batch = len(accepted)
        if self._round > self._run_start + 1 and calls > self.warmup:  # not the run's first call, nor a
            self.stats.setdefault(window, WindowStats()).time(seconds, rows)  # size's first (compilation)
        if window > previous:  # new slices start from guesses: only the old ones count, and the next
            valid = previous  # rounds are a transient (the new slices are not yet refined)
            self._settling = min(2, (window // previous).bit_length() - 1)
        elif self._settling > 0 and window == previous:
            valid, self._settling = 0, self._settling - 1
        else:
            valid, self._settling = window, 0
        n, w = len(accepted), 1
        while w <= valid:
            here = w == window
            sat = sum(k >= w - 1e-9 and r > w for k, r in zip(accepted, left)) / n if here else None
            self.stats.setdefault(w, WindowStats()).accept(sum(min(k, w) for k in accepted) / n, sat,
                                                           self.smoothing, self._round, n if here else 0)
            w *= 2

    def report(self) -> dict:
        """The cost model as measured: per window, seconds and rows per call, accepted steps per sample,
        the saturated fraction, timed rounds and the estimated throughput (accepted steps per second
        at the last batch size); and the window now chosen."""
        return {"chosen": self.current,
                "windows": {w: {"throughput": self.throughput(w), **{k: v for k, v in vars(s).items() if k != "recent"}}
                            for w, s in sorted(self.stats.items())}}
