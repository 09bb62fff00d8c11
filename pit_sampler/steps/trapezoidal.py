"""The theta-trapezoidal method for absorbing diffusion (second order, two model evaluations per step).

The method (Hu, Li and Min's theta-trapezoidal tau-leaping for reaction networks; Ren et al., "Fast
Solvers for Discrete Diffusion Models", NeurIPS 2025, for discrete diffusion) takes step ``j`` from
``t_j`` to ``t_{j+1}`` (``Delta_j = t_j - t_{j+1}``) in two stages, with
``alpha_1 = 1 / (2 theta (1 - theta))`` and ``alpha_2 = ((1 - theta)^2 + theta^2) / (2 theta (1 - theta))``
(``alpha_1 - alpha_2 = 1``):

1. from ``x_j``, tau-leaping for ``theta Delta_j`` with the rates at ``x_j``: a masked position jumps
   to token ``v`` at rate ``r(t_j) p_v``, ``p = D(x_j, t_j)`` (the mean parametrization); the state
   reached is ``y_j``, at ``t*_j = t_j - theta Delta_j``;
2. from ``y_j``, tau-leaping for ``(1 - theta) Delta_j`` with the extrapolated rates
   ``c_v = (alpha_1 r(t*_j) p*_v - alpha_2 r(t_j) p_v)_+``, ``p* = D(y_j, t*_j)``.

Absorbing diffusion: a position jumps at most once (the mask is left for good), and a position still
masked after stage 1 was masked at ``x_j``, so ``p`` is defined wherever stage 2 needs it. Each stage
is one *slice* of the engine: ``2 N`` stage slices and the final fill (slice ``2 N``, at ``t_N``, from
``p``), ``2 N + 1`` in all, each one model evaluation and one round of the sequential sampler, which
``rounds`` and ``nfe`` count. The jump rates depend on the model, so every slice runs (no
skip-inactive) and every masked position's row is read.

**In the kernel.** Slice ``s`` reads, per position, the *rate density* row
``log c_v = log(a_s q_v - b_s q'_v)_+`` of its own logits ``q = D(state_s)`` and those of the slice
before, ``q' = D(state_{s-1})`` (``a_s, b_s``: ``r(t_j), 0`` at stage 1; ``alpha_1 r(t*_j),
alpha_2 r(t_j)`` at stage 2; ``1, 0`` at the fill), and the sweep op's score path does the rest on
every backend (reference, C++, CUDA C++, Triton): ``lambda = rate_s sum_v c_v`` with ``rate_s`` the
stage's duration, the jump count (``reject``/``first``), the Gumbel-max token from ``log c`` (at
``temperature`` ``T``: ``c^{1/T}``). The combination stays outside the kernel, as a PyTorch map over
the rows read (computed in log space: ``log a + log q + log1p(-(b q') / (a q))``, ``-inf`` where
``b q' >= a q``): it reads two rows per position where the sweep's contract reads one, and is an
elementwise map like top-k truncation; folding it in would give every backend a second row map for
one solver.

**Exact under Picard.** Every slice is a fixed function of the noise (keyed by the slice) and of the
two rows. The rows of the slice before a window's first slice are those of the last accepted slice,
whose input state was exact: the engine carries them (:meth:`TauLeaping.sweep`'s ``carry``), so the
sequential sampler evaluates the model once per slice. Exact Picard (``tol = 0``) gives the sequential
tokens bit for bit.
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
from ..rules import RULES, UNREACHABLE
from ..schedules import get_schedule, time_grid
from .base import StepRule


def trapezoidal_tables(schedule, times: Tensor, theta: float) -> dict[str, Tensor]:
    """Per slice ``s = 0..2N`` (float64): the model's time input ``t``, the stage duration ``rate``
    (``theta Delta_j``, ``(1 - theta) Delta_j``, 0 at the fill), and the coefficients ``a``, ``b`` of the
    rate density ``(a q - b q')_+`` (module docstring)."""
    a1 = 1.0 / (2.0 * theta * (1.0 - theta))
    a2 = ((1.0 - theta) ** 2 + theta**2) / (2.0 * theta * (1.0 - theta))
    t, delta = times[:-1], times[:-1] - times[1:]
    mid = t - theta * delta
    r, r_mid = schedule.rate(t).to(torch.float64), schedule.rate(mid).to(torch.float64)
    if not bool(torch.isfinite(r).all() & torch.isfinite(r_mid).all()):
        raise ValueError(f"schedule {schedule!r} has an infinite rate on the time grid (t_max needs alpha(t_max) > 0)")
    if not bool((a1 * r_mid > a2 * r).all()):  # stage 2's total rate a1 r* - a2 r must stay positive
        raise ValueError(f"schedule {schedule!r}: the trapezoidal stage-2 rate alpha_1 r(t*) - alpha_2 r(t) is not "
                         f"positive on this grid (theta={theta}); use solver='euler'")

    def slices(stage1: Tensor, stage2: Tensor, fill: float) -> Tensor:
        return torch.cat([torch.stack([stage1, stage2], 1).reshape(-1), torch.tensor([fill], dtype=torch.float64)])

    return {"t": slices(t, mid, float(times[-1])), "rate": slices(theta * delta, (1 - theta) * delta, 0.0),
            "a": slices(r, a1 * r_mid, 1.0), "b": slices(torch.zeros_like(r), a2 * r, 0.0)}


def rate_density(own: Tensor, prev: Tensor, a: Tensor, b: Tensor, mask_id: int) -> Tensor:
    """float32 ``log (a softmax(own) - b softmax(prev))_+`` over the clean tokens (``-inf`` at the mask
    and wherever the difference is not positive), rows ``[..., V]``; ``a``, ``b`` broadcast against the
    rows' leading dimensions. Logits with NaN or +inf (of the row, or of the previous row where ``b > 0``)
    give a row of ``-inf``, which the sweep reports as invalid; with ``alpha_1 r(t*) > alpha_2 r(t)``
    (:func:`trapezoidal_tables` checks it) a valid row always keeps some token."""
    clean = torch.arange(own.shape[-1], device=own.device) != mask_id
    logq = torch.log_softmax(torch.where(clean, own.float(), float("-inf")), -1)
    logq_prev = torch.log_softmax(torch.where(clean, prev.float(), float("-inf")), -1)
    a, b = a.unsqueeze(-1), b.unsqueeze(-1)
    ratio = torch.where(b > 0, torch.exp(torch.log(b) + logq_prev - torch.log(a) - logq), 0.0)  # b q' / (a q)
    out = torch.log(a) + logq + torch.log1p(-ratio.clamp(max=1.0))
    return torch.where(ratio < 1, out, float("-inf"))


@dataclass(frozen=True)
class Trapezoidal(StepRule):
    """The theta-trapezoidal rule of a :class:`~pit_sampler.config.TauLeapingConfig` with
    ``solver="trapezoidal"`` (module docstring). Build it with :meth:`build`."""

    spec: ops.SweepSpec
    a: Tensor
    b: Tensor
    mask_id: int

    @classmethod
    def build(cls, config: TauLeapingConfig) -> "Trapezoidal":
        c = config
        tables = trapezoidal_tables(get_schedule(c.schedule), time_grid(c.num_steps, c.grid, c.t_max, c.t_min),
                                    c.theta)
        S = tables["t"].shape[0]
        cdf = torch.full((S, 1), UNREACHABLE, dtype=torch.int64)  # the score path reads only its shape
        spec = ops.SweepSpec(cdf, tables["rate"].to(torch.float32), c.mask_id, c.temperature, RULES.index(c.rule),
                             True, c.final == "argmax")
        f32 = {k: v.to(torch.float32) for k, v in tables.items()}
        return cls(f32["t"], spec, f32["a"], f32["b"], c.mask_id)

    def to(self, device):
        return dataclasses.replace(self, times=self.times.to(device), spec=self.spec.to(device), a=self.a.to(device),
                                   b=self.b.to(device))

    def plan(self, x, seeds, masked):
        S = self.times.shape[0]
        total = torch.where((x == self.mask_id).any(1), S, 0)
        return Plan(torch.arange(S, device=x.device).expand(x.shape[0], S), total, None)

    def request(self, x0, plan, pos, n, W, budget):
        B, L = x0.shape
        return None, rowmaps.full_rows(n, W, B, L, x0.device)

    def sweep(self, logits, rows, steps, window, seeds, plan, pos, carry):
        W, B, L = steps.shape[0], window.shape[1], window.shape[2]
        own = logits.view(W, B, L, logits.shape[-1])
        first = own[:1] if carry is None else carry.unsqueeze(0)  # slice 0's predecessor: the carried rows
        prev = torch.cat([first, own[:-1]])  # (before the first round, slice 0 is a stage-1 slice: b = 0)
        s = steps.clamp(min=0)
        density = rate_density(own, prev, self.a[s].view(W, B, 1), self.b[s].view(W, B, 1), self.mask_id)
        states, _, residual, invalid = self.spec(density.view(W * B * L, -1), rows, steps, window[0], window[1:],
                                                 seeds)
        return states, residual, invalid, own

