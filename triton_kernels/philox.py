"""The noise contract of :mod:`pit_sampler.noise` in Triton: shared by the sweep and table kernels.

Philox4x32-10 on uint32 words, with the key ``(k0, k1) = (seed & 0xFFFFFFFF, seed >> 32)``:
each round computes ``hi0:lo0 = 0xD2511F53 * c0`` and ``hi1:lo1 = 0xCD9E8D57 * c2`` as uint64
products (one wide multiply each on a GPU), then ``(c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1,
hi0 ^ c3 ^ k1, lo0)`` and bumps the key by ``(0x9E3779B9, 0xBB67AE85)``. The counters are

* jump stream  ``(0, l, j, 0)``, word 0;
* Gumbel stream ``(v >> 2, l, j, 1)``, word ``v & 3``: one Philox call serves four consecutive tokens.

The float32 transforms repeat the reference's operations in the reference's order (the integers are
identical on every backend; the floats agree to rounding, the log being libdevice's on a GPU):

* ``U = (f32(x) + 0.5) 2**-32``;
* ``G = -log(E)``, ``E = -log((f32(x) + 0.5) 2**-32)`` for ``x < 2**31``, else with
  ``e = (f32(~x) + 0.5) 2**-32``, ``u = 1 - e``: ``E = e`` if ``u == 1`` else ``log(u) e / (u - 1)``.
  Both halves need one logarithm, of ``(f32(x) + 0.5) 2**-32`` or of ``u``, so the kernel selects
  the argument first and takes a single ``log`` (the same values as evaluating both halves).

Scalars and blocks mix freely in :func:`philox4x32` (the rounds are unrolled), so counter words that
are uniform across a block (position, step, stream) cost scalar work in the first rounds only.
"""

import triton
import triton.language as tl

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
PHILOX_ROUNDS = tl.constexpr(10)
TWO_POW_M32 = tl.constexpr(2.3283064365386963e-10)  # 2**-32, exact in float32
HALF_RANGE = tl.constexpr(0x80000000)


@triton.jit
def seed_key(seed):
    """Philox key words ``(seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)`` of an int64 seed."""
    return seed.to(tl.uint32), (seed >> 32).to(tl.uint32)


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the uint32 counter ``(c0, c1, c2, c3)`` under the key ``(k0, k1)`` (broadcasting)."""
    for _ in tl.static_range(PHILOX_ROUNDS):
        p0 = c0.to(tl.uint64) * PHILOX_M0
        p1 = c2.to(tl.uint64) * PHILOX_M1
        hi0, lo0 = (p0 >> 32).to(tl.uint32), p0.to(tl.uint32)
        hi1, lo1 = (p1 >> 32).to(tl.uint32), p1.to(tl.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def jump_bits(k0, k1, step, position):
    """uint32 jump word of ``(seed, step, position)``: word 0 of counter ``(0, l, j, 0)``."""
    zero = tl.full((), 0, tl.uint32)
    w0, _, _, _ = philox4x32(zero, tl.cast(position, tl.uint32), tl.cast(step, tl.uint32), zero, k0, k1)
    return w0


@triton.jit
def gumbel_words(k0, k1, step, position, group):
    """The four Gumbel words of tokens ``4 group .. 4 group + 3``: counter ``(group, l, j, 1)``."""
    one = tl.full((), 1, tl.uint32)
    return philox4x32(tl.cast(group, tl.uint32), tl.cast(position, tl.uint32), tl.cast(step, tl.uint32), one, k0, k1)


@triton.jit
def uniform_from_bits(x):
    """float32 ``U = (f32(x) + 0.5) 2**-32`` of a uint32 ``x``."""
    return (x.to(tl.float32) + 0.5) * TWO_POW_M32


@triton.jit
def gumbel_from_bits(x):
    """Tail-accurate float32 Gumbel ``G = -log(E)`` of a uint32 ``x`` (module docstring)."""
    lower = x < HALF_RANGE
    f = (tl.where(lower, x, ~x).to(tl.float32) + 0.5) * TWO_POW_M32  # U below 2**31, else e = 1 - U
    u = 1.0 - f
    lg = tl.log(tl.where(lower, f, u))
    upper = tl.where(u == 1.0, f, tl.math.div_rn(lg * f, tl.where(u == 1.0, -f, u - 1.0)))
    return -tl.log(tl.where(lower, -lg, upper))
