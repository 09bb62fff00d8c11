"""``window="auto"``: choose the Picard window from what the run measures, round by round.

Whether parallel-in-time pays depends on two things that can only be measured while sampling:

* the cost of a denoiser call against its rows (a latency-bound GPU call costs the same for 1 and 64
  rows; a compute-bound CPU call costs about ``rows`` times one row);
* how fast Picard converges on this model: the steps accepted per iteration, ``a(W)``.

The quantity that matters is the *throughput* of a window size, accepted steps per second,

    ``T(W) = (sum over samples of steps accepted in a round) / (wall time of the round's call)``,

and the policy picks the ``W`` (a power of two, at most ``max_window``) that maximises it: a hill climb
over ``1, 2, 4, ...``. It starts from the best ``W`` known for these shapes (``W = 1``, the sequential
sampler, the first time), measures each window for ``probe_rounds`` rounds, moves up while throughput
grows by more than ``gain`` (two sizes at once after a probe that raised it by more than 1.6x) and
back down when it drops, and re-probes the neighbours of the current window after ``backoff``
rounds, the interval doubling after every probe that loses (so a device on
which PIT never pays costs a few probe rounds, about ``log2(rounds)`` of them, and otherwise runs
``W = 1``). Throughputs are exponential moving averages (``smoothing``), so the choice follows a
run whose convergence changes, and they are kept between ``sample()`` calls with the same shapes.

Exactness is unaffected: any sequence of windows gives the sequential tokens (``tol = 0``). Timing is
honest on CUDA: the sampler synchronises the device around every timed call (one host sync per round,
which the fixed-window path does not pay). Not measured: the first call of a run (warm-up), and a
round whose window differs from the previous round's (its new slots start from guesses, so its
acceptance is not the window's steady state: a probe therefore lasts ``probe_rounds + 1`` rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class WindowStats:
    """What one window size measured: exponential moving averages per round."""

    seconds: float = 0.0  # wall time per call
    rows: float = 0.0  # rows per call
    accepted: float = 0.0  # accepted steps per call (all samples)
    rounds: int = 0

    def update(self, seconds: float, rows: int, accepted: int, smoothing: float) -> None:
        """Fold in one round. ``throughput`` is the ratio of the averages (steps accepted per round
        vary a lot from round to round; a ratio of averages is far steadier than an average of ratios)."""
        a = 1.0 if self.rounds == 0 else smoothing
        self.seconds += a * (seconds - self.seconds)
        self.rows += a * (rows - self.rows)
        self.accepted += a * (accepted - self.accepted)
        self.rounds += 1

    @property
    def throughput(self) -> float:
        """Accepted steps per second: the ratio of the averages."""
        return self.accepted / max(self.seconds, 1e-9)


@dataclass
class WindowPolicy:
    """The hill climb described in the module docstring. ``choose()`` gives the next round's window;
    ``observe()`` feeds back what the round measured; ``warmup`` first calls of each new window size
    are not measured (compilation, CUDA graph capture, allocator growth)."""

    max_window: int = 64
    probe_rounds: int = 2
    gain: float = 0.05
    backoff: int = 8
    smoothing: float = 0.3
    warmup: int = 0
    stats: dict[int, WindowStats] = field(default_factory=dict)
    current: int = 1
    _calls: dict[int, int] = field(default_factory=dict)  # calls seen per window size
    _measured_at: dict[int, int] = field(default_factory=dict)  # last round each window was measured
    _trial: int | None = None  # the window being probed, if any
    _trial_left: int = 0
    _next_probe: int = 0
    _interval: int = 0
    _round: int = 0
    _last_window: int = 0
    _stride: int = 2  # how far the next upward probe reaches: 4 after a probe that nearly doubled T
    limit: int = 1

    def __post_init__(self):
        if self.max_window < 1:
            raise ValueError(f"max_window must be >= 1, got {self.max_window}")
        self._interval = self.backoff

    def start(self, plan_length: int) -> None:
        """A new ``sample()`` call: cap the windows at this run's plan length; keep what was learned.
        The first round of a run is a warm-up; the current window is measured before any probe."""
        self.limit = max(1, min(self.max_window, plan_length))
        self.current = min(self.current, 1 << (self.limit.bit_length() - 1))
        self._trial, self._trial_left, self._round = None, 0, 0
        self._next_probe = 1 + self.probe_rounds

    def _throughput(self, w: int) -> float:
        s = self.stats.get(w)
        return s.throughput if s is not None and s.rounds > 0 else math.nan

    def choose(self) -> int:
        """The window of the next round."""
        if self._trial is None and self._round >= self._next_probe:
            self._trial = self._candidate()
            if self._trial is None:
                self._next_probe = self._round + self._interval
            else:
                self._trial_left = self.probe_rounds
        return self.current if self._trial is None else self._trial

    def _candidate(self) -> int | None:
        """The neighbour (``2 W`` or ``W / 2``) measured longest ago (never measured: first), up first."""
        top = 1 << (self.limit.bit_length() - 1)  # the largest power of two within the limit
        options = [w for w in (min(self._stride * self.current, top), self.current // 2) if 1 <= w != self.current]
        if not options:
            return None
        return min(options, key=lambda w: self._measured_at.get(w, -1))

    def observe(self, window: int, seconds: float, rows: int, accepted: int) -> None:
        """One round ran ``window`` with ``rows`` rows in ``seconds`` and accepted ``accepted`` steps."""
        self._round += 1
        calls = self._calls.get(window, 0) + 1
        self._calls[window] = calls
        transition, self._last_window = window != self._last_window, window
        if self._round == 1 or transition or calls <= self.warmup:
            return  # the run's first call, a round that changed the window, a size's first calls (compile)
        self.stats.setdefault(window, WindowStats()).update(seconds, rows, accepted, self.smoothing)
        self._measured_at[window] = self._round
        if window != self._trial:
            return
        self._trial_left -= 1
        if self._trial_left > 0:
            return
        self._trial = None
        ratio = self._throughput(window) / self._throughput(self.current)
        if ratio > 1.0 + self.gain:
            self._stride = 4 if window > self.current and ratio > 1.6 else 2
            self.current = window  # moved: probe the next neighbour right away
            self._interval = self.backoff
            self._next_probe = self._round
        else:
            self._stride = 2
            self._interval *= 2  # lost: wait longer before the next probe
            self._next_probe = self._round + self._interval

    def report(self) -> dict:
        """The cost model as measured: per window, throughput (accepted steps per second), seconds and
        rows per call, accepted steps per call, rounds measured; and the window now chosen."""
        return {"chosen": self.current,
                "windows": {w: {"throughput": s.throughput, **vars(s)} for w, s in sorted(self.stats.items())}}
