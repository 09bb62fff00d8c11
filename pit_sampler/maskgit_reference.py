"""Pure-PyTorch reference of the k-per-step (MaskGIT / LLaDA) sweep: the oracle of every backend.

The op
------
``maskgit_sweep(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id,
temperature, order) -> (states, residual, invalid)``

One Picard sweep over a window of ``W`` slices (``W = 1``: one sequential step). ``x0`` int64
``[B, L]`` is the window's first, exact state. Slice ``w`` of sample ``b`` performs global step
``j = steps[w, b]`` (``-1``: pass the state through) with the logits row
``logits[rows[w, b], l]`` of each position (``[R, L, V]``, evaluated by the denoiser at the previous
iterate's state of that slice) and unmasks exactly ``kcount[w, b]`` positions:

1. *Candidates* (independent of the running state, so computed for every slice at once): every
   position ``l`` masked in ``x0`` whose block ``pos_block[b, l]`` equals ``slice_block[w, b]`` draws a
   token and a score from its row (:func:`row_candidates`), one row per (slice, position).
2. *Selection* (the integral form, slice by slice): ``cur = x0``; at slice ``w`` the eligible
   positions are the candidates still masked in ``cur`` (positions unmasked earlier in this sweep
   are not); the ``kcount[w, b]`` eligible positions with the largest *key* take their tokens
   (``cur`` is updated), and ``states[w] = cur``.

Outputs: ``states`` int64 ``[W, B, L]``, ``residual`` int32 ``[W, B]`` = positions where ``states``
differs from ``prev`` (``[W, B, L]``, the previous iterate), ``invalid`` int32 ``[W, B]`` = eligible
positions whose row holds NaN or +inf, or only -inf, on the clean tokens (such a position is never
selected), or ``-1`` for a slice whose row is missing (below); callers raise on any nonzero value.

Index values (every backend, bit for bit; no value reads or writes out of bounds)
-------------------------------------------------------------------------------
The op checks shapes, dtypes, devices and the scalars (``mask_id`` in ``[0, V)``, ``order``,
``temperature``); it never looks at the values of the index tensors (that would cost a device sync),
so each value has a meaning:

* ``steps[w, b] < 0`` (any negative): the slice passes the state through (no candidate, nothing read,
  ``invalid = 0``). ``steps >= 0``: a live slice; ``j`` enters the noise only as a Philox counter word,
  so the Gumbel and random-order streams use ``j mod 2**32`` (its low 32 bits).
* ``rows[w, b]`` outside ``[0, R)`` at a live slice: a *missing row*. Nothing is read, the slice has no
  candidate (nothing is selected: the state passes through) and ``invalid[w, b] = -1``, whatever its
  other values (as the ``sweep`` op's missing rows). At a dead slice ``rows`` is not looked at.
* ``kcount[w, b]`` is clamped to ``[0, number eligible]``: ``<= 0`` selects nothing, more than the
  eligible positions (``> L`` included) selects them all.
* ``slice_block``, ``pos_block``: any int64, only compared for equality.
* ``x0``, ``prev``: any int64 (``>= V`` and negative included). Tokens are only compared (with
  ``mask_id``, with ``prev``), never used as an index; a position of ``x0`` that is not ``mask_id``
  keeps its value in every slice.
* ``seeds``: any int64; the Philox key is its low and high 32-bit words.

Token and score of one row (``y`` = the row in float32, ``y[mask_id] = -inf``)
---------------------------------------------------------------------------
* token: ``argmax_v y_v * inv_t + G(seed_b, j, l, v)`` with the Gumbel stream of
  :mod:`pit_sampler.noise` (the tau-leaping samplers' draw, tail-accurate) and
  ``inv_t = f32(1 / f32(temperature))``; ``temperature = 0``: ``argmax_v y_v`` (greedy). Ties go to
  the lowest ``v``.
* scores use the untempered distribution ``p = softmax(y)`` (as LLaDA's ``low_confidence``), in
  **fixed point**, so that every backend ranks positions identically (only IEEE-exact operations:
  ``+ - * /``, ``floor``, conversions; no ``exp``/``log`` from a math library, no float reduction):

  - ``m = max_v y_v``, ``x_v = (y_v - m) * LOG2E`` (float32; ``x_v <= 0``);
  - ``q(x) = trunc(P(f) * 2**(30 + n))`` (int64) with ``n = floor(x)``, ``f = x - n``, and ``P`` the
    degree-8 Horner polynomial of ``2**f`` (Taylor coefficients ``ln2**k / k!`` in float32, relative
    error below 2e-7); ``q(x) = 0`` for ``x < -30`` (probability ratios below ``2**-30``). So
    ``q_v ~ 2**30 p_v / p_max`` and ``q = 2**30`` exactly for the top token;
  - ``S = sum_v q_v`` (exact integer sum; ``V <= 2**20`` keeps it below ``2**53``);
  - **confidence** ``= f32(q_tok) / f32(S)`` (``p`` of the drawn token);
  - **margin** ``= f32(2**30 - q(x_2)) / f32(S)`` (``p_top1 - p_top2``; ``x_2`` the second largest
    ``x_v``, counting ties, so a tied top gives 0);
  - **entropy**: ``T = sum_v (q_v >> 10) * floor(-x_v * 256)`` (integer; ``~ 2**-2 sum_v q_v (-x_v)``),
    ``H = (f32(T) * 4) / f32(S) + (lg2(f32(S)) - 30)`` clamped at 0 (the row's entropy in bits), where
    ``lg2(y) = e + (2 s t(s**2)) * LOG2E`` from ``y = 2**e * mant`` (the float's bits),
    ``s = (mant - 1) / (mant + 1)`` and ``t`` the atanh series to ``s**12 / 13``; the score is
    ``-H`` (the most certain rows first);
  - **random** (no model dependence): ``r = word 0 of Philox(key = seed_b, counter = (0, l, j, 3))``,
    stream 3 (:data:`STREAM_ORDER`: distinct from the jump 0, Gumbel 1 and seed 2 streams).
* key (int64, unique per slice and sample): ``key = s31 * 2**32 + (2**32 - 1 - l)``, where ``s31`` is
  the float score's bit pattern (non-negative float32 order as their bits), ``0x7FFFFFFF - bits(H)``
  for entropy, and ``r >> 1`` for random. Larger keys are selected first; equal scores go to the
  lowest position. ``-1`` marks a non-candidate, ``-2`` an invalid row.
"""

from __future__ import annotations

import torch

from .noise import MASK32, _key, gumbel_bits, gumbel_from_bits, philox4x32
from .validation import inverse_temperature

ORDERS = ("confidence", "margin", "entropy", "random")
CONFIDENCE, MARGIN, ENTROPY, RANDOM = range(4)
STREAM_ORDER = 3
FIXED_BITS = 30  # q(0) = 2**FIXED_BITS
MAX_VOCAB = 1 << 20  # keeps S and T below 2**53 (exact int64 -> float conversions everywhere)
NOT_CANDIDATE, INVALID_ROW = -1, -2
LOG2E = 1.4426950216293335  # float32(1 / ln 2)
EXP2_COEFFS = (  # float32(ln2**k / k!), k = 0..8
    1.0, 0.6931471824645996, 0.24022650718688965, 0.05550410971045494, 0.009618128649890423,
    0.0013333557872101665, 0.0001540352968731895, 1.5252733646775596e-05, 1.3215486660556053e-06,
)
ATANH_COEFFS = (  # float32(1 / k), k = 13, 11, ..., 3
    0.07692307978868484, 0.09090909361839294, 0.1111111119389534, 0.1428571492433548,
    0.20000000298023224, 0.3333333432674408,
)
_ROW_CHUNK = 1 << 22  # logits elements handled at once


def order_bits(seeds: torch.Tensor, step: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """uint32 (in int64) of the random-order stream: word 0 of counter ``(0, l, j, 3)``."""
    k0, k1 = _key(seeds)
    return philox4x32(0, position, step, STREAM_ORDER, k0, k1)[0]


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """float32 ``2**e`` for int ``e`` in ``[-126, 127]``, built from its bits (exact)."""
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


def fixed_exp2(x: torch.Tensor) -> torch.Tensor:
    """int64 ``q(x) = trunc(P(x - floor x) * 2**(30 + floor x))``, 0 below ``-30`` (module docstring)."""
    ok = x >= -float(FIXED_BITS)
    x = torch.where(ok, x, 0.0)
    n = torch.floor(x)
    f = x - n
    p = torch.full_like(f, EXP2_COEFFS[-1])
    for c in reversed(EXP2_COEFFS[:-1]):
        p = p * f + c
    q = (p * _pow2(n + FIXED_BITS)).to(torch.int64)
    return torch.where(ok, q, 0)


def log2_f32(y: torch.Tensor) -> torch.Tensor:
    """float32 ``lg2(y)`` of positive normal float32 ``y`` by exponent bits and an atanh series."""
    bits = y.view(torch.int32)
    e = ((bits >> 23) - 127).to(torch.float32)
    mant = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)
    s = (mant - 1.0) / (mant + 1.0)
    s2 = s * s
    t = torch.full_like(s, ATANH_COEFFS[0])
    for c in ATANH_COEFFS[1:]:
        t = t * s2 + c
    t = t * s2 + 1.0
    return e + ((s + s) * t) * LOG2E


def _bad_rows(y: torch.Tensor) -> torch.Tensor:
    """Rows (``[n, V]``, mask column already ``-inf``) with NaN or +inf, or nothing above -inf."""
    return torch.isnan(y).any(1) | (y == float("inf")).any(1) | (y == float("-inf")).all(1)


def _draw(y, seeds, steps, positions, temperature):
    """Gumbel-max token of each row (greedy argmax at temperature 0)."""
    if temperature == 0:
        return y.argmax(1)
    vocab = torch.arange(y.shape[1], device=y.device)
    g = gumbel_from_bits(gumbel_bits(seeds[:, None], steps[:, None], positions[:, None], vocab))
    return (y * inverse_temperature(temperature) + g).argmax(1)


def _score_bits(y, tok, seeds, steps, positions, order):
    """The 31-bit score ``s31`` of each row (module docstring)."""
    if order == RANDOM:
        return order_bits(seeds, steps, positions) >> 1
    m = y.max(1, keepdim=True).values
    x = (y - m) * LOG2E
    q = fixed_exp2(x)
    s = q.sum(1).to(torch.float32)
    if order == CONFIDENCE:
        score = q.gather(1, tok[:, None]).squeeze(1).to(torch.float32) / s
    elif order == MARGIN:
        second = fixed_exp2(x.topk(2, dim=1).values[:, 1])
        score = ((1 << FIXED_BITS) - second).to(torch.float32) / s
    else:
        a = torch.floor(-x * 256.0).to(torch.int64)
        t = torch.where(q > 0, (q >> 10) * a, 0).sum(1).to(torch.float32)
        h = ((t * 4.0) / s + (log2_f32(s) - float(FIXED_BITS))).clamp(min=0.0)
        return 0x7FFFFFFF - h.view(torch.int32).to(torch.int64)
    return score.view(torch.int32).to(torch.int64)


def row_candidates(rows, seeds, steps, positions, mask_id, temperature, order):
    """``(token, key)`` int64 ``[n]`` of float32 rows ``[n, V]`` drawn at ``(seed, step, position)``;
    invalid rows get ``token = mask_id`` and ``key = -2``."""
    y = rows.clone()
    y[:, mask_id] = float("-inf")
    bad = _bad_rows(y)
    y = torch.where(bad[:, None], 0.0, y)  # any finite row: the results are discarded
    y[:, mask_id] = float("-inf")
    tok = _draw(y, seeds, steps, positions, temperature)
    key = (_score_bits(y, tok, seeds, steps, positions, order) << 32) | (MASK32 - positions)
    return torch.where(bad, mask_id, tok), torch.where(bad, INVALID_ROW, key)


def missing_rows(rows, steps, R):
    """bool ``[W, B]``: live slices whose row lies outside ``[0, R)`` (nothing read, ``invalid = -1``)."""
    return (steps >= 0) & ((rows < 0) | (rows >= R))


def candidates(logits, rows, steps, x0, seeds, slice_block, pos_block, mask_id, temperature, order):
    """``(tokens, keys)`` int64 ``[W, B, L]`` of every (slice, position) candidate (keys ``-1`` elsewhere);
    a slice with a missing row has none."""
    W, B = steps.shape
    L = x0.shape[1]
    live = (steps >= 0) & ~missing_rows(rows, steps, logits.shape[0])
    want = live[:, :, None] & (x0 == mask_id)[None] & (pos_block[None] == slice_block[:, :, None])
    tokens = torch.full((W, B, L), mask_id, dtype=torch.int64, device=x0.device)
    keys = torch.full((W, B, L), NOT_CANDIDATE, dtype=torch.int64, device=x0.device)
    ww, bb, ll = want.nonzero(as_tuple=True)
    chunk = max(1, _ROW_CHUNK // logits.shape[2])
    for i in range(0, len(ww), chunk):
        w, b, l = ww[i : i + chunk], bb[i : i + chunk], ll[i : i + chunk]
        tok, key = row_candidates(  # the step is a Philox counter word: its low 32 bits
            logits[rows[w, b], l].to(torch.float32), seeds[b], steps[w, b] & MASK32, l, mask_id, temperature, order
        )
        tokens[w, b, l], keys[w, b, l] = tok, key
    return tokens, keys


def select(tokens, keys, x0, kcount, mask_id, missing):
    """The slice-by-slice selection: ``(states [W, B, L], invalid [W, B])`` (module docstring); the
    ``kcount[w, b]`` largest eligible keys are taken (``kcount`` clamped to ``[0, eligible]``)."""
    W, B, L = keys.shape
    cur = x0.clone()
    states = torch.empty_like(keys)
    invalid = torch.zeros((W, B), dtype=torch.int32, device=x0.device)
    for w in range(W):
        masked = cur == mask_id
        key = torch.where(masked & (keys[w] >= 0), keys[w], NOT_CANDIDATE)
        eligible = (key >= 0).sum(1)
        k = torch.minimum(kcount[w].clamp(min=0), eligible)
        # the k-th largest key (k >= 1; a -1 column past the sorted keys serves k = 0 and L = 0)
        ranked = torch.cat([key.sort(1, descending=True).values, key.new_full((B, 1), NOT_CANDIDATE)], 1)
        kth = ranked.gather(1, (k - 1).clamp(min=0)[:, None])
        chosen = (key >= 0) & (key >= kth) & (k > 0)[:, None]
        cur = torch.where(chosen, tokens[w], cur)
        count = (masked & (keys[w] == INVALID_ROW)).sum(1, dtype=torch.int32)
        invalid[w] = torch.where(missing[w], -1, count)
        states[w] = cur
    return states, invalid


def maskgit_sweep(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order):
    tokens, keys = candidates(logits, rows, steps, x0, seeds, slice_block, pos_block, mask_id, temperature, order)
    states, invalid = select(tokens, keys, x0, kcount, mask_id, missing_rows(rows, steps, logits.shape[0]))
    residual = (states != prev).sum(-1, dtype=torch.int32)
    return states, residual, invalid
