"""One round: a Picard iteration of every sample, on the device, with static shapes.

A round evaluates the denoiser once on the ``W`` window states of all ``B`` samples (rows
``w B + b``), lets the step rule sweep the window (and its extension guesses, if the rule has them)
in one fused launch, accepts slices (:mod:`pit_sampler.engine.accept`), records errors of accepted
slices and slides the window (:func:`pit_sampler.engine.window.slide`). Every tensor has the same
shape round after round and nothing is read back to the host, so a round compiles whole
(``compile=True``) and replays as one CUDA graph (``cuda_graph=True``). Slices past a sample's plan
pass their state through (steps ``-1``): finished samples ride along until the next poll.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .accept import Acceptance, record_errors
from .call import DenoiserCall
from .plan import Plan
from .window import acceptance_tally, slide


def carry_on(carry: Tensor | None, carried: Tensor | None, accept: Tensor) -> Tensor | None:
    """What a rule carries into the next round: ``carried[accept - 1]`` per sample (the candidate of
    its last accepted slice, whose input state was exact), the old ``carry`` where nothing was accepted."""
    if carried is None:
        return None
    B = accept.shape[0]
    chosen = carried[(accept - 1).clamp(min=0), torch.arange(B, device=accept.device)]
    if carry is None:
        return chosen
    keep = (accept > 0).view(B, *[1] * (chosen.dim() - 1))
    return torch.where(keep, chosen, carry)


class Round:
    """``Round(call, acceptance, tally)``; calling it runs one round (module docstring).
    ``tally``: also return each round's :func:`~pit_sampler.engine.window.acceptance_tally` (what
    ``window="auto"`` learns from)."""

    def __init__(self, call: DenoiserCall, acceptance: Acceptance, tally: bool = False):
        self.call, self.acceptance, self.tally = call, acceptance, tally

    def __call__(self, window: Tensor, pos: Tensor, iters: Tensor, err: Tensor, seeds: Tensor, samples: Tensor, rule,
                 budget: int, carry: Tensor | None, *plan: Tensor):
        """``window [W + 1, B, L]``, ``pos``, ``iters``, ``err``, ``seeds``, ``samples`` ``[B]``; ``rule``: the step
        rule on this device; ``budget``: packed logits rows, when the rule reads packed rows; ``carry``:
        what the rule carries from the last exact slice (``None`` for most rules, and before the first
        round); ``plan``: :meth:`Plan.tensors`. Returns ``(window, pos, iters, err, residual, V, tally,
        carry)``: ``residual`` int32 ``[W]`` (positions changed per slice, summed over the batch), ``V``
        the vocabulary size the denoiser returned (a shape; ``None`` if this process made no call),
        ``tally`` ``None`` unless asked for."""
        plan = Plan.of(*plan)
        W, L = window.shape[0] - 1, window.shape[2]
        steps = plan.window_steps(pos, rule.span(W))
        live = steps[:W] >= 0
        states, residual, invalid, V, carried = self.evaluate(window, pos, steps, seeds, rule, plan, budget, carry,
                                                                   samples)
        iters = iters + live[0]
        accept = self.acceptance(residual, live, iters, L)
        accepted = torch.arange(W, device=window.device).unsqueeze(1) < accept.unsqueeze(0)
        err = record_errors(err, invalid[:W], accepted, steps[:W])
        tally = acceptance_tally(accept, plan.total - pos, W) if self.tally else None
        return (slide(window[0], states, accept, W), pos + accept, torch.where(accept > 0, 0, iters), err,
                residual.sum(1, dtype=torch.int32), V, tally, carry_on(carry, carried, accept))

    def evaluate(self, window, pos, steps, seeds, rule, plan: Plan, budget: int, carry: Tensor | None = None,
                 samples: Tensor | None = None):
        """The denoiser call on ``window[:W]`` (``samples``: whose rows they are) and the rule's sweep over ``steps``' slices:
        ``(states [n, B, L], residual [W, B], invalid [n, B], V, carried)``, ``carried`` the rule's
        per-slice carry candidates (``None`` for rules that carry nothing)."""
        W, B, L = window.shape[0] - 1, window.shape[1], window.shape[2]
        xs = window[:W].reshape(W * B, L)
        ts = rule.times[steps[:W].clamp(min=0)].reshape(W * B)
        index, rows = rule.request(window[0], plan, pos, steps.shape[0], W, budget)
        logits = rule.prepare(self.call(xs, ts, index, samples))
        states, residual, invalid, carried = rule.sweep(logits, rows, steps, window, seeds, plan, pos, carry)
        return states, residual, invalid, logits.shape[-1], carried

    def cost(self, W: int, B: int, L: int, budget: int, rule) -> tuple[int, int]:
        """``(rows, logits rows)`` one round evaluates: the window of every sample, and every position
        of every row or, with the positions protocol, the packed request."""
        if not (self.call.positions and rule.packing != "none"):
            return W * B, W * B * L
        return W * B, (W if rule.packing == "masked" else 1) * budget
