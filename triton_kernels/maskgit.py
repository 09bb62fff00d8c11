"""Triton kernels of the k-per-step (MaskGIT / LLaDA) sweep: semantics in :mod:`pit_sampler.maskgit_reference`.

Two launches per sweep, no host synchronisation:

1. ``_candidates_kernel``, one program per (slice, sample, position): positions that are not
   candidates (slice dead, not masked in ``x0``, outside the slice's block) store key ``-1`` and
   return. A candidate reads its logits row twice, in ``BLOCK_V`` tiles: pass 1 checks the row
   (NaN, +inf, all -inf), keeps the two largest logits (the multiset's top two: a repeated maximum
   is its own second) and the Gumbel-max token (strictly larger replaces, and within a tile the
   lowest index wins: ties go to the lowest token, as ``torch.argmax``); pass 2 sums the fixed-point
   probabilities ``q_v`` (int64 sums: exact in any order) for the score. Every float operation of the
   score is the reference's, in its order; the kernels are compiled with ``enable_fp_fusion=False``
   (no FMA) and divide with ``div_rn``, so keys are bit-identical to the other backends.
2. ``_select_kernel``, one program per sample: the running state of its ``L`` positions stays in
   registers across the slices; slice ``w`` finds the ``kcount[w, b]``-th largest key among the
   eligible positions by bisection over the int64 key range (63 counting passes; keys are unique)
   and gives every position at or above it its token, then stores ``states[w]``, ``residual`` and
   ``invalid``.

Gumbel words: each lane computes the Philox block of its token's group ``v >> 2`` and takes word
``v & 3`` (4x redundant Philox, simple; the tau-leaping sweep shares one call per group).

Index values follow the reference's contract: a live slice whose ``rows`` entry lies outside ``[0, R)``
(a missing row) has no candidate (no address is formed from the entry) and the selection reports its
``invalid = -1``; any negative step passes through; the step enters Philox as its low 32 bits;
``kcount`` is effectively clamped to ``[0, eligible]`` by the bisection; tokens, blocks and seeds are
only compared or hashed, never used as an index.
"""

import torch
import triton
import triton.language as tl

from .philox import gumbel_from_bits, gumbel_words, philox4x32, seed_key

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))
BIG = tl.constexpr(2**31 - 1)
LOG2E = tl.constexpr(1.4426950216293335)
FIXED_BITS = tl.constexpr(30)
C0, C1, C2 = tl.constexpr(1.0), tl.constexpr(0.6931471824645996), tl.constexpr(0.24022650718688965)
C3, C4 = tl.constexpr(0.05550410971045494), tl.constexpr(0.009618128649890423)
C5, C6 = tl.constexpr(0.0013333557872101665), tl.constexpr(0.0001540352968731895)
C7, C8 = tl.constexpr(1.5252733646775596e-05), tl.constexpr(1.3215486660556053e-06)
A13, A11, A9 = tl.constexpr(0.07692307978868484), tl.constexpr(0.09090909361839294), tl.constexpr(0.1111111119389534)
A7, A5, A3 = tl.constexpr(0.1428571492433548), tl.constexpr(0.20000000298023224), tl.constexpr(0.3333333432674408)
CONFIDENCE, MARGIN, ENTROPY, RANDOM = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2), tl.constexpr(3)
STREAM_ORDER = tl.constexpr(3)


@triton.jit
def fixed_exp2(x):
    """int64 ``q(x) = trunc(P(f) 2**(30 + n))``, ``n = floor(x)``, ``f = x - n``; 0 below -30."""
    ok = x >= -30.0
    x = tl.where(ok, x, 0.0)
    n = tl.floor(x)
    f = x - n
    p = C8 * f + C7
    p = p * f + C6
    p = p * f + C5
    p = p * f + C4
    p = p * f + C3
    p = p * f + C2
    p = p * f + C1
    p = p * f + C0
    scale = ((n.to(tl.int32) + (FIXED_BITS + 127)) << 23).to(tl.float32, bitcast=True)
    return tl.where(ok, (p * scale).to(tl.int64), 0)


@triton.jit
def log2_f32(y):
    """``lg2(y)`` of a positive normal float32: exponent bits plus the atanh series of the mantissa."""
    bits = y.to(tl.int32, bitcast=True)
    e = ((bits >> 23) - 127).to(tl.float32)
    mant = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    s = tl.math.div_rn(mant - 1.0, mant + 1.0)
    s2 = s * s
    t = A13 * s2 + A11
    t = t * s2 + A9
    t = t * s2 + A7
    t = t * s2 + A5
    t = t * s2 + A3
    t = t * s2 + 1.0
    return e + ((s + s) * t) * LOG2E


@triton.jit
def _load_row(row_ptr, stride_v, v, v_end, mask_id):
    """float32 logits of tokens ``v`` (``-inf`` at and past ``v_end``, and on the mask token)."""
    y = tl.load(row_ptr + v.to(tl.int64) * stride_v, mask=v < v_end, other=float("-inf")).to(tl.float32)
    return tl.where(v == mask_id, NEG_INF, y)


@triton.jit
def _gumbel(k0, k1, step, position, v):
    """Tail-accurate Gumbel variate of tokens ``v``: word ``v & 3`` of counter ``(v >> 2, l, j, 1)``."""
    w0, w1, w2, w3 = gumbel_words(k0, k1, step, position, v >> 2)
    lane = v & 3
    return gumbel_from_bits(tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3))))


@triton.jit
def _tile_argmax(s, v):
    """``(max, lowest index attaining it)`` of a tile."""
    top = tl.max(s)
    return top, tl.min(tl.where(s == top, v, BIG))


@triton.jit
def _candidates_kernel(
    logits_ptr, rows_ptr, steps_ptr, x0_ptr, seeds_ptr, slice_block_ptr, pos_block_ptr, tokens_ptr, keys_ptr,
    R, B, L, V, stride_r, stride_l, stride_v, mask_id, inv_t,
    GREEDY: tl.constexpr, ORDER: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    l = pid % L
    wb = pid // L
    b = wb % B
    mask64 = (l * 0 + mask_id).to(tl.int64)
    tl.store(keys_ptr + pid, mask64 * 0 - 1)
    tl.store(tokens_ptr + pid, mask64)
    step = tl.load(steps_ptr + wb)
    row = tl.load(rows_ptr + wb)
    is_candidate = (step >= 0) & (row >= 0) & (row < R)  # a live slice whose row exists (else: missing)
    is_candidate = is_candidate & (tl.load(x0_ptr + b * L + l) == mask_id)
    is_candidate = is_candidate & (tl.load(pos_block_ptr + b * L + l) == tl.load(slice_block_ptr + wb))
    if is_candidate:
        row_ptr = logits_ptr + row * stride_r + l.to(tl.int64) * stride_l
        k0, k1 = seed_key(tl.load(seeds_ptr + b))
        lanes = tl.arange(0, BLOCK_V)
        bad = tl.full((), 0, tl.int32)
        top1 = tl.full((), float("-inf"), tl.float32)
        top2 = tl.full((), float("-inf"), tl.float32)
        best = tl.full((), float("-inf"), tl.float32)
        greedy = tl.full((), 0, tl.int32)
        token = tl.full((), 0, tl.int32)
        # pass 1: validity, top two logits (a repeated maximum is its own second), token
        for v0 in range(0, V, BLOCK_V):
            v = v0 + lanes
            y = _load_row(row_ptr, stride_v, v, V, mask_id)
            bad = bad | (tl.sum(((y != y) | (y == POS_INF)).to(tl.int32)) > 0).to(tl.int32)
            t1, i1 = _tile_argmax(y, v)
            t2 = tl.max(tl.where(v == i1, NEG_INF, y))
            greedy = tl.where(t1 > top1, i1, greedy)
            top2 = tl.maximum(tl.minimum(top1, t1), tl.maximum(top2, t2))
            top1 = tl.maximum(top1, t1)
            if not GREEDY:
                s, i = _tile_argmax(y * inv_t + _gumbel(k0, k1, step, l, v), v)
                token = tl.where(s > best, i, token)
                best = tl.maximum(best, s)
        bad = bad | (top1 == NEG_INF).to(tl.int32)
        if GREEDY:
            token = greedy
        if ORDER == RANDOM:
            zero = tl.full((), 0, tl.uint32)
            order_word = tl.full((), STREAM_ORDER, tl.uint32)
            r, _, _, _ = philox4x32(zero, l.to(tl.uint32), step.to(tl.uint32), order_word, k0, k1)
            s31 = (r >> 1).to(tl.int64)
        else:
            # pass 2: fixed-point sums
            S = tl.full((), 0, tl.int64)
            T = tl.full((), 0, tl.int64)
            q_tok = tl.full((), 0, tl.int64)
            for v0 in range(0, V, BLOCK_V):
                v = v0 + lanes
                x = (_load_row(row_ptr, stride_v, v, V, mask_id) - top1) * LOG2E
                q = fixed_exp2(x)
                S += tl.sum(q)
                q_tok += tl.sum(tl.where(v == token, q, 0))
                if ORDER == ENTROPY:
                    a = tl.floor(tl.where(q > 0, -x, 0.0) * 256.0).to(tl.int64)
                    T += tl.sum(tl.where(q > 0, (q >> 10) * a, 0))
            sf = S.to(tl.float32)
            if ORDER == CONFIDENCE:
                s31 = tl.math.div_rn(q_tok.to(tl.float32), sf).to(tl.int32, bitcast=True).to(tl.int64)
            elif ORDER == MARGIN:
                q2 = fixed_exp2((top2 - top1) * LOG2E)
                s31 = tl.math.div_rn(((1 << 30) - q2).to(tl.float32), sf).to(tl.int32, bitcast=True).to(tl.int64)
            else:
                h = tl.math.div_rn(T.to(tl.float32) * 4.0, sf) + (log2_f32(sf) - 30.0)
                h = tl.where(h < 0.0, 0.0, h)
                s31 = 0x7FFFFFFF - h.to(tl.int32, bitcast=True).to(tl.int64)
        key = (s31 << 32) | (4294967295 - l.to(tl.int64))
        tl.store(keys_ptr + pid, tl.where(bad != 0, -2, key))
        tl.store(tokens_ptr + pid, tl.where(bad != 0, mask64, token.to(tl.int64)))


@triton.jit
def _select_kernel(
    tokens_ptr, keys_ptr, rows_ptr, steps_ptr, x0_ptr, prev_ptr, kcount_ptr, states_ptr, residual_ptr, invalid_ptr,
    W, B, L, R, mask_id, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK_L)
    inside = offs < L
    cur = tl.load(x0_ptr + b * L + offs, mask=inside, other=0)
    for w in range(W):
        base = (w * B + b) * L
        key = tl.load(keys_ptr + base + offs, mask=inside, other=-1)
        masked = inside & (cur == mask_id)
        eligible_key = tl.where(masked & (key >= 0), key, -1)
        k = tl.load(kcount_ptr + w * B + b)
        # the k-th largest eligible key: the largest tau with #{key >= tau} >= k (0 if fewer than k)
        lo = tl.full((), 0, tl.int64)
        hi = tl.full((), 2**63 - 1, tl.int64)
        for _ in range(63):
            mid = lo + ((hi - lo) >> 1) + 1
            enough = tl.sum((eligible_key >= mid).to(tl.int32)) >= k
            go = lo < hi
            lo = tl.where(go & enough, mid, lo)
            hi = tl.where(go & (enough == 0), mid - 1, hi)
        chosen = (eligible_key >= lo) & (eligible_key >= 0) & (k > 0)
        cur = tl.where(chosen, tl.load(tokens_ptr + base + offs, mask=inside, other=0), cur)
        tl.store(states_ptr + base + offs, cur, mask=inside)
        prev = tl.load(prev_ptr + base + offs, mask=inside, other=0)
        tl.store(residual_ptr + w * B + b, tl.sum((inside & (cur != prev)).to(tl.int32)))
        row = tl.load(rows_ptr + w * B + b)
        missing = (tl.load(steps_ptr + w * B + b) >= 0) & ((row < 0) | (row >= R))  # no candidates: flag it
        count = tl.sum((masked & (key == -2)).to(tl.int32))
        tl.store(invalid_ptr + w * B + b, tl.where(missing, -1, count))


def maskgit_sweep(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order):
    """Host side: two launches (candidates, selection); see the module docstring."""
    W, B = steps.shape
    R, L, V = logits.shape
    rows, steps, x0, prev, seeds, kcount, slice_block, pos_block = (
        t.contiguous() for t in (rows, steps, x0, prev, seeds, kcount, slice_block, pos_block)
    )
    tokens = torch.empty((W, B, L), dtype=torch.int64, device=x0.device)
    keys = torch.empty((W, B, L), dtype=torch.int64, device=x0.device)
    states = torch.empty((W, B, L), dtype=torch.int64, device=x0.device)
    residual = torch.empty((W, B), dtype=torch.int32, device=x0.device)
    invalid = torch.empty((W, B), dtype=torch.int32, device=x0.device)
    if W * B == 0:
        return states, residual, invalid
    greedy = temperature == 0
    inv_t = 1.0 if greedy else float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(temperature, dtype=torch.float32))
    if L > 0:
        # R = 0: no row exists, so every candidate is missing and logits is never dereferenced
        _candidates_kernel[(W * B * L,)](
            logits, rows, steps, x0, seeds, slice_block, pos_block, tokens, keys,
            R, B, L, V, logits.stride(0), logits.stride(1), logits.stride(2), mask_id, inv_t,
            GREEDY=greedy, ORDER=order, BLOCK_V=min(triton.next_power_of_2(V), 1024),
            num_warps=4, enable_fp_fusion=False,
        )
    _select_kernel[(B,)](
        tokens, keys, rows, steps, x0, prev, kcount, states, residual, invalid, W, B, L, R, mask_id,
        BLOCK_L=triton.next_power_of_2(max(L, 1)), num_warps=4, enable_fp_fusion=False,
    )
    return states, residual, invalid
