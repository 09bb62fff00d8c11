"""How many window slices each sample accepts after a sweep, and which errors count.

A sweep recomputes the window's states slice by slice from the exact first state ``x0``, each slice
with the logits its previous iterate gave. Slice ``w``'s new state is exact when every earlier slice's
input was, i.e. when slices ``0 .. w - 1`` did not change (``residual = 0``) since the previous
iterate. So exact acceptance takes ``c = 1 +`` the number of leading unchanged slices (but the last):
those states are the sequential chain's, whatever the guesses after them.

* ``mode="exact"``, ``tol = 0``: the above; the tokens equal the sequential sampler's, bit for bit
  (``W = 1`` is the sequential sampler: it accepts its one live slice every round);
* ``tol > 0``: a slice counts as unchanged when at most ``tol L`` of its positions changed
  (approximate);
* ``mode="fixed"``: every live slice of a block is accepted after exactly ``max_iters`` iterations on
  it, or earlier once the whole block settled (the paper's block form; exact only if
  ``max_iters >= W``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Acceptance:
    """The acceptance rule of a run (module docstring)."""

    mode: str = "exact"
    tol: float = 0.0
    max_iters: int | None = None

    def is_exact(self, window: int) -> bool:
        """Whether the result is the sequential sample (``window``: the largest window of the run)."""
        return self.tol == 0.0 and (self.mode == "exact" or self.max_iters >= window)

    def __call__(self, residual: Tensor, live: Tensor, iters: Tensor, length: int) -> Tensor:
        """int64 ``[B]``: slices accepted, from ``residual [W, B]`` (positions changed per slice),
        ``live [W, B]`` (slices inside the plan), ``iters [B]`` (iterations on the current block,
        this one included) and ``length`` (positions per state, ``L``)."""
        n_live = live.sum(0)
        settled = (residual <= self.tol * length) | ~live
        if self.mode == "fixed":
            done = settled.all(0) | (iters >= self.max_iters)
            return torch.where(done, n_live, 0)
        leading = torch.cumprod(settled[:-1].to(torch.int64), 0).sum(0)
        return torch.minimum(1 + leading, n_live)


def record_errors(err: Tensor, invalid: Tensor, accepted: Tensor, steps: Tensor) -> Tensor:
    """``err [B]``: ``-1``, or ``2 j + kind`` for the first accepted slice (step ``j``) that read an
    invalid row (``kind = 0``) or that the sweep flagged (a bad step or a missing row, ``kind = 1``: an
    internal error). Discarded slices ran on guesses the sequential chain may never visit, and may
    read anything: a model that fails only there does not fail the run."""
    bad = (invalid != 0) & accepted
    first = bad.to(torch.int8).argmax(0, keepdim=True)
    code = 2 * steps.gather(0, first)[0] + (invalid.gather(0, first)[0] < 0).to(torch.int64)
    return torch.where((err < 0) & bad.any(0), code, err)


def raise_errors(codes: list[int], slots: list[int]) -> None:
    """Raise for the first recorded error (:func:`record_errors`) of any sample (``slots``: each
    code's sample in the caller's batch)."""
    for slot, code in zip(slots, codes):
        if code >= 0:
            sample, step = slot, code // 2
            if code % 2:
                raise RuntimeError(f"internal error: the sweep flagged a bad step or a missing logits row "
                                   f"(sample {sample}, step {step})")
            raise ValueError(
                f"denoiser returned NaN/inf logits (or only -inf, or logits that overflow float32 times "
                f"1/temperature) on a row being sampled: sample {sample}, step {step}"
            )
