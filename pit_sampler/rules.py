"""Unmask rules, turned into the per-step tables that every backend consumes.

Step ``j`` goes from ``t_j`` to ``t_{j+1}`` (``Delta_j = t_j - t_{j+1}``); step ``N`` is the final fill.
A masked position's jump count ``K`` is the inverse CDF of its jump uniform ``U = (x + 0.5) 2**-32``
(``x`` its uint32 from :func:`pit_sampler.noise.jump_bits`):

* ``reject``  unmask iff ``K == 1``, ``K ~ Poisson(lambda_j)``, ``lambda_j = Delta_j r(t_j)``;
* ``first``   unmask iff ``K >= 1`` (same ``K``);
* ``tweedie`` unmask iff ``U > 1 - p_j``, ``p_j = (alpha(t_{j+1}) - alpha(t_j)) / (1 - alpha(t_j))``
  (``K`` is then that Bernoulli indicator);
* step ``N``: every still-masked position unmasks (``K = 1``).

Mean parametrization: ``K = #{k : x >= T[j, k]}`` with integer thresholds
``T[j, k] = floor(F_j(k) 2**32 - 0.5) + 1`` (``F_j`` the CDF of the step's count; ``U > F(k)``
exactly when ``x >= T[j, k]``), padded with the unreachable ``2**32``. The thresholds are computed
once here in float64, so every backend makes the same integer decisions.

Score parametrization (SEDD): the step's scalar ``rate[j]`` multiplies the row's
``S = sum_{v != mask} exp(s_v)``: ``lambda = rate[j] S`` with ``rate[j] = Delta_j sigma(t_j)`` for
``reject``/``first`` and ``p = min(1, rate[j] S)`` with ``rate[j] = alpha(t_{j+1}) / alpha(t_j) - 1``
for ``tweedie`` (the analytic absorbing step); ``K`` then comes from float32 CDFs in the kernel,
saturating at :data:`SCORE_MAX_JUMPS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import Schedule

RULES = ("reject", "first", "tweedie")
REJECT, FIRST, TWEEDIE = range(3)
SCORE_MAX_JUMPS = 64
UNREACHABLE = 2**32


@dataclass(frozen=True)
class StepTables:
    """``cdf``: int64 ``[N + 1, K]`` thresholds; ``rate``: float32 ``[N + 1]`` (inf where ``alpha = 0``,
    which only the score parametrization reads); ``rule``: the index of the rule in :data:`RULES`."""

    cdf: torch.Tensor
    rate: torch.Tensor
    rule: int

    @property
    def num_steps(self) -> int:
        return self.cdf.shape[0] - 1

    def to(self, device) -> "StepTables":
        return StepTables(self.cdf.to(device), self.rate.to(device), self.rule)


def _thresholds(cdf_values: torch.Tensor) -> torch.Tensor:
    """``floor(F * 2**32 - 0.5) + 1`` clamped to ``[0, 2**32]`` (``2**32``: no uint32 reaches it)."""
    t = torch.floor(cdf_values * 2.0**32 - 0.5) + 1
    return t.clamp(0, UNREACHABLE).to(torch.int64)


def _poisson_thresholds(lam: torch.Tensor) -> torch.Tensor:
    """int64 ``[N, K]``: thresholds of ``F_j(k)`` for ``k = 0, 1, ...`` per step, ``UNREACHABLE``-padded.

    Vectorised over steps (one pass per ``k``, float64): ``p_0 = exp(-lambda)``,
    ``p_k = p_{k-1} lambda / k``, ``F(k) = F(k - 1) + p_k``; a step's row ends at the first ``k`` whose
    threshold is unreachable (``F(k)`` rounds to 1 at 32 bits) or once ``p_k`` underflows to 0.
    """
    p = torch.exp(-lam)
    f = torch.zeros_like(lam)
    active = torch.ones_like(lam, dtype=torch.bool)
    columns, k = [], 0
    while bool(active.any()):
        f = f + p
        t = _thresholds(f.clamp(max=1.0))
        active &= t < UNREACHABLE
        if not bool(active.any()):
            break
        columns.append(torch.where(active, t, UNREACHABLE))
        k += 1
        p = p * lam / k
        active &= p != 0.0
    if not columns:
        return torch.full((len(lam), 1), UNREACHABLE, dtype=torch.int64)
    return torch.stack(columns, 1)


def _check_schedule(schedule: Schedule, times: torch.Tensor) -> None:
    """Reject grids on which the tables cannot be computed accurately (a clear message, never a hang)."""
    masked = schedule.masked(times)
    if not bool(torch.isfinite(masked).all() and (masked > 0).all() and (masked <= 1).all()):
        raise ValueError(
            f"schedule {schedule!r}: 1 - alpha(t) must lie in (0, 1] on the grid, got "
            f"{float(masked.min()):.3g}..{float(masked.max()):.3g} (t_min={float(times[-1]):.3g} too small?)"
        )
    if not bool((masked[1:] <= masked[:-1]).all()):
        raise ValueError(f"schedule {schedule!r}: alpha(t) must decrease in t (1 - alpha must grow with t)")
    rate = schedule.rate(times[:-1])
    if not bool(torch.isfinite(rate).all() and (rate >= 0).all()):
        raise ValueError(
            f"schedule {schedule!r}: the rate r(t) is not finite and >= 0 on the grid (t_min={float(times[-1]):.3g} too small?)"
        )


def step_tables(schedule: Schedule, times: torch.Tensor, rule: str) -> StepTables:
    """Integer thresholds and score rates for the grid ``times`` (float64 ``[N + 1]``)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    _check_schedule(schedule, times)
    t_now, t_next = times[:-1], times[1:]
    if rule == "tweedie":
        p = ((schedule.masked(t_now) - schedule.masked(t_next)) / schedule.masked(t_now)).clamp(0.0, 1.0)
        steps = _thresholds(1.0 - p).unsqueeze(1)
        score_rate = schedule.alpha(t_next) / schedule.alpha(t_now) - 1.0
    else:
        lam = (t_now - t_next) * schedule.rate(t_now)
        steps = _poisson_thresholds(lam)
        score_rate = (t_now - t_next) * schedule.sigma(t_now)
    final = torch.full((1, steps.shape[1]), UNREACHABLE, dtype=torch.int64)
    final[0, 0] = 0  # final fill: K = 1 for every masked position
    cdf = torch.cat([steps, final])
    rate = torch.cat([score_rate, torch.zeros(1, dtype=torch.float64)])
    return StepTables(cdf, rate.to(torch.float32), RULES.index(rule))
