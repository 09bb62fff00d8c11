"""The noise contract (docs/sampler-spec.md section 3): Philox4x32-10, stream layout, per-sample
seeds, and the tail-accurate Gumbel transform.

Everything here is deterministic (no statistical thresholds): known-answer vectors, an independent
pure-Python Philox, exact integer comparisons, and a float32-vs-float64 error bound stated in ulps.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import pit_sampler
from pit_sampler import noise, ops
from pit_sampler.testing import make_oracle

M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# An independent Philox4x32-10 in plain Python integers (Salmon et al. 2011 / Random123).
# ---------------------------------------------------------------------------------------------
def philox_py(counter, key, rounds=10):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        hi0, lo0 = p0 >> 32, p0 & M32
        hi1, lo1 = p1 >> 32, p1 & M32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


# Random123 kat_vectors, philox4x32 10 rounds: (counter, key, expected output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    assert philox_py(counter, key) == expected  # the test's own Philox is right
    out = noise.philox4x32(*counter, *key)
    assert tuple(int(w) for w in out) == expected
    for w in out:
        assert w.dtype == torch.int64


def test_philox_matches_python_reference_on_random_inputs():
    g = torch.Generator().manual_seed(1234)
    n = 300
    words = torch.randint(0, 2**32, (6, n), generator=g, dtype=torch.int64)
    out = torch.stack(noise.philox4x32(*words), 1)
    for i in range(n):
        c = tuple(int(v) for v in words[:4, i])
        k = tuple(int(v) for v in words[4:, i])
        assert tuple(int(v) for v in out[i]) == philox_py(c, k)
    assert int(out.min()) >= 0 and int(out.max()) <= M32


def _key(seed: int):
    seed &= (1 << 64) - 1  # two's complement bits of an int64 seed
    return seed & M32, seed >> 32


SEEDS = [0, 1, 12345, 2**40 + 7, 2**63 - 1, -1, -(2**35) - 3]


def test_jump_stream_layout():
    """Jump stream: word 0 of counter (0, l, j, 0) under key (seed lo, seed hi)."""
    seeds = torch.tensor(SEEDS, dtype=torch.int64)
    steps = torch.tensor([0, 1, 5, 1000, 2**20])
    positions = torch.tensor([0, 3, 77, 4095])
    bits = noise.jump_bits(seeds.view(-1, 1, 1), steps.view(1, -1, 1), positions.view(1, 1, -1))
    assert bits.shape == (len(SEEDS), len(steps), len(positions))
    for a, s in enumerate(SEEDS):
        for b, j in enumerate(steps.tolist()):
            for c, l in enumerate(positions.tolist()):
                assert int(bits[a, b, c]) == philox_py((0, l, j, 0), _key(s))[0]


def test_gumbel_stream_layout():
    """Gumbel stream for token v: word v & 3 of counter (v >> 2, l, j, 1)."""
    seeds = torch.tensor(SEEDS[:4], dtype=torch.int64)
    steps = torch.tensor([0, 7, 4096])
    positions = torch.tensor([0, 5, 1023])
    tokens = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 50255, 50256, 2**17 + 3])
    bits = noise.gumbel_bits(
        seeds.view(-1, 1, 1, 1), steps.view(1, -1, 1, 1), positions.view(1, 1, -1, 1), tokens.view(1, 1, 1, -1)
    )
    assert bits.shape == (len(seeds), len(steps), len(positions), len(tokens))
    for a, s in enumerate(seeds.tolist()):
        for b, j in enumerate(steps.tolist()):
            for c, l in enumerate(positions.tolist()):
                for d, v in enumerate(tokens.tolist()):
                    assert int(bits[a, b, c, d]) == philox_py((v >> 2, l, j, 1), _key(s))[v & 3]
    # the jump and Gumbel streams differ (different counter word c3)
    jb = noise.jump_bits(seeds.view(-1, 1, 1), steps.view(1, -1, 1), positions.view(1, 1, -1))
    gb0 = bits[..., 0]
    assert not torch.equal(jb, gb0)


def test_int_seed_gives_distinct_prefix_stable_per_sample_seeds():
    for s in (0, 1, 987654321, 2**62 + 5, -3):
        seeds = noise.sample_seeds(s, 64)
        assert seeds.dtype == torch.int64 and seeds.shape == (64,)
        assert len(set(seeds.tolist())) == 64
        assert int(seeds.min()) >= 0  # the top bit is cleared
        # derived from (seed, slot) only: a batch's prefix equals the smaller batch
        assert torch.equal(noise.sample_seeds(s, 5), seeds[:5])
        for b in (0, 1, 63):
            w0, w1, _, _ = philox_py((b, 0, 0, 2), _key(s))
            assert int(seeds[b]) == ((w1 & 0x7FFFFFFF) << 32) | w0
    assert not torch.equal(noise.sample_seeds(0, 8), noise.sample_seeds(1, 8))


def test_long_tensor_seed_is_used_as_is_and_checked():
    t = torch.tensor([5, -7, 2**50], dtype=torch.int64)
    assert torch.equal(noise.sample_seeds(t, 3), t)
    with pytest.raises(TypeError):
        noise.sample_seeds(t, 4)  # wrong length
    with pytest.raises(TypeError):
        noise.sample_seeds(t.to(torch.int32), 3)
    with pytest.raises(TypeError):
        noise.sample_seeds(1.5, 3)
    with pytest.raises(TypeError):
        noise.sample_seeds(True, 3)


# ---------------------------------------------------------------------------------------------
# The Gumbel transform
# ---------------------------------------------------------------------------------------------
EXTREMES = torch.tensor([0, 1, 2, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 3, 2**32 - 2, 2**32 - 1])


def _ulp32(v: torch.Tensor) -> torch.Tensor:
    """float32 spacing at |v| (as float64)."""
    a = v.abs().to(torch.float32)
    return (torch.nextafter(a, torch.tensor(float("inf"))) - a).to(torch.float64)


@functools.lru_cache(maxsize=1)
def _dense() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, G32(x), G64(x))`` for sorted ``x``: every uint32 within 2**16 of the ends and of the
    branch point 2**31, a stride-4099 sweep of the whole range and 2**18 random values."""
    w = 1 << 16
    parts = [
        torch.arange(0, w),
        torch.arange(2**31 - w, 2**31 + w),
        torch.arange(2**32 - w, 2**32),
        torch.arange(0, 2**32, 4099),
        torch.randint(0, 2**32, (1 << 18,), generator=torch.Generator().manual_seed(7), dtype=torch.int64),
    ]
    x = torch.sort(torch.cat(parts).to(torch.int64)).values
    return x, noise.gumbel_from_bits(x), noise.gumbel_exact(x)


def test_gumbel_extremes_finite_and_tail_reaches_20():
    g = noise.gumbel_from_bits(EXTREMES)
    assert g.dtype == torch.float32
    assert bool(torch.isfinite(g).all())
    # the largest reachable value: -log(2**-33) = 33 log 2
    assert float(g[-1]) >= 20.0
    assert float(g[-1]) == pytest.approx(33 * math.log(2), rel=1e-6)
    # the smallest: -log(log(2**33))
    assert float(g[0]) == pytest.approx(-math.log(33 * math.log(2)), rel=1e-6)
    assert float(g.max()) == float(g[-1]) and float(g.min()) == float(g[0])
    # monotone over the extremes
    assert bool((g[1:] >= g[:-1]).all())
    # the exponential variate is never 0 nor inf
    e = noise.exponential_from_bits(EXTREMES)
    assert bool((e > 0).all() and torch.isfinite(e).all())


def test_plain_float32_formula_would_truncate_the_tail():
    """Why the contract exists: float32 -log(-log(u)) saturates (u rounds to 1) far below 20."""
    x = EXTREMES
    u = (x.to(torch.float32) + 0.5) * 2.0**-32
    naive = -torch.log(-torch.log(u))
    assert not bool(torch.isfinite(naive).all()) or float(naive.max()) < 17.0
    assert float(noise.gumbel_from_bits(x).max()) > 22.0


def test_gumbel_matches_float64_to_float32_rounding():
    """|G32 - G64| <= 4 ulp32(max(1, |G64|)) over the whole range of x.

    The bound is stated relative to max(1, |G|) because near G = 0 (E = -log U close to 1)
    the float32 E itself carries an absolute error of one float32 ulp at 1, which -log(E) turns
    into an absolute error of the same size; elsewhere it is a relative bound of 4 float32 ulps.
    (Measured maximum: about 2.2 ulps.)
    """
    x, g, ref = _dense()
    assert g.dtype == torch.float32
    assert bool(torch.isfinite(g).all())
    assert ref.dtype == torch.float64
    err = (g.to(torch.float64) - ref).abs()
    ratio = err / _ulp32(ref.abs().clamp(min=1.0))
    worst = int(ratio.argmax())
    assert float(ratio.max()) <= 4.0, f"x={int(x[worst])}: G32={float(g[worst])!r} G64={float(ref[worst])!r}"
    # the yardstick itself is the textbook Gumbel: -log(-log(U)) with U = (x + 0.5) 2**-32 (float64,
    # fine away from U -> 1 where log1p is needed)
    mid = (x > 2**20) & (x < 2**32 - 2**20)
    u = (x[mid].to(torch.float64) + 0.5) * 2.0**-32
    assert torch.allclose(ref[mid], -torch.log(-torch.log(u)), rtol=0, atol=1e-9)
    # float64 evaluation of the same transform agrees to 1e-12
    g64 = noise.gumbel_from_bits(x, torch.float64)
    assert torch.allclose(g64, ref, rtol=0, atol=1e-12)


def test_gumbel_is_monotone_to_rounding():
    _, g, _ = _dense()
    g = g.to(torch.float64)
    drops = (g[:-1] - g[1:]).clamp(min=0)
    assert float((drops / _ulp32(g[1:].abs().clamp(min=1.0))).max()) <= 4.0


# ---------------------------------------------------------------------------------------------
# The noise as the ops use it
# ---------------------------------------------------------------------------------------------
def test_sweep_token_draw_uses_the_gumbel_stream():
    """A masked position unmasking at step j draws argmax_{v != mask} logits[v] / T + G(seed, j, l, v)."""
    B, L, V, mask_id, T = 6, 5, 11, 4, 0.7
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, L, V, generator=g)
    seeds = torch.tensor([3, -9, 2**45, 0, 17, 123456789], dtype=torch.int64)
    N = 9
    cdf = torch.zeros(N + 1, 1, dtype=torch.int64)  # every step unmasks every masked position
    rate = torch.zeros(N + 1, dtype=torch.float32)
    steps = torch.tensor([[0, 1, 4, 8, 9, 3]])
    x0 = torch.full((B, L), mask_id, dtype=torch.int64)
    rows = (torch.arange(B).view(B, 1) * L + torch.arange(L)).view(1, B, L)  # position l of sample b: logits[b, l]
    with ops.use_backend("reference"):
        states, counts, _, invalid = ops.sweep(
            logits.view(B * L, V), rows, steps, x0, x0.unsqueeze(0), seeds, cdf, rate, mask_id, T, 0, with_counts=True
        )
    assert ops.last_backend("sweep") == "reference"
    assert bool((counts == 1).all()) and bool((invalid == 0).all())
    for b in range(B):
        for l in range(L):
            j = int(steps[0, b])
            bits = torch.tensor([philox_py((v >> 2, l, j, 1), _key(int(seeds[b])))[v & 3] for v in range(V)])
            score = logits[b, l] / T + noise.gumbel_from_bits(bits)
            score[mask_id] = -float("inf")
            assert int(states[0, b, l]) == int(score.argmax())


def test_sweep_jump_decision_uses_the_jump_stream():
    """K = #{k : x >= cdf[j, k]} with x the jump word of (seed, j, l)."""
    B, L, V, mask_id = 4, 64, 3, 1
    seeds = torch.tensor([11, 12, 13, -14], dtype=torch.int64)
    thresholds = torch.tensor([[2**30, 2**31, 3 * 2**30], [2**31, 2**32, 2**32], [0, 2**32, 2**32]])
    rate = torch.zeros(3, dtype=torch.float32)
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(0))  # one packed row, read by every position
    x0 = torch.full((B, L), mask_id, dtype=torch.int64)
    x0[:, ::7] = 0  # some clean positions: count 0, unchanged
    for j in (0, 1):
        steps = torch.full((1, B), j, dtype=torch.int64)
        with ops.use_backend("reference"):
            states, counts, _, _ = ops.sweep(
                logits,
                torch.zeros(1, B, L, dtype=torch.int64),
                steps,
                x0,
                x0.unsqueeze(0),
                seeds,
                thresholds,
                rate,
                mask_id,
                with_counts=True,
            )
        for b in range(B):
            for l in range(L):
                if int(x0[b, l]) != mask_id:
                    assert int(counts[0, b, l]) == 0 and int(states[0, b, l]) == int(x0[b, l])
                    continue
                x = philox_py((0, l, j, 0), _key(int(seeds[b])))[0]
                k = sum(x >= int(t) for t in thresholds[j])
                assert int(counts[0, b, l]) == k
                assert (int(states[0, b, l]) != mask_id) == (k == 1)  # rule 0 = reject


# ---------------------------------------------------------------------------------------------
# Per-sample seeds through the samplers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler_cls", [pit_sampler.TauLeapingSampler, pit_sampler.PITSampler])
def test_long_tensor_seed_makes_sample_independent_of_its_slot(sampler_cls):
    oracle = make_oracle("mixture", seed=2, num_tokens=5, length=12)
    kwargs = {"mask_id": oracle.mask_id, "num_steps": 64, "rule": "reject"}
    if sampler_cls is pit_sampler.PITSampler:
        kwargs["window"] = 4
    sampler = sampler_cls(oracle, **kwargs)
    x = torch.full((4, oracle.length), oracle.mask_id, dtype=torch.int64)
    s = 4242
    with ops.use_backend("reference"):
        batch = sampler.sample(x, seed=torch.tensor([s, 7, 8, s], dtype=torch.int64)).tokens
        alone = sampler.sample(x[:1], seed=torch.tensor([s], dtype=torch.int64)).tokens
        other = sampler.sample(x[:2], seed=torch.tensor([9, s], dtype=torch.int64)).tokens
    assert torch.equal(batch[0], batch[3])
    assert torch.equal(batch[0], alone[0])
    assert torch.equal(batch[0], other[1])
    assert not torch.equal(batch[1], batch[2])  # different seeds: different samples (here)


def test_int_seed_samples_differ_across_slots_and_match_explicit_seeds():
    oracle = make_oracle("hmm", seed=1, num_tokens=5, length=10)
    sampler = pit_sampler.TauLeapingSampler(oracle, mask_id=oracle.mask_id, num_steps=32)
    x = torch.full((8, oracle.length), oracle.mask_id, dtype=torch.int64)
    with ops.use_backend("reference"):
        a = sampler.sample(x, seed=99).tokens
        b = sampler.sample(x, seed=noise.sample_seeds(99, 8)).tokens
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 1
