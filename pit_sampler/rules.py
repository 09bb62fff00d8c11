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


def _poisson_thresholds(lam: torch.Tensor) -> list[torch.Tensor]:
    rows = []
    for lam_j in lam.tolist():
        p, f, ks = pow(2.718281828459045, -lam_j), 0.0, []
        k = 0
        while True:
            f += p
            t = _thresholds(torch.tensor(min(f, 1.0), dtype=torch.float64))
            if t >= UNREACHABLE:
                break
            ks.append(int(t))
            k += 1
            p *= lam_j / k
            if p == 0.0:  # the CDF stopped moving below 1 (lambda tiny): the rest is unreachable
                break
        rows.append(torch.tensor(ks, dtype=torch.int64))
    return rows


def step_tables(schedule: Schedule, times: torch.Tensor, rule: str) -> StepTables:
    """Integer thresholds and score rates for the grid ``times`` (float64 ``[N + 1]``)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    t_now, t_next = times[:-1], times[1:]
    alpha_now, alpha_next = schedule.alpha(t_now), schedule.alpha(t_next)
    if rule == "tweedie":
        p = ((alpha_next - alpha_now) / (1.0 - alpha_now)).clamp(0.0, 1.0)
        rows = [t.reshape(1) for t in _thresholds(1.0 - p)]
        score_rate = alpha_next / alpha_now - 1.0
    else:
        lam = (t_now - t_next) * schedule.rate(t_now)
        rows = _poisson_thresholds(lam)
        score_rate = (t_now - t_next) * schedule.sigma(t_now)
    rows.append(torch.zeros(1, dtype=torch.int64))  # final fill: K = 1 for every masked position
    width = max(1, max(len(r) for r in rows))
    cdf = torch.full((len(rows), width), UNREACHABLE, dtype=torch.int64)
    for j, r in enumerate(rows):
        cdf[j, : len(r)] = r
    rate = torch.cat([score_rate, torch.zeros(1, dtype=torch.float64)])
    return StepTables(cdf, rate.to(torch.float32), RULES.index(rule))
