"""The interface between the engine and a step rule.

A rule says, before any model call, which steps each sample performs (its :class:`Plan`), and, in a
round, which logits rows it reads and how one fused sweep turns them into the window's new states.
Everything else (window state, rounds, polls, compaction, acceptance, errors, the auto window,
compile and CUDA graphs, progress, results) is the engine's.

A rule is frozen and holds its tables on one device (:meth:`StepRule.to`): it is passed to every
round as an argument, so a compiled round guards on it and a captured graph keeps reading the same
tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.plan import Plan


@dataclass(frozen=True)
class StepRule:
    """A step rule (module docstring).

    ``times``: float32 ``[N + 1]``, the time input of the denoiser at each global step;
    ``extension``: whether the sweep also runs ``W`` extension slices after the window (guesses for
    the slots the window slides into, reusing the last window slice's logits);
    ``packing``: how the engine sizes the packed logits of a round (``"none"``: the rule reads the
    full output; ``"draws"``: at most the plan's draws of the window, :meth:`Plan.window_draws`;
    ``"masked"``: every masked position of every window slice)."""

    times: Tensor
    extension = False
    packing = "none"

    def to(self, device: torch.device) -> "StepRule":
        """The same rule with its tables on ``device``."""
        raise NotImplementedError

    def plan(self, x: Tensor, seeds: Tensor, masked: list[int]) -> Plan:
        """The plan of ``x [B, L]`` (``masked``: each sample's masked positions, read by the engine)."""
        raise NotImplementedError

    def span(self, W: int) -> int:
        """Slices of a round's sweep: the window and, with extension slices and ``W > 1``, as many guesses."""
        return 2 * W if self.extension and W > 1 else W

    def request(self, x0: Tensor, plan: Plan, pos: Tensor, n: int, W: int, budget: int):
        """``(index, rows)``: the flat logits rows ``r L + l`` the sweep reads (``None``: the full
        output) and the map the sweep reads them through."""
        raise NotImplementedError

    def prepare(self, logits: Tensor) -> Tensor:
        """The rule's transform of the packed rows ``[M, V]`` it reads (default: none)."""
        return logits

    def sweep(self, logits: Tensor, rows: Tensor, steps: Tensor, window: Tensor, seeds: Tensor, plan: Plan,
              pos: Tensor, carry: Tensor | None):
        """One fused sweep over ``steps``' ``n`` slices from ``window[0]``, with ``window[1:]`` the previous
        iterate (``pos``: each sample's first planned slot): ``(states [n, B, L], residual [W, B],
        invalid [n, B], carried)``. A rule that needs something of the slice before the window (the
        trapezoidal rule: the logits of the previous state) returns per-slice candidates ``carried
        [n, B, ...]``; the engine keeps each sample's candidate of its last accepted slice (its input
        was exact) and passes it back as ``carry`` (``None`` before the first round). Others return
        ``None``."""
        raise NotImplementedError
