"""The fused Picard sweep: every slice of a window in one launch (``W = 1`` is one tau-leaping step).

Semantics: :func:`pit_sampler.reference.sweep` (the oracle); noise: :mod:`pit_sampler.noise`.

Algorithm
---------
Per position, the slices form an absorbing scan: a masked position stays masked until the slice
``w`` at which its jump count passes the unmask rule, takes a token there, and keeps it for the rest
of the window. The token is ``argmax_{v != mask} logits[rows[w, b, l], v] / T + G(seed_b, j, l, v)``
(``logits [M, V]``: packed rows, read through their strides),
found in one pass over the row by Gumbel-max over vocabulary tiles with a running best, so neither a
softmax nor a noise tensor is ever in memory.

*Mean parametrization* (:func:`_mean_kernel`). The count ``K = #{k : x >= cdf[j, k]}`` depends on the
noise alone, so a program computes, for a tile of ``BLOCK_L`` positions and all ``W`` slices at
once (a ``[BLOCK_L, W_PAD]`` block of jump words), every position's first unmasking slice: the scan
needs no loop over slices, and a row of logits is read only at that slice. The vocabulary may be
split over ``v_split`` programs per position tile (small batches keep the GPU busy): each draws its
chunk of the row and merges ``(score, token)`` into a per-position int64 key by ``atomic_max``
(``key = monotone(score) << 31 | (2**31 - 1 - v)``: the larger score wins, ties go to the lowest
``v``; ``0`` means the chunk has no candidate (nothing above -inf: all -inf, or only the mask),
``2**63 - 1`` a NaN/+inf scaled logit, which wins the merge). The last program of the tile to finish
(an atomic counter) reads the keys, writes ``states``/``counts`` for all slices and adds the tile's
``residual``. The row is invalid iff the merged key is ``0`` (nothing above -inf in the whole row)
or ``2**63 - 1``; it keeps the position masked (counted in ``invalid``; a missing row, whose key also
stays 0, is told apart by the map and flagged), and that program then redraws at the position's next
unmasking slice, full row, itself.

*Slices* (:func:`_slices`): a slice is live when ``0 <= steps <= N``; a slice with ``steps > N`` is
*bad*: it passes through like ``steps = -1`` (the host sets its ``invalid = -1``). Steps are clamped
before any index, so no ``steps`` value reads or writes out of bounds, without a host sync.

*Rows* (:func:`_row_of`): a read looks its row up in ``rows [W, B, L]`` and tests ``0 <= r < M`` before
forming an address; outside, it is a *missing row*: nothing is read, the position stays masked (score:
count 0) and the slice is flagged. Flags go to a separate ``missing [W, B]`` buffer (plain stores of 1),
never into ``invalid``, which programs of the same sample increment with atomics; the host writes
``invalid = -1`` where a flag is set after the kernel (see :func:`sweep`).

*Options.* ``WITH_COUNTS = False`` skips every ``counts`` store (the host passes an empty tensor);
``GREEDY`` (``temperature = 0``) turns the noise off at every step and leaves the logits unscaled.

*Score parametrization* (:func:`_score_kernel`). ``K`` needs ``S = sum_v exp(s_v)`` of the row, so the
scan runs slice by slice: every masked position's row is read once per slice and the same pass
computes the log-sum-exp and the Gumbel-max; ``K`` then comes from float32 Poisson CDFs
(:func:`score_counts`, with ``lambda`` clamped to ``FLT_MAX`` so that an overflow saturates at 64)
and decides whether the drawn token is taken.

Row pass (:func:`_row_pass`)
----------------------------
A tile holds ``4 GROUPS`` tokens as four columns ``x_i`` of ``GROUPS`` values (token ``4 g + i``):
one Philox call per group gives the Gumbel words of its four tokens, word ``i`` for column ``i``, so
the noise needs no shuffling and every per-group reduction stays inside a thread. When every row
starts on a multiple of 4 elements (the host proves it and passes ``ALIGNED``) a tile is one vector
load (8 bytes of bf16/fp16, 16 of fp32 per group) split into columns; otherwise four strided loads.
Two tiles are loaded ahead of the one being folded. Pruning keeps the float32 transform (two ``log``,
one division) off most tiles without changing any result: since ``E = -log U >= 1 - U``,
``G <= -log((~x + 0.5) 2**-32)``, so a token can only beat the running best ``M`` if
``~x <= 2**32 exp(-(M - margin - y_g))`` with ``y_g`` its group's largest scaled logit; a tile with
no such token is skipped after its Philox words and one integer compare per group (``margin`` covers
every float32 rounding, so skipped tokens score strictly below ``M``). NaN/+inf and all--inf rows are
detected with a NaN-propagating running max of the raw logits per group, scaled at the end (``x -> x
inv_t`` is monotone): validity is judged on the scaled values, so a finite logit that overflows to +inf
makes the row invalid and one that overflows to -inf only bans its token. Tiles are visited in increasing ``v`` and replace the
best only when strictly larger, so ties go to the lowest token id, as ``torch.argmax`` does. Logits
are scaled by ``float32(1 / T)`` (what PyTorch's CUDA division by a scalar computes; the same as
dividing when ``1 / T`` is a power of two).

Memory: logits are read through their strides (int64 offsets; a row must be contiguous in ``v`` for
vector loads); the small index tensors are made contiguous by the host. ``states``/``counts`` are
written once per (slice, position), ``residual`` (first ``P`` slices: ``prev`` is ``[P, B, L]``) and
``invalid`` are accumulated with atomics.
"""

import itertools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .jumps import mean_counts, score_counts, unmasks
from .philox import gumbel_from_bits, gumbel_words, jump_bits, seed_key, uniform_from_bits

NEG_INF = tl.constexpr(float("-inf"))
FLT_MAX = tl.constexpr(3.4028234663852886e38)
C_MAX = tl.constexpr(4294967040.0)  # the largest float32 below 2**32
LOG2E = tl.constexpr(1.4426950408889634)
BIG = tl.constexpr(2**31 - 1)
KEY_BAD = tl.constexpr(2**63 - 1)
TWEEDIE = tl.constexpr(2)


@triton.jit
def _tile_best(s0, s1, s2, s3, v0, best, best_idx):
    """Merge a tile's scores (columns ``s_i``: tokens ``v0 + i``) into the running ``(best, best_idx)``;
    ties go to the lowest token id."""
    m = tl.maximum(tl.maximum(s0, s1), tl.maximum(s2, s3))
    lane = tl.where(s0 == m, 0, tl.where(s1 == m, 1, tl.where(s2 == m, 2, 3)))
    top = tl.max(m)
    idx = tl.min(tl.where(m == top, v0 + lane, BIG))
    better = top > best
    return tl.where(better, top, best), tl.where(better, idx, best_idx)


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _consume(x0, x1, x2, x3, grp, best, best_idx, top, s_g, mask_id, inv_t, k0, k1, step, position, noise,
             EXCLUDE: tl.constexpr, LSE: tl.constexpr, SCALE: tl.constexpr):
    """Fold one tile (columns ``x_i``: raw logits of tokens ``4 grp + i``) into the row's running state.

    ``top``: per-group NaN-propagating running max of the raw logits (validity, and the log-sum-exp
    shift); ``s_g``: per-group sum of ``exp(x - top)`` (``LSE``); ``best``/``best_idx``: Gumbel-max
    (plain argmax when ``noise`` is false)."""
    v0 = grp * 4
    x0, x1, x2, x3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
    if EXCLUDE:  # this tile holds the mask token
        x0 = tl.where(v0 == mask_id, NEG_INF, x0)
        x1 = tl.where(v0 + 1 == mask_id, NEG_INF, x1)
        x2 = tl.where(v0 + 2 == mask_id, NEG_INF, x2)
        x3 = tl.where(v0 + 3 == mask_id, NEG_INF, x3)
    tile_top = _max_nan(_max_nan(x0, x1), _max_nan(x2, x3))
    new_top = _max_nan(top, tile_top)
    if LSE:
        shift = tl.where(new_top == NEG_INF, 0.0, new_top)
        tile_sum = tl.exp(x0 - shift) + tl.exp(x1 - shift) + tl.exp(x2 - shift) + tl.exp(x3 - shift)
        s_g = s_g * tl.exp(top - shift) + tile_sum
    top = new_top
    if SCALE:
        x0, x1, x2, x3 = x0 * inv_t, x1 * inv_t, x2 * inv_t, x3 * inv_t
        tile_top = tile_top * inv_t
    if noise:
        w0, w1, w2, w3 = gumbel_words(k0, k1, step, position, grp)
        # a token can beat `best` only if ~x <= 2**32 exp(-(best - margin - its group's top score))
        margin = 1e-3 + 1e-5 * tl.abs(best)
        c = tl.exp2(32.0 - ((best - margin) - tile_top) * LOG2E)
        floor_x = tl.where(c < C_MAX, 0xFFFFFFFF - tl.where(c < C_MAX, c, 0.0).to(tl.uint32), 0)
        if tl.max((tl.maximum(tl.maximum(w0, w1), tl.maximum(w2, w3)) >= floor_x).to(tl.int32)) > 0:
            best, best_idx = _tile_best(x0 + gumbel_from_bits(w0), x1 + gumbel_from_bits(w1),
                                        x2 + gumbel_from_bits(w2), x3 + gumbel_from_bits(w3), v0, best, best_idx)
    else:
        best, best_idx = _tile_best(x0, x1, x2, x3, v0, best, best_idx)
    return best, best_idx, top, s_g


@triton.jit
def _load_tile(row_ptr, stride_v, t, tile_hi, n_vtiles, V, ALIGNED: tl.constexpr, GROUPS: tl.constexpr):
    """Columns ``x_i`` (logits of tokens ``4 g + i``) of tile ``t``: one ``[GROUPS, 4]`` vector load
    split into columns when rows are 4-aligned, else four strided loads; the row's last tile is
    masked, and nothing is read at or past ``tile_hi``."""
    v = (t * GROUPS + tl.arange(0, GROUPS)) * 4
    ptr = row_ptr + v.to(tl.int64) * stride_v
    if t >= tile_hi:
        x0 = tl.full((GROUPS,), NEG_INF, row_ptr.dtype.element_ty)
        x1, x2, x3 = x0, x0, x0
    elif t < n_vtiles - 1:
        if ALIGNED:
            x = tl.load(row_ptr + (v[:, None] + tl.arange(0, 4)[None, :]))
            even, odd = tl.split(tl.reshape(x, (GROUPS, 2, 2)))  # columns (0, 2) and (1, 3)
            x0, x2 = tl.split(even)
            x1, x3 = tl.split(odd)
        else:
            x0, x1 = tl.load(ptr), tl.load(ptr + stride_v)
            x2, x3 = tl.load(ptr + 2 * stride_v), tl.load(ptr + 3 * stride_v)
    else:
        x0 = tl.load(ptr, mask=v < V, other=NEG_INF)
        x1 = tl.load(ptr + stride_v, mask=v + 1 < V, other=NEG_INF)
        x2 = tl.load(ptr + 2 * stride_v, mask=v + 2 < V, other=NEG_INF)
        x3 = tl.load(ptr + 3 * stride_v, mask=v + 3 < V, other=NEG_INF)
    return x0, x1, x2, x3


@triton.jit
def _row_pass(logits_ptr, row_off, stride_v, tile_lo, tile_hi, n_vtiles, V, mask_id, inv_t,
              k0, k1, step, position, noise,
              LSE: tl.constexpr, SCALE: tl.constexpr, ALIGNED: tl.constexpr, GROUPS: tl.constexpr):
    """Gumbel-max (and log-sum-exp if ``LSE``) over the vocabulary tiles ``[tile_lo, tile_hi)`` of one
    row. Returns ``(best, token, bad, nonfinite, lse)`` judged on the scaled values ``s_v = x_v inv_t``
    of the non-mask tokens read: ``nonfinite`` if some ``s_v`` is NaN/+inf, ``bad`` if so or if none is
    above -inf (``best`` and ``token`` are then meaningless, ``token`` still a valid id). Scaling by
    ``inv_t > 0`` is monotone, so the scaled group maxima are ``top * inv_t`` (NaN stays NaN)."""
    if ALIGNED:  # the row starts on a multiple of 4 elements: written so that the compiler can tell
        row_off = (row_off // 4) * 4
    row_ptr = logits_ptr + row_off
    best = tl.full((), NEG_INF, tl.float32)
    best_idx = tl.where(mask_id == 0, 1, 0).to(tl.int32)  # in range and never the mask, whatever happens
    top = tl.full((GROUPS,), NEG_INF, tl.float32)
    s_g = tl.zeros((GROUPS,), tl.float32)
    # two tiles in flight ahead of the one being folded
    a0, a1, a2, a3 = _load_tile(row_ptr, stride_v, tile_lo, tile_hi, n_vtiles, V, ALIGNED, GROUPS)
    b0, b1, b2, b3 = _load_tile(row_ptr, stride_v, tile_lo + 1, tile_hi, n_vtiles, V, ALIGNED, GROUPS)
    for t in range(tile_lo, tile_hi):
        x0, x1, x2, x3 = a0, a1, a2, a3
        a0, a1, a2, a3 = b0, b1, b2, b3
        b0, b1, b2, b3 = _load_tile(row_ptr, stride_v, t + 2, tile_hi, n_vtiles, V, ALIGNED, GROUPS)
        grp = t * GROUPS + tl.arange(0, GROUPS)
        v_first = t * (4 * GROUPS)
        if (mask_id >= v_first) & (mask_id < v_first + 4 * GROUPS):  # the mask token's exclusion, compiled apart
            best, best_idx, top, s_g = _consume(x0, x1, x2, x3, grp, best, best_idx, top, s_g, mask_id, inv_t,
                                                k0, k1, step, position, noise, True, LSE, SCALE)
        else:
            best, best_idx, top, s_g = _consume(x0, x1, x2, x3, grp, best, best_idx, top, s_g, mask_id, inv_t,
                                                k0, k1, step, position, noise, False, LSE, SCALE)
    top_s = top * inv_t if SCALE else top
    nonfinite = tl.max((~(top_s <= FLT_MAX)).to(tl.int32)) > 0
    bad = nonfinite | (tl.max(top_s) == NEG_INF)
    lse = best
    if LSE:
        m = tl.max(top)
        shift = tl.where(m == NEG_INF, 0.0, m)
        lse = m + tl.log(tl.sum(s_g * tl.exp(top - shift)))
    return best, best_idx, bad, nonfinite, lse


@triton.jit
def _noise(step, N, ARGMAX_FINAL: tl.constexpr, GREEDY: tl.constexpr):
    """Whether a draw at ``step`` adds Gumbel noise: never when greedy, all but the final fill under
    ``final="argmax"``."""
    if GREEDY:
        return step < 0
    elif ARGMAX_FINAL:
        return step != N
    else:
        return step >= 0


@triton.jit
def _slices(steps_ptr, ws, b, B, W, N):
    """Steps of the slices ``ws`` of sample ``b`` and whether each is ``live`` (a step: ``0 <= j <= N``;
    ``j > N`` is a bad slice, which passes through like ``j < 0`` and is flagged by the host). Steps of
    other slices are clamped to 0, so nothing indexes out of bounds."""
    step = tl.load(steps_ptr + ws * B + b, mask=ws < W, other=-1)
    live = (step >= 0) & (step <= N)
    return tl.where(live, step, 0), live


@triton.jit
def _row_of(rows_ptr, w, b, l, B, L, M):
    """The packed row that position ``l`` of slice ``w`` of sample ``b`` reads, and whether it exists
    (``0 <= r < M``; else the read is a *missing row*, and no address is formed from ``r``)."""
    r = tl.load(rows_ptr + (w * B + b).to(tl.int64) * L + l)
    return r, (r >= 0) & (r < M)


@triton.jit
def _score_key(best, token, nonfinite):
    """The int64 merge key of a chunk's result (see the module docstring): ``KEY_BAD`` for a NaN/+inf
    score, ``0`` for a chunk with nothing above -inf (all -inf, or only the mask: no candidate; the row
    is invalid only if every chunk says so)."""
    bits = (best + 0.0).to(tl.uint32, bitcast=True)  # + 0.0: -0.0 -> +0.0, as float compares them
    mono = tl.where(bits >= 0x80000000, ~bits, bits | 0x80000000).to(tl.int64)
    key = (mono << 31) | (token ^ BIG).to(tl.int64)  # 2**31 - 1 - token
    return tl.where(nonfinite, KEY_BAD, tl.where(best == NEG_INF, 0, key))


@triton.jit
def _mean_kernel(
    logits_ptr, rows_ptr, steps_ptr, x0_ptr, prev_ptr, seeds_ptr, cdf_ptr,
    states_ptr, counts_ptr, residual_ptr, invalid_ptr, missing_ptr, keys_ptr, done_ptr,
    logits_offset, stride_m, stride_v,
    B, L, V, W, P, N, KC, M, mask_id, inv_t,
    n_ltiles, v_split, chunk_tiles, n_vtiles,
    RULE: tl.constexpr, ARGMAX_FINAL: tl.constexpr, SCALE: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_L: tl.constexpr, W_PAD: tl.constexpr, GROUPS: tl.constexpr,
    WITH_COUNTS: tl.constexpr, GREEDY: tl.constexpr,
):
    """Mean parametrization, one program: ``BLOCK_L`` positions of sample ``b``, vocabulary chunk ``s``.

    The scan gives each position's first unmasking slice; the program draws its chunk of that row and
    merges the result into the position's key; the tile's last program decodes the keys and writes
    every slice (:func:`_mean_finish`)."""
    pid = tl.program_id(0)
    s = pid % v_split
    tile = pid // v_split
    b = tile // n_ltiles
    offs = (tile % n_ltiles) * BLOCK_L + tl.arange(0, BLOCK_L)
    in_l = offs < L
    k0, k1 = seed_key(tl.load(seeds_ptr + b))
    x0 = tl.load(x0_ptr + b.to(tl.int64) * L + offs, mask=in_l, other=0)
    first = _mean_scan(steps_ptr, cdf_ptr, b, offs, in_l, x0, k0, k1, B, W, N, KC, mask_id, RULE, W_PAD)[2]
    # this program's share of the draws: vocabulary chunk s of every unmasking position (a missing row is
    # not read: its key stays 0, and _mean_finish tells it from an invalid row)
    tile_lo = s * chunk_tiles
    tile_hi = tl.minimum(tile_lo + chunk_tiles, n_vtiles)
    pending = first < W_PAD
    while tl.max(pending.to(tl.int32)) > 0:
        l = tl.min(tl.where(pending, offs, BIG))
        pending = pending & (offs != l)
        w = tl.min(tl.where(offs == l, first, W_PAD))
        r, have = _row_of(rows_ptr, w, b, l, B, L, M)
        if have:
            j = tl.load(steps_ptr + w * B + b)
            noise = _noise(j, N, ARGMAX_FINAL, GREEDY)
            best, token, bad, nonfinite, lse = _row_pass(logits_ptr, logits_offset + r * stride_m, stride_v,
                                                         tile_lo, tile_hi, n_vtiles, V, mask_id, inv_t,
                                                         k0, k1, j, l, noise, False, SCALE, ALIGNED, GROUPS)
            tl.atomic_max(keys_ptr + b.to(tl.int64) * L + l, _score_key(best, token, nonfinite))
    tl.debug_barrier()
    if tl.atomic_add(done_ptr + tile, 1) == v_split - 1:  # the tile's last program: finish it
        _mean_finish(logits_ptr, rows_ptr, steps_ptr, prev_ptr, cdf_ptr, states_ptr, counts_ptr, residual_ptr,
                     invalid_ptr, missing_ptr, keys_ptr, logits_offset, stride_m, stride_v, b, offs, in_l, x0,
                     k0, k1, B, L, V, W, P, N, KC, M, mask_id, inv_t, n_vtiles,
                     RULE, ARGMAX_FINAL, SCALE, ALIGNED, W_PAD, GROUPS, WITH_COUNTS, GREEDY)


@triton.jit
def _mean_scan(steps_ptr, cdf_ptr, b, offs, in_l, x0, k0, k1, B, W, N, KC, mask_id,
               RULE: tl.constexpr, W_PAD: tl.constexpr):
    """Jump counts ``k`` and unmask decisions ``go`` of every (position, slice) of the tile, as
    ``[BLOCK_L, W_PAD]`` blocks (0 and false where the position is not masked in ``x0`` or the slice
    is not live: passed through or bad), and each position's first unmasking slice (``W_PAD`` if none)."""
    ws = tl.arange(0, W_PAD)
    step, live = _slices(steps_ptr, ws, b, B, W, N)
    masked = (x0 == mask_id) & in_l
    bits = jump_bits(k0, k1, step[None, :], offs[:, None])
    k = tl.where(masked[:, None] & live[None, :], mean_counts(bits, cdf_ptr, step[None, :], live[None, :], KC), 0)
    go = unmasks(k, RULE) & masked[:, None] & live[None, :]
    first = tl.min(tl.where(go, ws[None, :], W_PAD), axis=1)
    return k, go, first


@triton.jit
def _mean_finish(logits_ptr, rows_ptr, steps_ptr, prev_ptr, cdf_ptr, states_ptr, counts_ptr, residual_ptr,
                 invalid_ptr, missing_ptr, keys_ptr, logits_offset, stride_m, stride_v, b, offs, in_l, x0, k0, k1,
                 B, L, V, W, P, N, KC, M, mask_id, inv_t, n_vtiles,
                 RULE: tl.constexpr, ARGMAX_FINAL: tl.constexpr, SCALE: tl.constexpr, ALIGNED: tl.constexpr,
                 W_PAD: tl.constexpr, GROUPS: tl.constexpr, WITH_COUNTS: tl.constexpr, GREEDY: tl.constexpr):
    """Decode the merged keys, redraw after invalid or missing rows, write every slice of the tile (the
    scan is recomputed here rather than kept in registers through the draws)."""
    k, go, first = _mean_scan(steps_ptr, cdf_ptr, b, offs, in_l, x0, k0, k1, B, W, N, KC, mask_id, RULE, W_PAD)
    ws = tl.arange(0, W_PAD)
    drew = first < W_PAD
    key = tl.where(drew, tl.atomic_max(keys_ptr + b.to(tl.int64) * L + offs, 0, mask=drew), 0)
    ok = (key > 0) & (key < KEY_BAD)
    token = (key & BIG) ^ BIG
    final = tl.where(ok, first, W_PAD)  # slice at which the position takes `token`
    retry = drew & ~ok
    at = first
    while tl.max(retry.to(tl.int32)) > 0:
        # position l's read at slice w gave nothing: an invalid row (counted) or a missing one (flagged)
        l = tl.min(tl.where(retry, offs, BIG))
        w = tl.min(tl.where(offs == l, at, W_PAD))
        if _row_of(rows_ptr, w, b, l, B, L, M)[1]:
            tl.atomic_add(invalid_ptr + w * B + b, 1)
        else:
            tl.store(missing_ptr + w * B + b, 1)
        nxt = tl.min(tl.where(go & (offs[:, None] == l) & (ws[None, :] > w), ws[None, :], W_PAD))
        done = nxt == W_PAD
        if nxt < W_PAD:
            r, have = _row_of(rows_ptr, nxt, b, l, B, L, M)
            if have:
                j = tl.load(steps_ptr + nxt * B + b)
                noise = _noise(j, N, ARGMAX_FINAL, GREEDY)
                top, tok, bad, _, lse = _row_pass(logits_ptr, logits_offset + r * stride_m, stride_v, 0, n_vtiles,
                                                  n_vtiles, V, mask_id, inv_t, k0, k1, j, l, noise, False, SCALE,
                                                  ALIGNED, GROUPS)
                here = (offs == l) & ~bad
                token = tl.where(here, tok.to(tl.int64), token)
                final = tl.where(here, nxt, final)
                done = ~bad
        at = tl.where(offs == l, nxt, at)
        retry = retry & ~((offs == l) & done)
    after = ws[None, :] >= final[:, None]
    states = tl.where(after, token[:, None], x0[:, None])
    counts = tl.where(ws[None, :] > final[:, None], 0, k)
    idx = (ws[None, :].to(tl.int64) * B + b) * L + offs[:, None]
    keep = in_l[:, None] & (ws[None, :] < W)
    tl.store(states_ptr + idx, states, mask=keep)
    if WITH_COUNTS:
        tl.store(counts_ptr + idx, counts, mask=keep)
    has_prev = keep & (ws[None, :] < P)  # prev covers the first P slices only
    prev = tl.load(prev_ptr + idx, mask=has_prev, other=0)
    changed = tl.sum(((states != prev) & has_prev).to(tl.int32), axis=0)
    tl.atomic_add(residual_ptr + ws * B + b, changed, mask=changed > 0)


@triton.jit
def _score_kernel(
    logits_ptr, rows_ptr, steps_ptr, x0_ptr, prev_ptr, seeds_ptr, rate_ptr,
    states_ptr, counts_ptr, residual_ptr, invalid_ptr, missing_ptr,
    logits_offset, stride_m, stride_v,
    B, L, V, W, P, N, M, mask_id, inv_t, n_ltiles, n_vtiles,
    RULE: tl.constexpr, ARGMAX_FINAL: tl.constexpr, SCALE: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_L: tl.constexpr, GROUPS: tl.constexpr, WITH_COUNTS: tl.constexpr, GREEDY: tl.constexpr,
):
    """Score parametrization, one program: ``BLOCK_L`` positions of sample ``b``, slice by slice, one
    pass per masked row (log-sum-exp + Gumbel-max); ``lambda = min(rate[j] exp(lse), FLT_MAX)`` (an
    overflow saturates the count instead of making the Poisson CDF NaN; NaN stays NaN, as
    ``torch.clamp``). A missing row is not read: count 0, the position stays masked."""
    tile = tl.program_id(0)
    b = tile // n_ltiles
    offs = (tile % n_ltiles) * BLOCK_L + tl.arange(0, BLOCK_L)
    in_l = offs < L
    k0, k1 = seed_key(tl.load(seeds_ptr + b))
    cur = tl.load(x0_ptr + b.to(tl.int64) * L + offs, mask=in_l, other=0)
    for w in range(W):
        jc, live = _slices(steps_ptr, w, b, B, W, N)
        pending = (cur == mask_id) & in_l & live
        u_all = uniform_from_bits(jump_bits(k0, k1, jc, offs))
        count = tl.zeros(offs.shape, tl.int32)
        n_bad = tl.full((), 0, tl.int32)
        rate = tl.load(rate_ptr + jc)
        noise = _noise(jc, N, ARGMAX_FINAL, GREEDY)
        while tl.max(pending.to(tl.int32)) > 0:
            l = tl.min(tl.where(pending, offs, BIG))
            here = offs == l
            pending = pending & ~here
            r, have = _row_of(rows_ptr, w, b, l, B, L, M)
            if have:
                top, tok, bad, _, lse = _row_pass(logits_ptr, logits_offset + r * stride_m, stride_v, 0, n_vtiles,
                                                  n_vtiles, V, mask_id, inv_t, k0, k1, jc, l, noise, True, SCALE,
                                                  ALIGNED, GROUPS)
                lam = rate * tl.exp(lse)
                lam = tl.where(lam > FLT_MAX, FLT_MAX, lam)
                u = tl.sum(tl.where(here, u_all, 0.0))
                if RULE == TWEEDIE:
                    kl = (u > 1.0 - tl.where(lam > 1.0, 1.0, lam)).to(tl.int32)  # NaN stays NaN, as torch.clamp
                else:
                    kl = score_counts(u, lam)
                kl = tl.where(jc == N, 1, kl)
                kl = tl.where(bad, 0, kl)
                count = tl.where(here, kl, count)
                cur = tl.where(here & unmasks(kl, RULE) & ~bad, tok.to(tl.int64), cur)
                n_bad += bad.to(tl.int32)
            else:
                tl.store(missing_ptr + w * B + b, 1)
        idx = (w * B + b).to(tl.int64) * L + offs
        tl.store(states_ptr + idx, cur, mask=in_l)
        if WITH_COUNTS:
            tl.store(counts_ptr + idx, count, mask=in_l)
        if w < P:  # prev covers the first P slices only
            prev = tl.load(prev_ptr + idx, mask=in_l, other=0)
            changed = tl.sum(((cur != prev) & in_l).to(tl.int32))
            tl.atomic_add(residual_ptr + w * B + b, changed, mask=changed > 0)
        tl.atomic_add(invalid_ptr + w * B + b, n_bad, mask=n_bad > 0)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepConfig:
    """Launch parameters of :func:`sweep`.

    ``block_v``: tokens per vocabulary tile (a power of two >= 4); ``num_warps``; ``target_programs``:
    the grid size aimed at (mean parametrization: ``v_split`` programs share each position tile until
    about this many run; score parametrization, one program per position: when one sample's ``L``
    positions are fewer than half as many and a row spans several tiles, programs get 4 times the warps
    and the tile, whatever the batch: see :func:`launch_params`); ``block_l`` and ``v_split`` override
    the automatic choices (tests use them to exercise every code path on small inputs)."""

    block_v: int = 256
    num_warps: int = 1
    target_programs: int = 4224
    block_l: int | None = None
    v_split: int | None = None


def gpu_config(multiprocessors: int) -> SweepConfig:
    """GPU: one-warp programs over 256-token tiles (per-tile reductions stay within a warp, and small
    tiles let pruning skip more of the Gumbel transform), about two waves of them (32 per
    multiprocessor: registers allow 16 resident)."""
    return SweepConfig(block_v=256, num_warps=1, target_programs=32 * multiprocessors)


def default_config(device: torch.device) -> SweepConfig:
    """:func:`gpu_config` for the device's multiprocessors; CPU interpreter: small tiles."""
    if device.type == "cuda":
        return gpu_config(torch.cuda.get_device_properties(device).multi_processor_count)
    return SweepConfig(block_v=64, num_warps=1, target_programs=4)


MAX_W_PAD = 128  # the largest window the samplers launch: 2 * 64 slices (window plus extension guesses)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


MAXNREG = 255  # ptxas otherwise caps some specializations at 128 registers and spills (tests/test_triton_compile.py)


@dataclass(frozen=True)
class Launch:
    """One kernel specialization: the kernel, its constexpr arguments and its compile options
    (``num_warps``; ``maxnreg = MAXNREG`` and no FP contraction for every launch)."""

    kernel: object
    constexprs: dict
    num_warps: int

    def options(self) -> dict:
        return dict(num_warps=self.num_warps, maxnreg=MAXNREG, enable_fp_fusion=False)

    def key(self) -> tuple:
        return (self.kernel.__name__, tuple(sorted(self.constexprs.items())), self.num_warps)


def launch_params(cfg: SweepConfig, *, W: int, L: int, V: int, score: bool, rule: int, greedy: bool, scale: bool,
                  argmax_final: bool, with_counts: bool, aligned: bool) -> Launch:
    """The kernel and specialization :func:`sweep` launches for these arguments (``L`` positions per
    sample, ``V`` tokens per row).

    The single source of the host's choices: :func:`kernel_configurations` enumerates its outputs for the
    compile checks (``tests/test_triton_compile.py``). ``GREEDY`` draws no noise at all, so it implies
    ``SCALE = False`` and ``ARGMAX_FINAL = False`` (one specialization, not two).

    *Never a function of the batch size* ``B``: a sample must get the same bits in a batch of any size,
    since PIT drops converged samples and sequential sampling does not ("PIT with ``tol = 0`` equals
    sequential"). The score kernel sums a row's ``exp`` per group of its tile layout, then across the
    groups (:func:`_row_pass`), so the rounding of ``lambda`` follows ``GROUPS`` and, on a GPU, the
    reduction tree of ``num_warps``. Its widening (4 times the warps and the tile: fewer, wider programs
    fill the GPU) is therefore decided from ``L`` and ``V`` alone: when one sample's positions are fewer
    than half ``target_programs`` (the ``B = 1`` case: PIT's latency-bound use) and a row spans more than
    one narrow tile (else a wider tile only adds idle lanes). The cost: a large batch of such ``L`` keeps
    the wide programs, which prune less (docs/triton.md, "Launch shape"). The alternative, a summation
    order independent of the launch, would make a wide program fold its tile in the narrow layout's
    order and tree, serializing what widening parallelizes. The mean kernel's results do not depend on
    its launch: the vocabulary split (:func:`vocab_split`, from ``B``) merges by an exact max, and
    ``BLOCK_L`` (from ``W``) only tiles the integer scan."""
    num_warps, block_v = cfg.num_warps, cfg.block_v
    common = dict(RULE=rule, ARGMAX_FINAL=bool(argmax_final) and not greedy, SCALE=bool(scale) and not greedy,
                  ALIGNED=bool(aligned), WITH_COUNTS=bool(with_counts), GREEDY=bool(greedy))
    if score:
        if 2 * L < cfg.target_programs and V > block_v:  # one sample cannot fill the GPU: widen the programs
            num_warps, block_v = 4 * num_warps, 4 * block_v
        return Launch(_score_kernel, dict(common, BLOCK_L=cfg.block_l or 1, GROUPS=block_v // 4), num_warps)
    w_pad = max(2, _pow2_at_least(W))  # W_PAD = 1 compiles to spilling code
    block_l = cfg.block_l or max(1, min(16, 256 * cfg.num_warps // w_pad))  # scan block: 8 per thread
    return Launch(_mean_kernel, dict(common, BLOCK_L=block_l, W_PAD=w_pad, GROUPS=block_v // 4), num_warps)


def vocab_split(cfg: SweepConfig, n_tiles: int, n_vtiles: int) -> tuple[int, int]:
    """Mean kernel: ``(v_split, chunk_tiles)``, the programs per position tile and the vocabulary tiles
    of each (``n_tiles`` position tiles, rows of ``n_vtiles`` tiles): enough programs for about
    ``target_programs`` in all, never an empty chunk. It depends on the batch, which is safe: the chunks'
    results merge by an exact max (a position's token is the same for any split)."""
    v_split = cfg.v_split or triton.cdiv(cfg.target_programs, n_tiles)
    v_split = max(1, min(v_split, n_vtiles))
    chunk_tiles = max(1, triton.cdiv(n_vtiles, v_split))
    return max(1, triton.cdiv(n_vtiles, chunk_tiles)), chunk_tiles


def kernel_configurations(cfg: SweepConfig, max_w: int = MAX_W_PAD) -> list[Launch]:
    """Every distinct :class:`Launch` that :func:`sweep` can make under ``cfg`` for windows of up to
    ``max_w`` slices (any length and vocabulary: both sides of the score kernel's widening), from
    :func:`launch_params` itself. The logits dtype is not a constexpr: each is compiled apart."""
    out = {}
    for W in sorted({min(max_w, 1 << i) for i in range(max_w.bit_length() + 1)}):
        for score in (False, True):
            for L, V in itertools.product((1, cfg.target_programs), (1, 2 * cfg.block_v)):
                for rule in range(3):
                    for greedy, scale, argmax_final in itertools.product((False, True), repeat=3):
                        for with_counts, aligned in itertools.product((False, True), repeat=2):
                            launch = launch_params(cfg, W=W, L=L, V=V, score=score, rule=rule, greedy=greedy,
                                                   scale=scale, argmax_final=argmax_final,
                                                   with_counts=with_counts, aligned=aligned)
                            out.setdefault(launch.key(), launch)
    return list(out.values())


def sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score, argmax_final,
          with_counts, config: SweepConfig | None = None):
    """The ``sweep`` op (contract: :mod:`pit_sampler.reference`) in one launch of :func:`_mean_kernel` or
    :func:`_score_kernel`.

    The index tensors are made contiguous (a no-op for the samplers' inputs); ``logits [M, V]`` is read
    in place through its strides, addressed from the start of its storage so that the alignment of
    every row is known. Missing rows are flagged in a separate ``missing [W, B]`` buffer (plain stores of
    1, from any program), never in ``invalid`` itself, which other programs of the sample are adding to
    with atomics: after the kernel (stream order) the host writes ``invalid = -1`` where a flag is set
    and for bad slices (``steps > N``), so no flag races with a count, and no sync is needed."""
    W, B = steps.shape
    L = x0.shape[1]
    M, V = logits.shape
    P = prev.shape[0]
    N, KC = cdf.shape[0] - 1, cdf.shape[1]
    device = x0.device
    states = torch.empty((W, B, L), dtype=torch.int64, device=device)
    counts = torch.empty((W, B, L) if with_counts else (0,), dtype=torch.int32, device=device)
    residual = torch.zeros((P, B), dtype=torch.int32, device=device)
    invalid = torch.zeros((W, B), dtype=torch.int32, device=device)
    bad = steps > N
    if W * B * L == 0:
        return states, counts, residual, invalid.masked_fill_(bad, -1)
    cfg = config or default_config(device)
    rows, steps, x0, prev, seeds, cdf, rate = (t.contiguous() for t in (rows, steps, x0, prev, seeds, cdf, rate))
    size = logits.element_size()
    storage = logits.untyped_storage().nbytes() // size
    # M = 0: nothing is ever read (every read is a missing row), but the kernel still needs a pointer
    base = logits.as_strided((storage,), (1,), 0) if storage else logits.new_empty(1)
    offset = logits.storage_offset()
    stride_m, stride_v = logits.stride()
    aligned = stride_v == 1 and offset % 4 == 0 and (stride_m % 4 == 0 or M <= 1)
    greedy = temperature == 0
    inv_t = 1.0 if greedy else float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(temperature, dtype=torch.float32))
    launch = launch_params(cfg, W=W, L=L, V=V, score=bool(score), rule=rule, greedy=greedy, scale=inv_t != 1.0,
                           argmax_final=argmax_final, with_counts=with_counts, aligned=aligned)
    c = launch.constexprs
    block_v = 4 * c["GROUPS"]
    n_vtiles = triton.cdiv(V, block_v)
    n_ltiles = triton.cdiv(L, c["BLOCK_L"])
    n_tiles = B * n_ltiles
    missing = torch.zeros((W, B), dtype=torch.int32, device=device)
    options = dict(launch.options(), **c)
    if score:
        _score_kernel[(n_tiles,)](
            base, rows, steps, x0, prev, seeds, rate, states, counts, residual, invalid, missing,
            offset, stride_m, stride_v,
            B, L, V, W, P, N, M, mask_id, inv_t, n_ltiles, n_vtiles, **options,
        )
    else:
        v_split, chunk_tiles = vocab_split(cfg, n_tiles, n_vtiles)
        scratch = torch.zeros(B * L + n_tiles, dtype=torch.int64, device=device)
        keys, done = scratch[: B * L], scratch[B * L :]
        _mean_kernel[(n_tiles * v_split,)](
            base, rows, steps, x0, prev, seeds, cdf, states, counts, residual, invalid, missing, keys, done,
            offset, stride_m, stride_v,
            B, L, V, W, P, N, KC, M, mask_id, inv_t,
            n_ltiles, v_split, chunk_tiles, n_vtiles, **options,
        )
    return states, counts, residual, invalid.masked_fill_(bad | (missing != 0), -1)
