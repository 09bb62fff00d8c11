"""A run's plan: what a step rule decides before any model call (:mod:`pit_sampler.steps`).

Per sample, before the first call:

* ``steps [B, S]``: the global steps it must perform, in increasing order (steps that change nothing
  are left out: skip-inactive). The width ``S`` depends only on shapes, so every run of a shape has
  the same tensor shapes. Entries past ``total[b]`` are padding;
* ``total [B]``: how many steps that is (0 for a sample with nothing masked: it passes through);
* ``rank [B, L]`` (when the rule knows it): for each masked position, the index into ``steps[b]`` of
  the step at which it is drawn (``-1`` for prompt positions). A round whose window covers planned
  steps ``pos .. pos + n - 1`` draws exactly the positions with ``pos <= rank < pos + n``, which is
  what the positions protocol requests from the model;
* ``extra``: the rule's own per-sample tables (``[B, ...]`` each), compacted with the plan.

:meth:`Plan.window_draws` counts the draws of each window of ``span`` planned steps, and
:func:`reach_bound` bounds the draws of the windows the next rounds can start at (a poll's reach:
a round advances a sample by at most ``W`` slots), which sizes those rounds' packed logits
statically (no host read per round); ``reach=None`` bounds the whole rest of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Plan:
    """Each sample's planned steps (module docstring). ``rank`` is ``None`` when the draws are not
    known in advance (the score parametrization, or a rule that draws every candidate)."""

    steps: Tensor
    total: Tensor
    rank: Tensor | None
    extra: tuple[Tensor, ...] = ()

    def tensors(self) -> tuple:
        """The plan as loose arguments of a round (a compiled or captured round keys on tensors)."""
        return (self.steps, self.total, self.rank, *self.extra)

    @classmethod
    def of(cls, steps: Tensor, total: Tensor, rank: Tensor | None, *extra: Tensor) -> "Plan":
        """The plan :meth:`tensors` flattened."""
        return cls(steps, total, rank, extra)

    @property
    def length(self) -> int:
        """``S``, the planned steps' width (at least 1)."""
        return self.steps.shape[1]

    def select(self, index: Tensor) -> "Plan":
        """The plan of the samples ``index`` (compaction)."""
        rank = None if self.rank is None else self.rank[index]
        return Plan(self.steps[index], self.total[index], rank, tuple(t[index] for t in self.extra))

    def window_slots(self, pos: Tensor, n: int) -> Tensor:
        """int64 ``[n, B]``: planned slots ``pos .. pos + n - 1``, clamped to the plan's width."""
        slot = pos.unsqueeze(0) + torch.arange(n, device=pos.device).unsqueeze(1)
        return slot.clamp(max=self.length - 1)

    def window_steps(self, pos: Tensor, n: int) -> Tensor:
        """int64 ``[n, B]``: the global steps of planned slots ``pos .. pos + n - 1`` (``-1`` past the end)."""
        slot = pos.unsqueeze(0) + torch.arange(n, device=pos.device).unsqueeze(1)
        steps = self.steps.gather(1, self.window_slots(pos, n).T).T
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
