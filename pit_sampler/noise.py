"""The counter-based noise contract: every random number of a sampling run.

All randomness is a pure function of ``(seed_b, j, l, v)``: the sample's 64-bit seed, the global
step index ``j`` (``0..N``; ``N`` is the final fill), the position ``l`` and the token ``v``.
Every backend (this reference, Triton, C++, CUDA C++) regenerates the same *integers* from it.

Philox4x32-10 (Salmon et al. 2011, as in Random123 and Triton's ``tl.randint4x``)
--------------------------------------------------------------------------------
key     ``(k0, k1) = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)`` (two's complement bits of seed)
counter ``(c0, c1, c2, c3) = (v >> 2, l, j, stream)`` for the Gumbel stream (``stream = 1``),
        taking output word ``v & 3``; ``(0, l, j, 0)`` for the jump stream, taking word 0.
round   ``hi0:lo0 = 0xD2511F53 * c0``, ``hi1:lo1 = 0xCD9E8D57 * c2`` (32x32 -> 64 bit),
        ``(c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)``, then
        ``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85`` (mod 2**32); ten rounds.

Per-sample seeds from an ``int`` seed ``s``: ``seed_b = ((w1 & 0x7FFFFFFF) << 32) | w0`` with
``(w0, w1, ...) = philox(key=s, counter=(b, 0, 0, 2))``; a ``LongTensor[B]`` of seeds is used as is,
which makes a sample independent of its slot in the batch.

Transforms (float32, the precision every backend uses)
------------------------------------------------------
Jump uniform ``U = (x + 0.5) * 2**-32`` in ``(0, 1)``: samplers compare the integer ``x`` with integer
thresholds (see :mod:`pit_sampler.rules`), so unmask decisions are identical on every backend;
only the score parametrization compares ``float32(x) + 0.5`` scaled by ``2**-32`` with float CDFs.

Gumbel ``G = -log(E)`` with ``E = -log(U)`` an exponential variate computed without cancellation:

* ``x < 2**31``:  ``E = -log((f32(x) + 0.5) * 2**-32)``
* ``x >= 2**31``: ``e = (f32(0xFFFFFFFF - x) + 0.5) * 2**-32`` (so ``e = 1 - U`` in ``(0, 1/2]``),
  ``u = 1 - e``, ``E = e if u == 1 else log(u) * e / (u - 1)`` (= ``-log1p(-e)``, Goldberg's trick).

A plain float32 ``-log(-log(u))`` rounds ``u`` to 1 near the top and truncates the Gumbel tail
(Zheng et al., arXiv 2409.02908); here the largest value is ``-log(2**-33) = 22.87`` and the smallest
``-log(log(2**33)) = -3.13``, never inf or nan, and the result agrees with float64 to float32 rounding.
"""

from __future__ import annotations

import torch

from .validation import check_dense_tensor, is_int

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
STREAM_JUMP, STREAM_GUMBEL, STREAM_SEED = 0, 1, 2


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant ``a`` and uint32 values in int64."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p_lo, p_hi = a * b_lo, a * b_hi  # each < 2**48: exact in int64
    mid = p_hi + (p_lo >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16 | (p_lo & 0xFFFF))


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 on int64 tensors holding uint32 values (broadcasting); returns four uint32 words."""
    c0, c1, c2, c3, k0, k1 = torch.broadcast_tensors(
        *[torch.as_tensor(t, dtype=torch.int64) for t in (c0, c1, c2, c3, k0, k1)]
    )
    for r in range(rounds):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r + 1 < rounds:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _key(seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return seeds & MASK32, (seeds >> 32) & MASK32


def sample_seeds(seed: int | torch.Tensor, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-sample seeds ``LongTensor[batch]``: derived from an ``int`` seed and the slot, or checked and returned.

    An int seed may lie anywhere in ``[-2**63, 2**64)``: its 64 bits are the key (``[2**63, 2**64)``
    wraps to the int64 with the same bits); numpy integers are welcome, ``bool`` is not."""
    if isinstance(seed, torch.Tensor):
        check_dense_tensor("seed", seed)
        if seed.dtype != torch.int64 or seed.shape != (batch,):
            raise TypeError(
                f"seed must be an int or a LongTensor of shape [{batch}], got {seed.dtype} {tuple(seed.shape)}"
            )
        return seed.to(device)
    if not is_int(seed):
        raise TypeError(f"seed must be an int or a LongTensor[B], got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must lie in [-2**63, 2**64) (64 bits), got {seed}")
    seed = seed - 2**64 if seed >= 2**63 else seed
    k0, k1 = _key(torch.tensor(seed, dtype=torch.int64))
    b = torch.arange(batch, dtype=torch.int64)
    w0, w1, _, _ = philox4x32(b, 0, 0, STREAM_SEED, k0, k1)
    return ((w1 & 0x7FFFFFFF) << 32 | w0).to(device)


def jump_bits(seeds: torch.Tensor, step: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """uint32 (in int64) of the jump stream for broadcastable ``seeds``, ``step`` and ``position``."""
    k0, k1 = _key(seeds)
    return philox4x32(0, position, step, STREAM_JUMP, k0, k1)[0]


def gumbel_bits(seeds: torch.Tensor, step: torch.Tensor, position: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """uint32 (in int64) of the Gumbel stream: word ``token & 3`` of counter ``(token >> 2, l, j, 1)``."""
    k0, k1 = _key(seeds)
    words = philox4x32(token >> 2, position, step, STREAM_GUMBEL, k0, k1)
    lane = torch.broadcast_to(token & 3, words[0].shape)
    return torch.stack(words, -1).gather(-1, lane.unsqueeze(-1)).squeeze(-1)


def uniform_from_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 ``U = (f32(x) + 0.5) * 2**-32`` (used only by the score parametrization)."""
    return (x.to(torch.float32) + 0.5) * 2.0**-32


def exponential_from_bits(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``E = -log(U)`` without cancellation in either half of the range (see module docstring)."""
    lower = (x.to(dtype) + 0.5) * 2.0**-32
    e = ((MASK32 - x).to(dtype) + 0.5) * 2.0**-32
    u = 1.0 - e
    upper = torch.where(u == 1.0, e, torch.log(u) * e / torch.where(u == 1.0, -e, u - 1.0))
    return torch.where(x < 2**31, -torch.log(lower), upper)


def gumbel_from_bits(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Tail-accurate Gumbel ``G = -log(E)``; float32 is the contract, float64 serves as the check."""
    return -torch.log(exponential_from_bits(x, dtype))


def gumbel_exact(x: torch.Tensor) -> torch.Tensor:
    """float64 ``-log(-log1p(-(1 - U)))`` evaluated with ``log1p``: the yardstick for the float32 transform."""
    u = (x.to(torch.float64) + 0.5) * 2.0**-32
    one_minus_u = ((MASK32 - x).to(torch.float64) + 0.5) * 2.0**-32
    e = torch.where(x < 2**31, -torch.log(u), -torch.log1p(-one_minus_u))
    return -torch.log(e)
