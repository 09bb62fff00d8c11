"""Jump counts and unmask rules in Triton (the integer tables of :mod:`pit_sampler.rules`)."""

import triton
import triton.language as tl

REJECT = tl.constexpr(0)
SCORE_MAX_JUMPS = tl.constexpr(64)  # pit_sampler.rules.SCORE_MAX_JUMPS
UNREACHABLE = tl.constexpr(2**32)  # threshold that no uint32 reaches (the cdf's padding)


@triton.jit
def mean_counts(bits, cdf_ptr, step, live, KC):
    """``K = #{k < KC : bits >= cdf[step, k]}`` (integer compare; ``cdf`` int64 ``[N + 1, KC]`` contiguous).

    ``bits`` uint32 and ``step``/``live`` broadcast together; thresholds of rows that are not live
    are not read (such entries count 0)."""
    wide = bits.to(tl.int64)
    k = tl.zeros(wide.shape, tl.int32)
    row = step.to(tl.int64) * KC
    for c in range(KC):
        threshold = tl.load(cdf_ptr + row + c, mask=live, other=UNREACHABLE)
        k += (wide >= threshold).to(tl.int32)
    return k


@triton.jit
def unmasks(k, RULE: tl.constexpr):
    """The unmask decision for a jump count: ``K == 1`` (reject) or ``K >= 1`` (first, tweedie)."""
    if RULE == REJECT:
        return k == 1
    else:
        return k >= 1


@triton.jit
def score_counts(u, lam):
    """float32 inverse CDF of ``Poisson(lam)`` at the scalar ``u``, saturating at 64 (``reference._score_counts``).

    The same float32 operations in the same order: ``p = exp(-lam)``, ``f = p``, then for
    ``i = 1..64``: ``K += (u > f)``, ``p = p lam / i``, ``f = f + p``. For ``lam >= 0`` (or NaN) ``f``
    never decreases, so the loop stops at the first ``u <= f`` (or NaN ``f``): no later comparison
    could count."""
    p = tl.exp(-lam)
    f = p
    k = tl.full((), 0, tl.int32)
    i = tl.full((), 0, tl.int32)
    while (i < SCORE_MAX_JUMPS) & ((u > f) | (lam < 0.0)):
        k += (u > f).to(tl.int32)
        i += 1
        p = tl.math.div_rn(p * lam, i.to(tl.float32))
        f = f + p
    return k
