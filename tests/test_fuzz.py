"""Every CPU backend (native, Triton interpreter) equals the reference on random sweeps, exactly.

Part 1: regression tests of the op contract (``pit_sampler/reference.py``) with independently known
answers, run on every backend, the reference included: greedy ``temperature = 0``, validity judged on
the scaled logits, the saturating score ``lambda``, bad slices (``invalid = -1``) and ``with_counts``.

Part 2: a seeded differential fuzz (:func:`sweep_inputs.random_case`): random sizes, mask position,
rule, parametrization, options, dtype, memory layout, NaN/inf patterns and out-of-range ``rows`` /
``steps``; Triton also with random launch configurations. ``states``, ``counts``, ``residual`` and
``invalid`` must be equal. Fixed seeds, so the cases are the same on every run.
"""

from __future__ import annotations

import random

import pytest
import torch

from pit_sampler.rules import RULES, SCORE_MAX_JUMPS, step_tables
from pit_sampler.schedules import get_schedule, time_grid
from sweep_inputs import assert_same, backends, describe, random_case

BACKENDS = backends("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")
FUZZ_CASES = {"native": 400, "triton": 30}


def _run(backend, args, config=None):
    if config is not None:
        return BACKENDS[backend](*args, config=config)
    return BACKENDS[backend](*args)


def _window(W, B, L, V, N, rule, mask_id, steps, rows=None):
    """All-masked ``x0`` and the rule's tables; ``steps`` ``[W, B]``; rows default to ``w * B + b``."""
    tables = step_tables(get_schedule("loglinear"), time_grid(N, "geometric"), rule)
    x0 = torch.full((B, L), mask_id, dtype=torch.int64)
    steps = torch.as_tensor(steps, dtype=torch.int64).view(W, B)
    rows = torch.arange(W * B).view(W, B) if rows is None else torch.as_tensor(rows, dtype=torch.int64).view(W, B)
    return x0, steps, rows, tables


# ---------------------------------------------------------------------------------------------
# 1. the contract, with known answers, on every backend
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_temperature_zero_is_greedy(backend, dtype):
    """``T = 0``: every draw (not only the final one) is the plain argmax of the raw logits over the
    clean tokens, ties to the lowest id; counts are the mean parametrization's as usual."""
    B, L, V, N, mask_id = 3, 5, 37, 4, 4
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, L, V, generator=g) * 2).to(dtype)
    logits[0, 0, mask_id] = 100.0  # never the mask
    logits[1, 1, :] = 0.5  # a full tie: the lowest clean id
    x0, steps, rows, tables = _window(1, B, L, V, N, "first", mask_id, [[N, 0, 2]])
    cdf = torch.zeros_like(tables.cdf[:, :1])  # every step unmasks every masked position
    args = (logits, rows, steps, x0, x0.unsqueeze(0), torch.tensor([1, 2, 3]), cdf, tables.rate, mask_id, 0.0,
            RULES.index("first"), False, False, True)
    states, counts, residual, invalid = _run(backend, args)
    want = logits.float().clone()
    want[:, :, mask_id] = float("-inf")
    assert torch.equal(states[0], want.argmax(2))
    assert int(states[0, 1, 1]) == 0 and bool((counts == 1).all()) and bool((invalid == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", [False, True], ids=["mean", "score"])
def test_invalid_rows_are_judged_on_the_scaled_logits(backend, score):
    """``T = 1e-38`` (``inv_t = 1e38``): a row of finite logits that overflows to +inf after the
    multiply is invalid (never a token, least of all 0 = the mask); one whose overflow goes to -inf
    only bans those tokens (and a row where every token overflows to -inf is invalid)."""
    V, mask_id, N = 6, 0, 3
    rows_values = torch.tensor([
        [0.0, 1.0, 2.0, 5.0, 1.5, 1.0],  # 5e38 overflows to +inf: invalid
        [9.0, -5.0, 1.0, 0.5, -1.0, 2.5],  # -5e38 -> -inf bans token 1; the mask column is ignored
        [0.0, -4.0, -5.0, -6.0, -7.0, -8.0],  # all clean tokens -> -inf: invalid
    ])
    B, L = 3, 1
    x0, steps, rows, tables = _window(1, B, L, V, N, "first", mask_id, [[N, N, N]])
    args = (rows_values.view(B, L, V), rows, steps, x0, x0.unsqueeze(0), torch.tensor([5, 6, 7]), tables.cdf,
            torch.full((N + 1,), 0.1), mask_id, 1e-38, RULES.index("first"), score, False, True)
    states, counts, _, invalid = _run(backend, args)
    assert states[0, :, 0].tolist() == [mask_id, 5, mask_id]  # row 1: 2.5e38 is the top (noise is negligible)
    assert invalid[0].tolist() == [1, 0, 1]
    assert counts[0, :, 0].tolist() == ([0, 1, 0] if score else [1, 1, 1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["reject", "first", "tweedie"])
def test_score_lambda_saturates(backend, rule):
    """Score parametrization: ``lambda = rate * exp(lse)`` clamped to FLT_MAX. Logits all 100 (lse > 88.7,
    ``exp`` overflows) and a finite ``lambda = 7e33`` give the same decision: ``K = 64`` (reject: stays
    masked; first: unmasks), tweedie ``K = 1`` (``p = 1``)."""
    B, L, V, mask_id, N = 2, 4, 9, 8, 3
    x0, steps, rows, tables = _window(1, B, L, V, N, rule, mask_id, [[0, 0]], rows=[[0, 0]])
    common = (x0.unsqueeze(0), torch.tensor([3, 4]), tables.cdf)
    huge_lse = torch.full((1, L, V), 100.0)  # lambda = 0.5 * exp(100 + log 8) = inf in float32
    rate = torch.full((N + 1,), 0.5)
    tiny_lse = torch.zeros(1, L, V)  # lse = log 8: lambda = 7e33, finite, and the Poisson CDF is 0 at every k
    big_rate = torch.full((N + 1,), 7e33 / 8)
    cases = [(huge_lse, rate), (tiny_lse, big_rate)]
    want_k = 1 if rule == "tweedie" else SCORE_MAX_JUMPS
    for logits, r in cases:
        args = (logits, rows, steps, x0, *common, r, mask_id, 1.0, RULES.index(rule), True, False, True)
        states, counts, _, invalid = _run(backend, args)
        assert bool((counts == want_k).all()), counts
        assert bool((invalid == 0).all())
        assert bool(((states == mask_id) == (rule == "reject")).all())


BAD_SLICES = [(5, 1), (2**40, 1), (1, -1), (1, 4), (1, 2**40)]  # (steps, rows): N = 4, R = 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", [False, True], ids=["mean", "score"])
def test_bad_slices_pass_through_with_invalid_minus_one(backend, score):
    """A live slice with ``steps > N`` (5, 2**40) or ``rows`` outside ``[0, R)`` (-1, R, 2**40) performs no
    step (exactly as ``steps = -1``: same states and counts), reads nothing, and reports ``invalid = -1``;
    sample ``b < 5`` has bad slice ``BAD_SLICES[b]`` at slice 1, sample 5 none."""
    W, B, L, V, N, mask_id = 3, 6, 3, 11, 4, 3
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, L, V, generator=g)
    x0, steps, rows, tables = _window(W, B, L, V, N, "first", mask_id, torch.arange(W).view(W, 1).expand(W, B),
                                      rows=torch.randint(0, 4, (W, B), generator=g))
    cdf = tables.cdf if score else torch.full_like(tables.cdf[:, :2], 2**31)  # mean: about half unmask per slice
    rate = torch.full((N + 1,), 0.3 / V)
    common = (x0, x0.expand(W, B, L).contiguous(), torch.arange(B), cdf, rate, mask_id, 1.0, RULES.index("first"),
              score, False, True)
    broken_steps, broken_rows, passed = steps.clone(), rows.clone(), steps.clone()
    for b, (step, row) in enumerate(BAD_SLICES):
        broken_steps[1, b], broken_rows[1, b], passed[1, b] = step, row, -1
    got = _run(backend, (logits, broken_rows, broken_steps, *common))
    want = _run(backend, (logits, rows, passed, *common))
    assert got[3][1, :5].tolist() == [-1] * 5
    assert torch.equal(got[3][[0, 2]], want[3][[0, 2]]) and got[3][1, 5] == want[3][1, 5]
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    assert bool((got[0][0] == mask_id).any()) and bool((got[0][0] != mask_id).any())  # slice 1 had work


@pytest.mark.parametrize("backend", BACKENDS)
def test_counts_are_optional(backend):
    """``with_counts = False``: ``counts`` is an empty int32 ``[0]``; everything else is unchanged."""
    rng = random.Random(5)
    for _ in range(3):
        args = random_case(rng, max_w=4, max_b=2, max_l=4, vocab=(5, 37))
        with_counts = _run(backend, args[:-1] + (True,))
        without = _run(backend, args[:-1] + (False,))
        assert without[1].dtype == torch.int32 and tuple(without[1].shape) == (0,)
        assert with_counts[1].shape == with_counts[0].shape
        for i in (0, 2, 3):
            assert torch.equal(with_counts[i], without[i])


# ---------------------------------------------------------------------------------------------
# 2. the differential fuzz
# ---------------------------------------------------------------------------------------------
def _triton_config(rng: random.Random):
    from pit_sampler.triton_kernels.sweep import SweepConfig

    if rng.random() < 0.25:
        return SweepConfig(block_v=256, num_warps=1, target_programs=4224)  # the GPU launch settings
    return SweepConfig(
        block_v=rng.choice([4, 8, 16, 32, 64, 256]),
        num_warps=1,
        target_programs=rng.choice([1, 4, 64, 4224]),
        block_l=rng.choice([None, 1, 2, 4]),
        v_split=rng.choice([None, None, 1, 2, 3, 7]),
    )


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_fuzz_against_reference(backend):
    """``FUZZ_CASES[backend]`` random cases (Triton: tiny shapes, random launch configurations)."""
    rng = random.Random(20261122 + len(backend))
    small = backend == "triton"
    for i in range(FUZZ_CASES[backend]):
        if small:
            args = random_case(rng, max_w=4, max_b=3, max_l=3, vocab=(2, 3, 5, 37, 130, 1025))
            config = _triton_config(rng)
        else:
            args, config = random_case(rng), None
        want = BACKENDS["reference"](*args)
        got = _run(backend, args, config)
        assert_same(got, want, f"case {i}: {describe(args)} config={config}")
