"""Pure-PyTorch reference of every op: the oracle all backends are tested against.

Runs on any device; clarity over speed (it materialises the noise it needs). The op contracts:

``unmask_table(x, seeds, cdf, mask_id, rule) -> int64 [B, L]``
    For each position masked in ``x`` the step ``j`` in ``0..N-1`` at which it unmasks under the
    mean parametrization (the first ``j`` whose jump count ``K`` passes the rule, see
    :mod:`pit_sampler.rules`), ``N`` if it stays masked until the final fill, and ``-1`` for
    positions that are not masked (prompt tokens never change).

``sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score,
argmax_final, with_counts) -> (states, counts, residual, invalid)``
    One Picard sweep over a window of ``W`` slices (``W = 1``: one tau-leaping step).
    ``x0`` int64 ``[B, L]`` is the window's first, exact state; slice ``w`` of sample ``b`` performs
    global step ``j = steps[w, b]``. ``logits [M, V]`` are packed rows (read through their strides):
    position ``l`` of slice ``w`` of sample ``b`` reads row ``rows[w, b, l]`` (int64 ``[W, B, L]``), the
    denoiser output for that position evaluated at the previous iterate's state of that slice. Only
    the rows a slice reads need to exist: under the mean parametrization those of the positions it
    unmasks, under the score parametrization those of every position masked before it. A full
    ``[R, L, V]`` output is the special case ``logits.view(R * L, V)``, ``rows = r * L + l``.

    *Slices.* ``j < 0``: not live, the state passes through unchanged. ``0 <= j <= N``
    (``N = cdf.shape[0] - 1``): a step. A slice with ``j > N`` is a *bad slice*: it passes the state
    through exactly like ``j = -1``, reads nothing, and reports ``invalid[w, b] = -1``. A read whose
    ``rows[w, b, l]`` lies outside ``[0, M)`` is a *missing row*: the position stays masked (score
    parametrization: its count is 0) and the slice reports ``invalid[w, b] = -1``. No index is ever
    read out of bounds, whatever the index values.

    *Jumps.* Absorbing scan over slices, per position: a masked position's count ``K`` and unmask
    decision come from the jump noise: mean parametrization, ``K = #{k : x >= cdf[j, k]}``; score
    parametrization, ``lambda = min(rate[j] * exp(logsumexp_{v != mask} logits[v]), FLT_MAX)``
    (float32; the clamp makes an overflowing or infinite rate saturate: ``K = SCORE_MAX_JUMPS``, and
    tweedie's ``p = min(1, lambda) = 1``), ``K`` the float32 Poisson inverse CDF at ``U`` (tweedie:
    ``[U > 1 - min(1, lambda)]``); ``K = 1`` at the final step ``N``.

    *Draw.* An unmasking position takes ``argmax_{v != mask_id} s_v + G[seed_b, j, l, v]`` with the
    scaled logits ``s_v = logits[v] * inv_t``, ``inv_t = float32(1) / float32(temperature)`` (a float32
    multiply, as CUDA evaluates a division by a scalar, so that every device agrees); the plain argmax
    ``argmax_{v != mask_id} s_v`` at the final step ``N`` when ``argmax_final``. ``temperature = 0``
    is greedy: every draw is the plain argmax of the raw logits (``s_v = logits[v]``, no noise). Ties
    go to the lowest id.

    *Invalid rows.* A row that is read is invalid iff some ``s_v`` (``v != mask_id``) is NaN or +inf,
    or every ``s_v`` is -inf; so finite logits that overflow to +inf under the scale make the row
    invalid, and those that overflow to -inf only ban their token (as ``-inf`` logits do). An invalid
    row's position stays masked (no token is ever taken from it; score parametrization: its count is 0).

    Outputs: ``states`` int64 ``[W, B, L]`` after each slice; ``counts`` int32 ``[W, B, L]`` (``K`` of
    masked positions at live slices, else 0) when ``with_counts``, else an empty int32 ``[0]`` (not
    computed); ``residual`` int32 ``[P, B]`` = positions where ``states[:P]`` differs from ``prev``
    (int64 ``[P, B, L]``, ``0 <= P <= W``: slices past ``P`` have no previous iterate, e.g. the
    window-extension guesses); ``invalid`` int32 ``[W, B]`` = ``-1`` for a bad slice or a missing row,
    else the number of invalid rows the slice read (callers raise on any nonzero value).
"""

from __future__ import annotations

import torch

from .noise import gumbel_bits, gumbel_from_bits, jump_bits, uniform_from_bits
from .rules import REJECT, SCORE_MAX_JUMPS, TWEEDIE
from .validation import inverse_temperature

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


FLT_MAX = torch.finfo(torch.float32).max


def _bad_rows(scaled: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Rows (``[n, V]`` scaled float32 values) holding NaN or +inf on a non-mask token, or nothing above -inf."""
    clean = torch.cat([scaled[:, :mask_id], scaled[:, mask_id + 1 :]], 1)
    return torch.isnan(clean).any(1) | (clean == float("inf")).any(1) | (clean == float("-inf")).all(1)


def _draw_tokens(scaled, seeds, steps, positions, mask_id, argmax):
    """Gumbel-max token of each row (``[n, V]`` scaled float32), keyed by ``(seed, step, position, v)``;
    plain argmax where ``argmax``."""
    n, V = scaled.shape
    vocab = torch.arange(V, device=scaled.device)
    out = torch.empty(n, dtype=torch.int64, device=scaled.device)
    chunk = max(1, _ROW_CHUNK // V)
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        g = gumbel_from_bits(gumbel_bits(seeds[sl, None], steps[sl, None], positions[sl, None], vocab))
        scores = torch.where(argmax[sl, None], scaled[sl], scaled[sl] + g)
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


def sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score, argmax_final,
          with_counts):
    W, B = steps.shape
    L = x0.shape[1]
    N = cdf.shape[0] - 1
    M = logits.shape[0]
    device = x0.device
    greedy = temperature == 0
    inv_t = inverse_temperature(temperature)
    positions = torch.arange(L, device=device)
    states = torch.empty((W, B, L), dtype=torch.int64, device=device)
    counts = torch.zeros((W, B, L) if with_counts else (0,), dtype=torch.int32, device=device)
    started = steps >= 0
    good = started & (steps <= N)
    invalid = torch.zeros((W, B), dtype=torch.int32, device=device)
    missing = started & ~good  # bad slices, then slices with a missing row
    cur = x0.clone()
    for w in range(W):
        live = good[w]
        masked = (cur == mask_id) & live[:, None]
        j = torch.where(live, steps[w], 0)
        bits = jump_bits(seeds[:, None], j[:, None], positions[None, :])
        if score:
            bb, ll = masked.nonzero(as_tuple=True)
            r = rows[w, bb, ll]
            have = (r >= 0) & (r < M)
            missing[w].index_fill_(0, bb[~have], True)
            if M:
                s = logits[r.clamp(0, M - 1)].to(torch.float32)
            else:  # nothing to read: every read is missing
                s = torch.zeros((len(r), logits.shape[1]), dtype=torch.float32, device=device)
            scaled = s * inv_t
            bad = _bad_rows(scaled, mask_id) & have
            s[:, mask_id] = float("-inf")
            lam = (rate[j[bb]] * torch.exp(torch.logsumexp(s, 1))).clamp(max=FLT_MAX)
            if rule == TWEEDIE:
                k = (uniform_from_bits(bits[bb, ll]) > 1.0 - lam.clamp(max=1.0)).to(torch.int32)
            else:
                k = _score_counts(bits[bb, ll], lam)
            k = torch.where(j[bb] == N, 1, k)
            k = torch.where(bad | ~have, 0, k).to(torch.int32)
            if with_counts:
                counts[w, bb, ll] = k
            go = _unmasks(k, rule) & ~bad & have
            invalid[w].index_add_(0, bb, bad.to(torch.int32))
            ub, ul, scaled = bb[go], ll[go], scaled[go]
        else:
            k = torch.where(masked, _mean_counts(bits, cdf[j][:, None, :]), 0)
            if with_counts:
                counts[w] = k
            ub, ul = (masked & _unmasks(k, rule)).nonzero(as_tuple=True)
            r = rows[w, ub, ul]
            have = (r >= 0) & (r < M)
            missing[w].index_fill_(0, ub[~have], True)
            ub, ul, r = ub[have], ul[have], r[have]
            scaled = logits[r].to(torch.float32) * inv_t
            bad = _bad_rows(scaled, mask_id)
            invalid[w].index_add_(0, ub, bad.to(torch.int32))
            ub, ul, scaled = ub[~bad], ul[~bad], scaled[~bad]
        if ub.numel():
            js = j[ub]
            argmax = (js == N) & argmax_final if not greedy else torch.ones_like(js, dtype=torch.bool)
            cur[ub, ul] = _draw_tokens(scaled, seeds[ub], js, ul, mask_id, argmax)
        states[w] = cur
    residual = (states[: prev.shape[0]] != prev).sum(-1, dtype=torch.int32)
    return states, counts, residual, torch.where(missing, -1, invalid)
