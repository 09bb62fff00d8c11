"""A run's plan: what the noise decides before any model call.

Under the mean parametrization the jump noise alone decides *when* each masked position unmasks
(:func:`pit_sampler.ops.unmask_table`); only *which token* it takes needs the model. So before the
first call a sampler knows, per sample,

* ``steps [B, S]``: the global steps it must perform, in increasing order. With skip-inactive, the
  distinct steps of its unmask table (at most ``L``: one per masked position, found by sorting the
  ``[B, L]`` table, so memory never scales with ``N``; the width is ``L`` whatever the draw, so that
  every run of a shape has the same tensor shapes); otherwise every step ``0..N``. Entries past
  ``total[b]`` are padding (``N + 1``);
* ``total [B]``: how many steps that is (0 for a sample with nothing masked);
* ``rank [B, L]``: for each masked position, the index into ``steps[b]`` of the step at which it
  unmasks (``-1`` for prompt positions). A round whose window covers planned steps
  ``pos .. pos + n - 1`` draws exactly the positions with ``pos <= rank < pos + n``, which is what
  the positions protocol requests from the model.

:meth:`Plan.window_draws` counts the draws of each window of ``span`` planned steps, and
:func:`reach_bound` bounds the draws of the windows the next rounds can start at (a poll's reach:
a round advances a sample by at most ``W`` slots), which sizes those rounds' packed logits
statically (no host read per round); ``reach=None`` bounds the whole rest of the run.
The score parametrization has no plan beyond ``0..N`` (its jump rates depend on the model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops


@dataclass(frozen=True)
class Plan:
    """Each sample's planned steps (module docstring). ``rank`` is ``None`` when the draws are not
    known in advance (score parametrization)."""

    steps: Tensor
    total: Tensor
    rank: Tensor | None

    @property
    def length(self) -> int:
        """``S``, the planned steps' width (at least 1)."""
        return self.steps.shape[1]

    def select(self, index: Tensor) -> "Plan":
        """The plan of the samples ``index`` (compaction)."""
        rank = None if self.rank is None else self.rank[index]
        return Plan(self.steps[index], self.total[index], rank)

    def window_steps(self, pos: Tensor, n: int) -> Tensor:
        """int64 ``[n, B]``: the global steps of planned slots ``pos .. pos + n - 1`` (``-1`` past the end)."""
        slot = pos.unsqueeze(0) + torch.arange(n, device=pos.device).unsqueeze(1)
        steps = self.steps.gather(1, slot.clamp(max=self.length - 1).T).T
        return torch.where(slot < self.total.unsqueeze(0), steps, -1)

    def window_draws(self, span: int) -> Tensor:
        """int64 ``[B, S]``: entry ``[b, s]`` is how many positions sample ``b`` draws in the ``span``
        planned steps from slot ``s`` on."""
        B, S = self.steps.shape
        per_step = torch.zeros(B, S + 1, dtype=torch.int64, device=self.steps.device)
        per_step.scatter_add_(1, torch.where(self.rank >= 0, self.rank, S), torch.ones_like(self.rank))
        prefix = torch.nn.functional.pad(per_step[:, :S].cumsum(1), (1, 0))  # [B, S + 1]
        ends = (torch.arange(S, device=self.steps.device) + span).clamp(max=S)
        return prefix[:, ends] - prefix[:, :S]


def reach_bound(windows: Tensor, pos: Tensor, reach: int | None) -> Tensor:
    """int64 ``[B]``: the most draws of a window (``windows``: :meth:`Plan.window_draws`) starting at a
    slot in ``[pos, pos + reach)``; ``reach=None``: at any slot from ``pos`` on (the suffix bound)."""
    slot = torch.arange(windows.shape[1], device=windows.device).unsqueeze(0)
    inside = slot >= pos.unsqueeze(1)
    if reach is not None:
        inside &= slot < pos.unsqueeze(1) + reach
    return torch.where(inside, windows, 0).max(1).values


def make_plan(x: Tensor, seeds: Tensor, tables, mask_id: int, num_steps: int, *, skip_inactive: bool,
              need_rank: bool) -> Plan:
    """The plan of ``x [B, L]`` (module docstring). ``need_rank``: compute ``rank`` (mean
    parametrization with the positions protocol; skip-inactive computes the table anyway)."""
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
