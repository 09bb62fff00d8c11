"""k positions per step (MaskGIT / LLaDA orders): the step rule of ``MaskGITSampler``.

Sample ``b`` has ``M_b`` masked positions in ``x_init`` (the rest is its prompt and never changes)
and runs ``N = num_steps`` steps ``j = 0..N-1``. With ``block_length = bl`` (LLaDA's
semi-autoregressive blocks) the masked positions, in position order, form ``n_blocks = M_b / bl``
blocks of ``bl``; block ``i`` runs steps ``i s .. (i + 1) s - 1`` with ``s = N / n_blocks`` and
unmasks only inside itself. Without blocks there is one block of ``n = M_b`` positions and ``s = N``
steps. Within a block of ``n`` positions and ``s`` steps, step ``i`` unmasks exactly ``k_i``
positions (:func:`block_counts`):

* ``linear`` (LLaDA's ``get_num_transfer_tokens``): ``k_i = floor(n / s) + [i < n mod s]``;
* ``cosine`` (MaskGIT), for ``s <= n``: the number still masked after step ``i`` is
  ``m_i = min(n - 1 - i, min_{i' <= i} (d_{i'} + i') - i)`` with
  ``d_i = max(floor(n cos(pi/2 (i + 1) / s)), s - 1 - i)`` (``d_{s-1} = 0``), i.e. MaskGIT's
  ``floor(n gamma((i + 1) / s))`` forced strictly decreasing with room for one unmasking per
  remaining step, so ``k_i >= 1``; for ``s > n``, ``m_i = floor(n cos(pi/2 (i + 1) / s))``
  (``m_{s-1} = 0``). ``k_i = m_{i-1} - m_i`` (``m_{-1} = n``) and ``sum_i k_i = n``.

With ``s > n`` (a ragged batch: a short generation beside a long one, or a row with nothing to fill)
some steps unmask nothing, as in LLaDA's schedule. They change no state, so they cost no call: the
plan holds only the steps with ``k_j > 0`` (skip-inactive), and a row with nothing masked passes
through. ``bl`` must divide ``M_b`` and ``n_blocks`` must divide ``N`` (as LLaDA asserts); violations
raise ``ValueError`` naming the argument.

Step ``j`` evaluates the denoiser at the state ``x_j`` (time input ``t_j = 1 - j / N``), draws a token
and a score for every masked position of the current block, and gives the ``k_j`` highest-scoring
positions their tokens (the fused ``maskgit_sweep`` op, :mod:`pit_sampler.maskgit_reference`:
Gumbel-max keyed by ``(seed, j, l, v)``, scores in fixed point, ties to the lowest position).
Each step is a deterministic map ``x_{j+1} = F_j(x_j, D(x_j))``, so the engine's exact Picard windows
give the sequential tokens. The rule has no extension slices: new window slots start from the last state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import maskgit_ops
from ..engine.plan import Plan
from ..maskgit_reference import ORDERS
from .base import StepRule

SCHEDULES = ("linear", "cosine")


def block_counts(n: int, s: int, schedule: str) -> list[int]:
    """``[k_0, ..., k_{s-1}]``: positions unmasked at each of a block's ``s`` steps (module docstring)."""
    if schedule == "linear":
        return [n // s + (i < n % s) for i in range(s)]
    if s > n:
        remaining = [math.floor(n * math.cos(math.pi / 2 * (i + 1) / s)) for i in range(s - 1)] + [0]
    else:
        d = [max(math.floor(n * math.cos(math.pi / 2 * (i + 1) / s)), s - 1 - i) for i in range(s - 1)] + [0]
        remaining, low = [], n
        for i, di in enumerate(d):
            low = min(low, di + i)
            remaining.append(min(n - 1 - i, low - i))
    return [a - b for a, b in zip([n] + remaining[:-1], remaining)]


def step_counts(masked: int, num_steps: int, block_length: int | None, schedule: str, sample: int) -> list[int]:
    """``k_j`` for ``j = 0..N-1`` of a sample with ``masked`` masked positions (module docstring)."""
    if masked == 0:
        return [0] * num_steps
    n = masked if block_length is None else block_length
    if masked % n:
        raise ValueError(f"block_length={block_length} must divide the number of masked positions ({masked}) "
                         f"of sample {sample}")
    blocks = masked // n
    if num_steps % blocks:
        raise ValueError(f"num_steps={num_steps} must be a multiple of the number of blocks ({blocks}) of sample "
                         f"{sample} (block_length={block_length}, {masked} masked positions)")
    return block_counts(n, num_steps // blocks, schedule) * blocks


def maskgit_plan(x: Tensor, masked: list[int], mask_id: int, num_steps: int, block_length: int | None,
                 schedule: str) -> Plan:
    """The plan of ``x [B, L]``: per sample the steps with ``k_j > 0`` (width ``min(N, L)``), and as
    ``extra`` each planned slot's ``k`` and block, and each position's block (``-1``: prompt)."""
    B, L = x.shape
    N, S = num_steps, min(num_steps, L)
    steps = torch.full((B, S), N, dtype=torch.int64)
    kslot, bslot = torch.zeros(B, S, dtype=torch.int64), torch.full((B, S), -1, dtype=torch.int64)
    total = torch.zeros(B, dtype=torch.int64)
    rows_of: dict[int, list[int]] = {}
    for b, m in enumerate(masked):
        rows_of.setdefault(m, []).append(b)
    for m, rows in rows_of.items():  # samples with equal masked counts share their plan
        k = step_counts(m, N, block_length, schedule, rows[0])
        active = [j for j in range(N) if k[j] > 0]
        per_block = N // (m // (block_length or m)) if m else N
        index = torch.tensor(rows)
        steps[index, : len(active)] = torch.tensor(active, dtype=torch.int64)
        kslot[index, : len(active)] = torch.tensor([k[j] for j in active], dtype=torch.int64)
        bslot[index, : len(active)] = torch.tensor([j // per_block for j in active], dtype=torch.int64)
        total[index] = len(active)
    is_masked = x == mask_id
    pos_block = torch.where(is_masked, (is_masked.cumsum(1) - 1) // (block_length or L), -1)
    device = x.device
    return Plan(steps.to(device), total.to(device), None, (kslot.to(device), bslot.to(device), pos_block))


@dataclass(frozen=True)
class MaskGIT(StepRule):
    """The k-per-step rule (module docstring): ``order`` an index into :data:`ORDERS`."""

    mask_id: int
    num_steps: int
    temperature: float
    order: int
    block_length: int | None
    schedule: str

    @classmethod
    def build(cls, mask_id: int, num_steps: int, temperature: float, order: str, block_length: int | None,
              schedule: str) -> "MaskGIT":
        times = 1.0 - torch.arange(num_steps + 1, dtype=torch.float32) / num_steps
        return cls(times, mask_id, num_steps, temperature, ORDERS.index(order), block_length, schedule)

    def to(self, device):
        return dataclasses.replace(self, times=self.times.to(device))

    def plan(self, x, seeds, masked):
        return maskgit_plan(x, masked, self.mask_id, self.num_steps, self.block_length, self.schedule)

    def request(self, x0, plan, pos, n, W, budget):
        B = x0.shape[0]
        u = torch.arange(n, device=x0.device).unsqueeze(1)
        return None, u * B + torch.arange(B, device=x0.device)

    def sweep(self, logits, rows, steps, window, seeds, plan, pos, carry):
        kslot, bslot, pos_block = plan.extra
        slots = plan.window_slots(pos, steps.shape[0])
        L = window.shape[2]
        states, residual, invalid = maskgit_ops.maskgit_sweep(
            logits.view(-1, L, logits.shape[-1]), rows, steps, window[0], window[1:], seeds,
            torch.where(steps >= 0, kslot.gather(1, slots.T).T, 0),
            torch.where(steps >= 0, bslot.gather(1, slots.T).T, -1), pos_block, self.mask_id, self.temperature,
            self.order)
        return states, residual, invalid, None
