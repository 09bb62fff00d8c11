"""Pure-PyTorch reference of every op: the oracle all backends are tested against.

Runs on any device; clarity over speed (it materialises the noise it needs). The op contracts:

``unmask_table(x, seeds, cdf, mask_id, rule) -> int64 [B, L]``
    For each position masked in ``x`` the step ``j`` in ``0..N-1`` at which it unmasks under the
    mean parametrization (the first ``j`` whose jump count ``K`` passes the rule, see
    :mod:`pit_sampler.rules`), ``N`` if it stays masked until the final fill, and ``-1`` for
    positions that are not masked (prompt tokens never change).

``sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score,
argmax_final) -> (states, counts, residual, invalid)``
    One Picard sweep over a window of ``W`` slices (``W = 1``: one tau-leaping step).
    ``x0`` int64 ``[B, L]`` is the window's first, exact state; slice ``w`` of sample ``b`` performs
    global step ``steps[w, b]`` (``-1``: pass the state through unchanged) with the denoiser output
    ``logits[rows[w, b]]`` (``[R, L, V]``, evaluated at the previous iterate's state of that slice).
    Absorbing scan over slices, per position: a masked position's count ``K`` and unmask decision
    come from the jump noise (mean: integer thresholds ``cdf``; score: ``rate`` times the row's
    ``sum exp``); an unmasking position takes
    ``argmax_{v != mask_id} logits[v] * inv_t + G[seed_b, j, l, v]`` with ``inv_t = 1.0f / float32(temperature)``
    (a float32 multiply, as CUDA evaluates a division by a scalar, so that every device agrees)
    (plain argmax at the final step ``N`` when ``argmax_final``). Outputs: ``states`` int64
    ``[W, B, L]`` after each slice, ``counts`` int32 ``[W, B, L]`` (``K`` of masked positions, else 0),
    ``residual`` int32 ``[W, B]`` = positions where ``states`` differs from ``prev``, and ``invalid``
    int32 ``[W, B]`` = rows that had to be read and hold NaN or +inf, or only -inf, on non-mask
    tokens (such a position stays masked; callers raise).
"""

from __future__ import annotations

import torch

from .noise import gumbel_bits, gumbel_from_bits, jump_bits, uniform_from_bits
from .rules import REJECT, SCORE_MAX_JUMPS, TWEEDIE

_TABLE_CHUNK = 1 << 22  # jump uniforms materialised at once by unmask_table
_ROW_CHUNK = 1 << 22  # logits elements handled at once by the token draw


def _mean_counts(bits: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``K = #{k : bits >= thresholds[..., k]}`` (thresholds broadcast against ``bits[..., None]``)."""
    return (bits.unsqueeze(-1) >= thresholds).sum(-1, dtype=torch.int32)


def _unmasks(counts: torch.Tensor, rule: int) -> torch.Tensor:
    return counts == 1 if rule == REJECT else counts >= 1


def unmask_table(x: torch.Tensor, seeds: torch.Tensor, cdf: torch.Tensor, mask_id: int, rule: int) -> torch.Tensor:
    B, L = x.shape
    N = cdf.shape[0] - 1
    masked = x == mask_id
    table = torch.where(masked, N, -1).to(torch.int64)
    pending = masked.clone()
    positions = torch.arange(L, device=x.device)
    chunk = max(1, _TABLE_CHUNK // max(1, B * L))
    for j0 in range(0, N, chunk):
        js = torch.arange(j0, min(N, j0 + chunk), device=x.device)
        bits = jump_bits(seeds.view(1, B, 1), js.view(-1, 1, 1), positions.view(1, 1, L))
        hit = _unmasks(_mean_counts(bits, cdf[js].view(len(js), 1, 1, -1)), rule) & pending
        any_hit = hit.any(0)
        first = hit.to(torch.int8).argmax(0) + j0
        table = torch.where(any_hit, first, table)
        pending &= ~any_hit
        if not pending.any():
            break
    return table


def _bad_rows(rows: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Rows (``[n, V]``) holding NaN or +inf on a non-mask token, or nothing above -inf."""
    clean = torch.cat([rows[:, :mask_id], rows[:, mask_id + 1 :]], 1)
    return torch.isnan(clean).any(1) | (clean == float("inf")).any(1) | (clean == float("-inf")).all(1)


def _draw_tokens(rows, seeds, steps, positions, mask_id, temperature, argmax):
    """Gumbel-max token of each row (``[n, V]`` float32), keyed by ``(seed, step, position, v)``."""
    n, V = rows.shape
    vocab = torch.arange(V, device=rows.device)
    inv_t = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(temperature, dtype=torch.float32))
    out = torch.empty(n, dtype=torch.int64, device=rows.device)
    chunk = max(1, _ROW_CHUNK // V)
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        scores = rows[sl] * inv_t
        g = gumbel_from_bits(gumbel_bits(seeds[sl, None], steps[sl, None], positions[sl, None], vocab))
        scores = torch.where(argmax[sl, None], scores, scores + g)
        scores[:, mask_id] = float("-inf")
        out[sl] = scores.argmax(1)
    return out


def _score_counts(bits, lam):
    """float32 inverse CDF of ``Poisson(lam)`` at ``U``, saturating at ``SCORE_MAX_JUMPS``."""
    u = uniform_from_bits(bits)
    p = torch.exp(-lam)
    f = p
    k = torch.zeros_like(bits, dtype=torch.int32)
    for i in range(1, SCORE_MAX_JUMPS + 1):
        k += (u > f).to(torch.int32)
        p = p * lam / i
        f = f + p
    return k


def sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score, argmax_final):
    W, B = steps.shape
    L = x0.shape[1]
    N = cdf.shape[0] - 1
    device = x0.device
    positions = torch.arange(L, device=device)
    states = torch.empty((W, B, L), dtype=torch.int64, device=device)
    counts = torch.zeros((W, B, L), dtype=torch.int32, device=device)
    invalid = torch.zeros((W, B), dtype=torch.int32, device=device)
    cur = x0.clone()
    for w in range(W):
        step = steps[w]
        live = step >= 0
        masked = (cur == mask_id) & live[:, None]
        j = step.clamp(min=0)
        bits = jump_bits(seeds[:, None], j[:, None], positions[None, :])
        if score:
            bb, ll = masked.nonzero(as_tuple=True)
            s = logits[rows[w, bb], ll].to(torch.float32)
            bad = _bad_rows(s, mask_id)
            s[:, mask_id] = float("-inf")
            x = rate[j[bb]] * torch.exp(torch.logsumexp(s, 1))
            if rule == TWEEDIE:
                k = (uniform_from_bits(bits[bb, ll]) > 1.0 - x.clamp(max=1.0)).to(torch.int32)
            else:
                k = _score_counts(bits[bb, ll], x)
            k = torch.where(j[bb] == N, 1, k)
            k = torch.where(bad, 0, k).to(torch.int32)
            counts[w, bb, ll] = k
            go = _unmasks(k, rule) & ~bad
            invalid[w].index_add_(0, bb, bad.to(torch.int32))
            ub, ul, srows = bb[go], ll[go], s[go]
        else:
            k = torch.where(masked, _mean_counts(bits, cdf[j][:, None, :]), 0)
            counts[w] = k
            ub, ul = (masked & _unmasks(k, rule)).nonzero(as_tuple=True)
            srows = logits[rows[w, ub], ul].to(torch.float32)
            bad = _bad_rows(srows, mask_id)
            invalid[w].index_add_(0, ub, bad.to(torch.int32))
            ub, ul, srows = ub[~bad], ul[~bad], srows[~bad]
        if ub.numel():
            js = j[ub]
            tok = _draw_tokens(srows, seeds[ub], js, ul, mask_id, temperature, (js == N) & argmax_final)
            cur[ub, ul] = tok
        states[w] = cur
    residual = (states != prev).sum(-1, dtype=torch.int32)
    return states, counts, residual, invalid
