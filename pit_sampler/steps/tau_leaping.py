"""Tau-leaping for absorbing diffusion: the step rule of ``TauLeapingSampler`` and ``PITSampler``.

Step ``j`` goes from ``t_j`` to ``t_{j+1}`` on the time grid; each masked position's jump count is
read off its noise and the rule's integer thresholds (:mod:`pit_sampler.rules`), and a position that
unmasks takes a Gumbel-max token from its logits row (:mod:`pit_sampler.reference`, the contract of
the fused ``sweep`` op).

**The plan.** Under the mean parametrization the jump noise alone decides *when* each masked
position unmasks (:func:`pit_sampler.ops.unmask_table`); only *which token* needs the model. With
skip-inactive a sample's plan is the distinct steps of its unmask table (at most ``L``: one per
masked position, found by sorting the ``[B, L]`` table, so memory never scales with ``N``; width
``L`` whatever the draw); otherwise every step ``0..N`` (the score parametrization: its jump rates
depend on the model). ``rank`` says which planned step draws each position.

**Rows read.** The sweep reads packed rows through a map (:mod:`pit_sampler.engine.rows`): the full
output; with the positions protocol, only the rows drawn (mean) or every masked position's row
(score, whose rate needs the log-sum-exp); with ``top_k``/``top_p`` and a plain model, the drawn rows
picked from the full output, and only those are truncated. The sweep also runs ``W`` extension slices
(guesses for the next window slots, from the last window slice's logits) in the same launch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..config import TauLeapingConfig
from ..engine import rows as rowmaps
from ..engine.plan import Plan
from ..rules import step_tables
from ..schedules import get_schedule, time_grid
from ..truncation import truncate_logits
from .base import StepRule


def make_plan(x: Tensor, seeds: Tensor, tables, mask_id: int, num_steps: int, *, skip_inactive: bool,
              need_rank: bool) -> Plan:
    """The plan of ``x [B, L]`` (module docstring); ``tables``: the integer jump tables (``.cdf``,
    ``.rule``). ``need_rank``: compute ``rank`` (skip-inactive computes the table anyway)."""
    B, N = x.shape[0], num_steps
    table = None
    if skip_inactive or need_rank:
        table = ops.unmask_table(x, seeds, tables.cdf, mask_id, tables.rule)
    if not skip_inactive:
        total = torch.where((x == mask_id).any(1), N + 1, 0)
        return Plan(torch.arange(N + 1, device=x.device).expand(B, N + 1), total, table)
    ordered = table.sort(1).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep = first & (ordered >= 0)
    total = keep.sum(1)
    steps = torch.where(keep, ordered, N + 1).sort(1).values  # [B, L]: a static width, no host read
    rank = None
    if need_rank:
        rank = torch.where(table >= 0, torch.searchsorted(steps, table.clamp(min=0)), -1)
    return Plan(steps, total, rank)


@dataclass(frozen=True)
class TauLeaping(StepRule):
    """The rule of a :class:`~pit_sampler.config.TauLeapingConfig` (module docstring); ``positions``:
    whether the denoiser offers the positions protocol. Build it with :meth:`build`."""

    spec: ops.SweepSpec
    config: TauLeapingConfig
    positions: bool
    packing: str
    extension = True

    @classmethod
    def build(cls, config: TauLeapingConfig, positions: bool) -> "TauLeaping":
        c = config
        schedule = get_schedule(c.schedule)
        times = time_grid(c.num_steps, c.grid, c.t_max, c.t_min)
        tables = step_tables(schedule, times, c.rule)
        if c.score and not bool(torch.isfinite(tables.rate).all()):
            raise ValueError(f"schedule {schedule!r} has an infinite score rate at t_max={c.t_max} "
                             "(needs alpha(t_max) > 0)")
        spec = ops.SweepSpec(tables.cdf, tables.rate, c.mask_id, c.temperature, tables.rule, c.score,
                             c.final == "argmax")
        truncates = c.top_k is not None or c.top_p is not None
        packing = ("masked" if positions else "none") if c.score else ("draws" if positions or truncates else "none")
        return cls(times.to(torch.float32), spec, c, positions, packing)

    def to(self, device):
        return dataclasses.replace(self, times=self.times.to(device), spec=self.spec.to(device))

    def plan(self, x, seeds, masked):
        c = self.config
        return make_plan(x, seeds, self.spec, c.mask_id, c.num_steps, skip_inactive=c.skips_inactive,
                         need_rank=self.packing == "draws")

    def request(self, x0, plan, pos, n, W, budget):
        B, L = x0.shape
        if self.packing == "masked":
            return rowmaps.score_rows(x0 == self.config.mask_id, n, W, budget)
        if self.packing == "draws":
            return rowmaps.mean_rows(plan.rank, pos, n, W, budget)
        return None, rowmaps.full_rows(n, W, B, L, x0.device)

    def prepare(self, logits):
        c = self.config
        if c.top_k is None and c.top_p is None:
            return logits
        return truncate_logits(logits, c.top_k, c.top_p, c.temperature, c.mask_id)

    def sweep(self, logits, rows, steps, window, seeds, plan, pos, carry):
        states, _, residual, invalid = self.spec(logits, rows, steps, window[0], window[1:], seeds)
        return states, residual, invalid, None
