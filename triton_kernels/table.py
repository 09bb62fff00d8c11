"""The unmask-step table: for every masked position, the first step at which it unmasks.

Contract: :func:`pit_sampler.reference.unmask_table` (mean parametrization; ``N`` if the position
waits for the final fill, ``-1`` if it is not masked). One program takes ``BLOCK_L`` positions of a
sample and walks the steps in blocks of ``BLOCK_J``: it regenerates the ``[BLOCK_L, BLOCK_J]`` jump
words in registers (Philox, counter ``(0, l, j, 0)``), counts thresholds passed
(``K = #{k : x >= cdf[j, k]}``), records the first step passing the rule and stops as soon as every
position of its tile has one, so no ``[N, B, L]`` uniforms ever exist.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .jumps import mean_counts, unmasks
from .philox import jump_bits, seed_key

BIG = tl.constexpr(2**31 - 1)


@triton.jit
def _table_kernel(x_ptr, seeds_ptr, cdf_ptr, out_ptr, L, N, KC, mask_id, n_ltiles,
                  RULE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_J: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // n_ltiles
    offs = (pid % n_ltiles) * BLOCK_L + tl.arange(0, BLOCK_L)
    in_l = offs < L
    row = b.to(tl.int64) * L + offs
    masked = (tl.load(x_ptr + row, mask=in_l, other=0) == mask_id) & in_l
    k0, k1 = seed_key(tl.load(seeds_ptr + b))
    table = tl.where(masked, N, -1).to(tl.int64)
    pending = masked
    js = tl.arange(0, BLOCK_J)
    j0 = tl.full((), 0, tl.int32)
    while (j0 < N) & (tl.max(pending.to(tl.int32)) > 0):
        step = j0 + js
        live = step < N
        bits = jump_bits(k0, k1, step[None, :], offs[:, None])
        k = mean_counts(bits, cdf_ptr, step[None, :], live[None, :], KC)
        hit = unmasks(k, RULE) & live[None, :] & pending[:, None]
        found = tl.min(tl.where(hit, step[None, :], BIG), axis=1)
        table = tl.where(found < BIG, found.to(tl.int64), table)
        pending = pending & (found == BIG)
        j0 += BLOCK_J
    tl.store(out_ptr + row, table, mask=in_l)


@dataclass(frozen=True)
class TableConfig:
    """Launch parameters of :func:`unmask_table`: positions and steps per block, warps per program."""

    block_l: int = 64
    block_j: int = 32
    num_warps: int = 4


def default_config(device: torch.device) -> TableConfig:
    return TableConfig() if device.type == "cuda" else TableConfig(block_l=16, block_j=16, num_warps=1)


def unmask_table(x, seeds, cdf, mask_id, rule, config: TableConfig | None = None):
    """The ``unmask_table`` op in one launch of :func:`_table_kernel` (index tensors made contiguous)."""
    B, L = x.shape
    out = torch.empty((B, L), dtype=torch.int64, device=x.device)
    if B * L == 0:
        return out
    cfg = config or default_config(x.device)
    n_ltiles = triton.cdiv(L, cfg.block_l)
    _table_kernel[(B * n_ltiles,)](
        x.contiguous(), seeds.contiguous(), cdf.contiguous(), out, L, cdf.shape[0] - 1, cdf.shape[1], mask_id, n_ltiles,
        RULE=rule, BLOCK_L=cfg.block_l, BLOCK_J=cfg.block_j, num_warps=cfg.num_warps,
    )
    return out
