"""Statistical and oracle tests of the sampling core (docs/sampler-spec.md sections 2-4).

All on CPU with the reference backend forced (``ops.use_backend("reference")``), through the public
ops (``ops.sweep``, ``ops.unmask_table``) and the samplers; the token-draw and jump-count tests also
run through every other CPU backend (native, the Triton interpreter), at a small and at GPT-2's
vocabulary (``V = 50257``). The interpreter costs about 0.1-0.2 s per row drawn, so its cases use tens
of draws (valid tests at the stated rates, with little power; its exact equality with the reference
on the same noise keys is what ``tests/test_fuzz.py`` checks). Every random input has a fixed seed, so
each test is deterministic; each statistical threshold is stated with its false-failure rate, i.e.
the probability that a *correct* implementation fails it on a fresh seed:

* goodness-of-fit / independence tests (chi-square, binomial) reject at ``p < P_FAIL = 1e-4``;
* z-tests (mean log-likelihood) reject at ``|z| > Z_TOL = 4`` (two-sided rate 6.3e-5).

Where the comparison target is only approximately right (tau-leaping with finitely many steps
against the true distribution), the bias is computed exactly (see ``TauLeapingLaw``) and the
resulting false-failure rate is stated next to the test. Each statistical test also asserts its
own power where that is cheap (the same draws must *reject* a slightly wrong target).

``TauLeapingLaw`` computes the exact output distribution of the mean-parametrization tau-leaping
sampler with a perfect denoiser, for any rule and grid, by dynamic programming over the
``(K + 1)**L`` partial sequences: at each step every masked position independently unmasks with the
rule's probability ``q_j`` and draws its token from the oracle conditional *given the state before
the step* (so positions unmasking together are drawn independently). This is the law the sampler
must reproduce exactly for any number of steps; it tends to the oracle distribution as the steps
get finer, and is measurably different from it for coarse grids on dependent oracles.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from scipy import stats

import pit_sampler
from pit_sampler import ops
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import Cosine, LogLinear, Schedule, get_schedule, time_grid
from pit_sampler.testing import TauLeapingLaw, make_oracle, unmask_probs
from sweep_inputs import full_form

P_FAIL = 1e-4  # goodness-of-fit tests reject at p < P_FAIL: false-failure rate 1e-4 per test
Z_TOL = 4.0  # z-tests reject at |z| > 4: two-sided false-failure rate 6.3e-5 per test


@pytest.fixture(autouse=True)
def reference_backend():
    with ops.use_backend("reference"):
        yield


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def gof_pvalue(observed: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit of counts ``observed`` to ``probs`` (same shape, flattened); cells
    with an expected count below ``min_expected`` are pooled into one cell (folded into the smallest
    remaining cell if the pool itself is still below ``min_expected``). Cells with probability 0
    must be empty (any count there fails the test)."""
    observed = observed.reshape(-1).to(torch.float64)
    probs = probs.reshape(-1).to(torch.float64)
    n = float(observed.sum())
    if bool(((probs == 0) & (observed > 0)).any()):
        return 0.0
    keep = probs > 0
    observed, expected = observed[keep], probs[keep] * n
    small = expected < min_expected
    obs = torch.cat([observed[~small], observed[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    if float(exp[-1]) < min_expected:
        i = int(exp[:-1].argmin())
        obs[i] += obs[-1]
        exp[i] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    assert len(obs) >= 2, "too few cells for a chi-square test"
    exp = exp * (obs.sum() / exp.sum())
    return float(stats.chisquare(obs.numpy(), exp.numpy()).pvalue)


def binom_pvalue(k: int, n: int, p: float) -> float:
    return float(stats.binomtest(int(k), int(n), float(p)).pvalue)


def all_masked(B: int, L: int, mask_id: int) -> torch.Tensor:
    return torch.full((B, L), mask_id, dtype=torch.int64)


STAT_BACKENDS = [b for b in ("native", "triton") if b in ops.available_backends("cpu")]
ALL_BACKENDS = ["reference", *STAT_BACKENDS]


def one_sweep(logits, step, x0, seeds, tables, mask_id, temperature=1.0, argmax_final=False, score=False):
    """``ops.sweep`` with W = 1: every sample performs global step ``step`` (int or ``[B]``); ``logits``
    is a full output ``[R, L, V]``, one per sample (``R = B``) or shared (``R = 1``)."""
    B = x0.shape[0]
    steps = torch.as_tensor(step, dtype=torch.int64).expand(B).reshape(1, B).contiguous()
    slice_rows = torch.zeros(1, B, dtype=torch.int64) if logits.shape[0] == 1 else torch.arange(B).view(1, B)
    packed, rows = full_form(logits, slice_rows)
    return ops.sweep(
        packed,
        rows,
        steps,
        x0,
        x0.unsqueeze(0),
        seeds,
        tables.cdf,
        tables.rate,
        mask_id,
        temperature,
        tables.rule,
        score,
        argmax_final,
        with_counts=True,
    )


class Power(Schedule):
    """``alpha(t) = 1 - t**k``: ``r(t) = k / t``, so a step has a Poisson mean up to about ``k``."""

    def __init__(self, k: float):
        self.k = k

    def alpha(self, t):
        return 1.0 - torch.as_tensor(t, dtype=torch.float64) ** self.k

    def alpha_prime(self, t):
        return -self.k * torch.as_tensor(t, dtype=torch.float64) ** (self.k - 1)


# ---------------------------------------------------------------------------------------------
# 1. the token draw is a softmax draw
# ---------------------------------------------------------------------------------------------
DRAW_CASES = [
    # (logits, mask_id, temperature, dtype); the mask column holds the largest logit on purpose
    ([0.3, -1.2, 5.0, 1.1, 0.0], 2, 1.0, torch.float32),
    ([0.3, -1.2, 5.0, 1.1, 0.0], 2, 0.5, torch.float32),
    ([-0.5, 0.75, 2.0, 9.0, -1.5, 0.125, 1.25], 3, 1.0, torch.float32),
    ([-0.5, 0.75, 2.0, 9.0, -1.5, 0.125, 1.25], 3, 0.5, torch.float32),
    ([-0.5, 0.75, 2.0, 9.0, -1.5, 0.125, 1.25], 3, 0.5, torch.float16),
    ([-0.5, 0.75, 2.0, 9.0, -1.5, 0.125, 1.25], 3, 1.0, torch.bfloat16),
]


def softmax_without(logits: torch.Tensor, mask_id: int, temperature: float) -> torch.Tensor:
    z = logits.to(torch.float64) / temperature
    z[mask_id] = -math.inf
    return torch.softmax(z, 0)


@functools.cache
def token_draws(case: int, B: int = 1200, L: int = 25, N: int = 40, backend: str = "reference"):
    """Draws ``[B, L]`` of one logits row from ``B * L`` keys (seed, step, position): sample ``b`` has
    per-sample seed ``sample_seeds(case)[b]`` and step ``b % (N + 1)``; with all-zero thresholds every
    masked position unmasks at every step (``K = 1``), and step ``N`` is the table's final fill."""
    values, mask_id, temperature, dtype = DRAW_CASES[case]
    V = len(values)
    logits = torch.tensor(values, dtype=dtype).expand(1, L, V).contiguous()
    seeds = pit_sampler.sample_seeds(1000 + case, B)
    tables = step_tables(LogLinear(), time_grid(N), "reject")
    tables = type(tables)(torch.zeros_like(tables.cdf[:, :1]), tables.rate, tables.rule)
    step = torch.arange(B) % (N + 1)
    with ops.use_backend(backend):
        states, counts, residual, invalid = one_sweep(
            logits, step, all_masked(B, L, mask_id), seeds, tables, mask_id, temperature
        )
    assert bool((counts == 1).all()) and bool((invalid == 0).all())
    assert bool((residual == L).all())
    return states[0], torch.tensor(values, dtype=dtype), mask_id, temperature


@pytest.mark.parametrize("case", range(len(DRAW_CASES)))
def test_token_draw_matches_softmax(case):
    """Chi-square of 30000 draws (1200 seeds x 25 positions, 41 steps) against softmax(logits / T)
    over the clean tokens: false-failure rate 1e-4. Power: the same draws reject the softmax at the
    other temperature (T = 1 vs 0.5)."""
    draws, logits, mask_id, temperature = token_draws(case)
    V = len(logits)
    assert not bool((draws == mask_id).any()), "the mask id was drawn"
    counts = torch.bincount(draws.reshape(-1), minlength=V)
    want = softmax_without(logits, mask_id, temperature)
    assert gof_pvalue(counts, want) > P_FAIL
    other = softmax_without(logits, mask_id, 1.5 - temperature)
    assert gof_pvalue(counts, other) < P_FAIL


# (B, L) of the token draws per backend: 30000 draws, or 50 through the interpreter
DRAW_SIZES = {"native": (1200, 25), "triton": (10, 5)}


@pytest.mark.parametrize("backend", STAT_BACKENDS)
@pytest.mark.parametrize("case", [0, 3, 5])
def test_token_draw_matches_softmax_on_every_backend(backend, case):
    """The chi-square of ``test_token_draw_matches_softmax`` through the native and Triton backends
    (fp32 / fp32 at T = 0.5 / bf16): false-failure rate 1e-4; the power check (the other temperature
    is rejected) only with the 30000 native draws."""
    B, L = DRAW_SIZES[backend]
    draws, logits, mask_id, temperature = token_draws(case, B, L, backend=backend)
    assert not bool((draws == mask_id).any()), "the mask id was drawn"
    counts = torch.bincount(draws.reshape(-1), minlength=len(logits))
    assert gof_pvalue(counts, softmax_without(logits, mask_id, temperature)) > P_FAIL
    if B * L >= 10000:
        assert gof_pvalue(counts, softmax_without(logits, mask_id, 1.5 - temperature)) < P_FAIL


GPT2_V, GPT2_MASK = 50257, 40000
# four cells of about a quarter of the mass: a token in the first tile, one mid-vocabulary, the last id
# (in the partial last tile) and the rest of the vocabulary, binned by id range; the mask holds the top logit
GPT2_SPECIAL = (3, 25000, GPT2_V - 1)
LARGE_DRAWS = {"reference": (12, 10), "native": (300, 10), "triton": (4, 6)}


def gpt2_row() -> torch.Tensor:
    g = torch.Generator().manual_seed(50257)
    row = torch.randn(GPT2_V, generator=g) * 0.5
    rest = float(torch.logsumexp(row.double(), 0))
    row[list(GPT2_SPECIAL)] = torch.tensor([rest, rest + 0.1, rest - 0.1], dtype=torch.float32)
    row[GPT2_MASK] = rest + 10.0
    return row


def gpt2_cells(probs: torch.Tensor) -> torch.Tensor:
    """Sum ``probs`` (or counts) over ``[V]`` into the cells: the special tokens, then 4 id ranges of the rest."""
    special = probs[list(GPT2_SPECIAL)]
    rest = probs.clone()
    rest[list(GPT2_SPECIAL)] = 0
    return torch.cat([special, torch.stack([c.sum() for c in rest.chunk(4)])])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_token_draw_matches_softmax_at_gpt2_vocabulary(backend, monkeypatch):
    """``V = 50257`` rows (many vocabulary tiles, the pruning of tokens that cannot win): chi-square of the
    draws, binned into 7 cells (3 special tokens, 4 id ranges of the rest), against the softmax; false-failure
    rate 1e-4. Reference 120, native 3000, Triton 24 draws (the interpreter runs 16384-token tiles).
    Power (native): the softmax at T = 2 is rejected."""
    if backend == "triton":
        from pit_sampler.triton_kernels import sweep as triton_sweep

        monkeypatch.setattr(triton_sweep, "default_config",
                            lambda device: triton_sweep.SweepConfig(block_v=16384, num_warps=1, target_programs=1))
    B, L = LARGE_DRAWS[backend]
    row = gpt2_row()
    tables = step_tables(LogLinear(), time_grid(8), "reject")
    tables = type(tables)(torch.zeros_like(tables.cdf[:, :1]), tables.rate, tables.rule)  # every position draws
    with ops.use_backend(backend):
        states, _, _, invalid = one_sweep(row.expand(1, L, GPT2_V).contiguous(), torch.arange(B) % 9,
                                          all_masked(B, L, GPT2_MASK), pit_sampler.sample_seeds(7, B), tables,
                                          GPT2_MASK)
    assert bool((invalid == 0).all()) and not bool((states == GPT2_MASK).any())
    counts = gpt2_cells(torch.bincount(states.reshape(-1), minlength=GPT2_V))
    assert gof_pvalue(counts, gpt2_cells(softmax_without(row, GPT2_MASK, 1.0))) > P_FAIL
    if B * L >= 3000:
        assert gof_pvalue(counts, gpt2_cells(softmax_without(row, GPT2_MASK, 2.0))) < P_FAIL


@pytest.mark.parametrize("case", [0, 3])
def test_token_draws_are_independent_across_keys(case):
    """Neighbouring positions (same seed and step) and neighbouring samples (different seed and
    step) draw independently: chi-square test of independence on the joint counts, false-failure
    rate 1e-4 each."""
    draws, logits, mask_id, _ = token_draws(case)
    V = len(logits)
    for a, b in ((draws[:, :-1], draws[:, 1:]), (draws[:-1], draws[1:])):
        table = torch.bincount((a * V + b).reshape(-1), minlength=V * V).view(V, V)
        keep = [v for v in range(V) if v != mask_id]
        table = table[keep][:, keep].numpy()
        assert stats.chi2_contingency(table).pvalue > P_FAIL


def test_final_step_argmax_and_sampling():
    """At the final step N: ``argmax_final`` takes the plain argmax over clean tokens (mask excluded),
    otherwise the Gumbel draw (more than one distinct token over many keys)."""
    values, mask_id, _, _ = DRAW_CASES[2]
    B, L, N = 200, 10, 5
    logits = torch.tensor(values).expand(1, L, len(values)).contiguous()
    tables = step_tables(LogLinear(), time_grid(N), "first")
    seeds = pit_sampler.sample_seeds(5, B)
    x0 = all_masked(B, L, mask_id)
    states = one_sweep(logits, N, x0, seeds, tables, mask_id, argmax_final=True)[0][0]
    assert bool((states == 2).all())  # argmax over v != 3
    states = one_sweep(logits, N, x0, seeds, tables, mask_id, 0.7, argmax_final=False)[0][0]
    assert not bool((states == mask_id).any()) and len(states.unique()) > 3


# ---------------------------------------------------------------------------------------------
# 2. jump counts and unmask decisions
# ---------------------------------------------------------------------------------------------
POISSON_TIMES = torch.tensor([1.0, 0.97, 0.8, 0.5, 0.2, 0.1, 0.02], dtype=torch.float64)
POISSON_SCHEDULES = [LogLinear(), Cosine(), Power(6.0)]  # lambda from 0.03 to 4.8 over their steps


def test_poisson_thresholds_are_the_poisson_cdf():
    """Deterministic: ``cdf[j, k] = floor(F(k) 2**32 - 0.5) + 1`` (within 1 for float rounding) with
    ``F`` the Poisson(Delta_j r(t_j)) CDF; tweedie: the single threshold of ``1 - p_j``; padding 2**32."""
    for schedule in POISSON_SCHEDULES:
        lam = (POISSON_TIMES[:-1] - POISSON_TIMES[1:]) * schedule.rate(POISSON_TIMES[:-1])
        for rule in ("reject", "first"):
            cdf = step_tables(schedule, POISSON_TIMES, rule).cdf
            assert cdf.dtype == torch.int64 and cdf.shape[0] == len(POISSON_TIMES)
            assert cdf[-1, 0] == 0 and bool((cdf[-1, 1:] == 2**32).all())
            for j, lam_j in enumerate(lam.tolist()):
                row = cdf[j]
                k = torch.arange(len(row))
                F = torch.tensor(stats.poisson.cdf(k.numpy(), lam_j), dtype=torch.float64)
                want = (torch.floor(F * 2.0**32 - 0.5) + 1).clamp(max=2**32).to(torch.int64)
                reachable = want < 2**32
                assert bool(((row - want).abs()[reachable] <= 1).all())
                assert bool((row[~reachable] >= 2**32 - 1).all())
                assert bool((row[1:] >= row[:-1]).all())
        p = unmask_probs(schedule, POISSON_TIMES, "tweedie")[:-1]
        cdf = step_tables(schedule, POISSON_TIMES, "tweedie").cdf
        assert cdf.shape[1] == 1
        want = torch.floor((1 - p) * 2.0**32 - 0.5) + 1
        assert bool(((cdf[:-1, 0].to(torch.float64) - want).abs() <= 1).all())


@functools.cache
def step_counts(schedule_index: int, rule: str, j: int, B: int = 500, L: int = 100, V: int = 2,
                backend: str = "reference"):
    """Counts and unmask decisions of ``B * L`` masked positions performing step ``j`` (W = 1); ``V = 2``:
    one clean token (the draw is not under test here), or a larger vocabulary of random logits."""
    schedule = POISSON_SCHEDULES[schedule_index]
    mask_id = V - 1
    tables = step_tables(schedule, POISSON_TIMES, rule)
    logits = torch.zeros(1, L, V) if V == 2 else torch.randn(1, L, V, generator=torch.Generator().manual_seed(V))
    seeds = pit_sampler.sample_seeds(77 + 10 * schedule_index + j, B)
    with ops.use_backend(backend):
        states, counts, _, invalid = one_sweep(logits, j, all_masked(B, L, mask_id), seeds, tables, mask_id)
    assert bool((invalid == 0).all())
    return counts[0].reshape(-1), (states[0] != mask_id).reshape(-1)


# (schedule, step): lambda = 0.03, 0.6 (loglinear), 1.14, 1.6 (cosine), 1.05, 3.6, 4.8 (power)
POISSON_CASES = [(0, 0), (0, 3), (1, 3), (1, 5), (2, 1), (2, 3), (2, 5)]


# (backend, B, L, V) of the jump-count tests: the reference's 50000 counts at V = 2; native also at
# V = 50257 (10000 counts); the interpreter 128 counts at V = 2 (it reads every unmasking row; the mean
# parametrization's counts come from the noise alone, whatever V)
COUNT_SIZES = [("reference", 500, 100, 2)] + [
    size for size in [("native", 500, 100, 2), ("native", 100, 100, 50257), ("triton", 8, 16, 2)]
    if size[0] in STAT_BACKENDS
]


@pytest.mark.parametrize("size", COUNT_SIZES, ids=lambda s: f"{s[0]}-V{s[3]}")
@pytest.mark.parametrize("schedule_index,j", POISSON_CASES)
@pytest.mark.parametrize("rule", ["reject", "first"])
def test_jump_counts_are_poisson(schedule_index, j, rule, size):
    """50000 counts of one step against Poisson(lambda_j = Delta_j r(t_j)) (chi-square, tail
    merged; false-failure rate 1e-4); the unmask decision is K == 1 (reject) or K >= 1 (first),
    exactly, with frequency lambda e^-lambda or 1 - e^-lambda (binomial test, rate 1e-4).
    Power: Poisson(1.1 lambda) is rejected (checked for lambda >= 0.5 with 50000 counts). Also through the
    native backend (50000 counts at V = 2, 10000 at V = 50257) and the Triton interpreter (128 counts,
    lambda = 0.6 only: each unmasking position costs the interpreter a row pass)."""
    backend, B, L, V = size
    if backend == "triton" and (schedule_index, j) != (0, 3):
        pytest.skip("the interpreter runs one case (lambda = 0.6)")
    schedule = POISSON_SCHEDULES[schedule_index]
    lam = float((POISSON_TIMES[j] - POISSON_TIMES[j + 1]) * schedule.rate(POISSON_TIMES[j]))
    counts, unmasked = step_counts(schedule_index, rule, j, B, L, V, backend)
    kmax = int(counts.max())
    hist = torch.bincount(counts.to(torch.int64), minlength=kmax + 2)
    k = torch.arange(len(hist))
    pmf = torch.tensor(stats.poisson.pmf(k.numpy(), lam), dtype=torch.float64)
    pmf[-1] = stats.poisson.sf(len(hist) - 2, lam)  # the last cell: everything above
    assert gof_pvalue(hist, pmf) > P_FAIL
    if lam >= 0.5 and len(counts) >= 50000:
        wrong = torch.tensor(stats.poisson.pmf(k.numpy(), 1.1 * lam), dtype=torch.float64)
        wrong[-1] = stats.poisson.sf(len(hist) - 2, 1.1 * lam)
        assert gof_pvalue(hist, wrong) < P_FAIL
    # the decision rule, exactly
    assert torch.equal(unmasked, counts == 1 if rule == "reject" else counts >= 1)
    q = float(unmask_probs(schedule, POISSON_TIMES, rule)[j])
    assert q == pytest.approx(lam * math.exp(-lam) if rule == "reject" else 1 - math.exp(-lam), rel=1e-12)
    assert binom_pvalue(int(unmasked.sum()), len(unmasked), q) > P_FAIL


@pytest.mark.parametrize("schedule_index,j", POISSON_CASES)
def test_tweedie_unmask_is_bernoulli_p(schedule_index, j):
    """tweedie: K is the Bernoulli(p_j) indicator, p_j = (alpha(t_{j+1}) - alpha(t_j)) / (1 - alpha(t_j)),
    over 50000 positions (binomial test, false-failure rate 1e-4); power: p_j +- 5% is rejected."""
    schedule = POISSON_SCHEDULES[schedule_index]
    counts, unmasked = step_counts(schedule_index, "tweedie", j)
    assert set(counts.unique().tolist()) <= {0, 1}
    assert torch.equal(unmasked, counts == 1)
    t0, t1 = POISSON_TIMES[j], POISSON_TIMES[j + 1]
    p = float((schedule.alpha(t1) - schedule.alpha(t0)) / (1 - schedule.alpha(t0)))
    assert p == pytest.approx(float(unmask_probs(schedule, POISSON_TIMES, "tweedie")[j]), rel=1e-12)
    n, k = len(unmasked), int(unmasked.sum())
    assert binom_pvalue(k, n, p) > P_FAIL
    if 0.1 < p < 0.9:
        assert binom_pvalue(k, n, 1.05 * p) < P_FAIL and binom_pvalue(k, n, 0.95 * p) < P_FAIL


def test_score_counts_follow_the_same_poisson_law():
    """Score parametrization: lambda = rate[j] * sum_v exp(s_v) (rate = Delta sigma(t_j)); with
    ``s_v = log p_v + log(alpha / (1 - alpha))`` that is Delta r(t_j) again. Chi-square
    against Poisson(lambda) with 50000 counts (rate 1e-4), and the decision K == 1 (reject)."""
    schedule = Power(6.0)
    j, B, L, V, mask_id = 3, 500, 100, 4, 3
    tables = step_tables(schedule, POISSON_TIMES, "reject")
    t = POISSON_TIMES[j]
    a = schedule.alpha(t)
    probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    row = torch.cat([torch.log(probs) + torch.log(a / (1 - a)), torch.tensor([-math.inf], dtype=torch.float64)])
    logits = row.to(torch.float32).expand(1, L, V).contiguous()
    seeds = pit_sampler.sample_seeds(4321, B)
    x0 = all_masked(B, L, mask_id)
    states, counts, _, invalid = one_sweep(logits, j, x0, seeds, tables, mask_id, score=True)
    assert bool((invalid == 0).all())
    counts = counts[0].reshape(-1)
    lam = float((POISSON_TIMES[j] - POISSON_TIMES[j + 1]) * schedule.rate(t))
    hist = torch.bincount(counts.to(torch.int64))
    k = torch.arange(len(hist) + 1)
    pmf = torch.tensor(stats.poisson.pmf(k.numpy(), lam), dtype=torch.float64)
    pmf[-1] = stats.poisson.sf(len(hist) - 1, lam)
    assert gof_pvalue(torch.cat([hist, torch.zeros(1, dtype=hist.dtype)]), pmf) > P_FAIL
    assert torch.equal((states[0] != mask_id).reshape(-1), counts == 1)


# ---------------------------------------------------------------------------------------------
# 3. unmask_table
# ---------------------------------------------------------------------------------------------
TABLE_CASES = [
    ("loglinear", "geometric", 12, "reject"),
    ("loglinear", "geometric", 12, "first"),
    ("loglinear", "uniform", 12, "tweedie"),
    ("cosine", "geometric", 8, "first"),
    ("linear", "uniform", 5, "reject"),
]


@pytest.mark.parametrize("schedule,grid,N,rule", TABLE_CASES)
def test_unmask_step_distribution(schedule, grid, N, rule):
    """The unmask step of a masked position has P(j) = q_j prod_{i<j} (1 - q_i) (j < N) and
    P(N) = prod (1 - q_i): chi-square over the N + 1 steps from 40000 positions (rate 1e-4).
    Power: the law with q_j scaled by 1.1 is rejected."""
    sch = get_schedule(schedule)
    times = time_grid(N, grid)
    tables = step_tables(sch, times, rule)
    B, L, mask_id = 800, 50, 5
    table = ops.unmask_table(
        all_masked(B, L, mask_id), pit_sampler.sample_seeds(N, B), tables.cdf, mask_id, tables.rule
    )
    assert table.dtype == torch.int64 and table.shape == (B, L)
    assert int(table.min()) >= 0 and int(table.max()) <= N
    hist = torch.bincount(table.reshape(-1), minlength=N + 1)

    def law(q):
        surv = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - q[:-1]]), 0)
        return surv * q

    q = unmask_probs(sch, times, rule)
    assert float(law(q).sum()) == pytest.approx(1.0, abs=1e-12)
    assert gof_pvalue(hist, law(q)) > P_FAIL
    assert gof_pvalue(hist, law(torch.cat([(1.1 * q[:-1]).clamp(max=1), q[-1:]]))) < P_FAIL


@pytest.mark.parametrize("N", [1, 2, 7, 64])
@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "linear"])
def test_tweedie_unmask_time_is_exact_for_any_num_steps(schedule, N):
    """tweedie's survival prod_{i<j} (1 - p_i) telescopes to (1 - alpha(t_j)) / (1 - alpha(t_0)): the
    exact probability that a position masked at t_0 is still masked at t_j in the continuous-time
    process, whatever the grid. (The Poisson rules' exp(-sum lambda_i) is only a Riemann sum.)"""
    sch = get_schedule(schedule)
    for grid in ("uniform", "geometric"):
        times = time_grid(N, grid)
        p = unmask_probs(sch, times, "tweedie")[:-1]
        surv = torch.cumprod(1 - p, 0)
        exact = (1 - sch.alpha(times[1:])) / (1 - sch.alpha(times[0]))
        torch.testing.assert_close(surv, exact, rtol=1e-10, atol=1e-13)
    if N == 2 and schedule == "loglinear":
        q = unmask_probs(sch, times, "first")[:-1]
        assert float((torch.cumprod(1 - q, 0) - exact).abs().max()) > 1e-3


@pytest.mark.parametrize("rule", RULES)
def test_unmask_table_equals_step_by_step_sweeps(rule):
    """Exact (integers): the table is the first step whose sweep unmasks the position, -1 for
    positions that are not masked; also equal to one W = N + 1 sweep over all steps."""
    B, L, V, mask_id, N = 48, 20, 6, 4, 24
    sch = LogLinear()
    tables = step_tables(sch, time_grid(N, "geometric"), rule)
    g = torch.Generator().manual_seed(8)
    x0 = torch.where(torch.rand(B, L, generator=g) < 0.25, torch.randint(0, 4, (B, L), generator=g), mask_id)
    x0[0] = mask_id
    seeds = pit_sampler.sample_seeds(31, B)
    table = ops.unmask_table(x0, seeds, tables.cdf, mask_id, tables.rule)
    assert ops.last_backend("unmask_table") == "reference"
    assert torch.equal(table == -1, x0 != mask_id)
    logits = torch.randn(1, L, V, generator=g)
    loop = torch.full((B, L), -1, dtype=torch.int64)
    x = x0.clone()
    for j in range(N + 1):
        states, counts, _, _ = one_sweep(logits, j, x, seeds, tables, mask_id)
        new = states[0]
        newly = (x == mask_id) & (new != mask_id)
        loop[newly] = j
        assert bool((counts[0][x != mask_id] == 0).all())
        assert torch.equal(new[x != mask_id], x[x != mask_id])  # absorbing
        x = new
    assert not bool((x == mask_id).any())
    assert torch.equal(table, loop)
    # one window over every step
    W = N + 1
    steps = torch.arange(W).view(W, 1).expand(W, B).contiguous()
    states = ops.sweep(
        *full_form(logits, torch.zeros(W, B, dtype=torch.int64)),
        steps,
        x0,
        x0.expand(W, B, L).contiguous(),
        seeds,
        tables.cdf,
        tables.rate,
        mask_id,
        1.0,
        tables.rule,
    )[0]
    first = torch.where((states != mask_id) & (x0 == mask_id), torch.arange(W).view(W, 1, 1), W).min(0).values
    assert torch.equal(torch.where(x0 == mask_id, first, -1), table)
    assert torch.equal(states[-1], x)


# ---------------------------------------------------------------------------------------------
# 4. samplers against the oracles
# ---------------------------------------------------------------------------------------------
NUM_TOKENS, LENGTH = 4, 6
PAIR = (0, LENGTH - 1)  # the far-apart pair of positions whose joint is tested


@functools.cache
def oracle(name: str):
    return make_oracle(name, seed=0, num_tokens=NUM_TOKENS, length=LENGTH)


def codes(x: torch.Tensor) -> torch.Tensor:
    """Base-``NUM_TOKENS`` index of clean sequences, in the order of :func:`all_clean`."""
    return (x * NUM_TOKENS ** torch.arange(LENGTH - 1, -1, -1)).sum(-1)


@functools.lru_cache(maxsize=1)
def all_clean() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(NUM_TOKENS), repeat=LENGTH)), dtype=torch.int64)


@functools.cache
def oracle_probs(name: str) -> torch.Tensor:
    p = oracle(name).log_prob(all_clean()).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    return p


@functools.cache
def law_of(name: str) -> TauLeapingLaw:
    return TauLeapingLaw(oracle(name))


@functools.cache
def exact_law(name: str, rule: str, N: int, grid: str) -> torch.Tensor:
    law = law_of(name)
    assert torch.equal(law.p, oracle_probs(name))  # the law's sequences come in the order of all_clean()
    out = law.run(unmask_probs(LogLinear(), time_grid(N, grid), rule))
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-9)
    return out


class PerfectScoreModel:
    """SEDD-style log-scores of the oracle: ``s_v = log p(v | x) + log(alpha(t) / (1 - alpha(t)))``."""

    def __init__(self, orc, schedule: Schedule):
        self.oracle, self.schedule = orc, schedule

    def __call__(self, x, t):
        a = self.schedule.alpha(t.to(torch.float64))
        shift = torch.log(a / (1 - a)).to(torch.float32)
        return self.oracle(x, t) + shift.view(-1, 1, 1)


@functools.cache
def sampled(name: str, rule: str, N: int, grid: str, n: int, parametrization: str = "mean", seed: int = 0):
    orc = oracle(name)
    model = orc if parametrization == "mean" else PerfectScoreModel(orc, LogLinear())
    sampler = pit_sampler.TauLeapingSampler(
        model,
        mask_id=orc.mask_id,
        num_steps=N,
        rule=rule,
        grid=grid,
        schedule="loglinear",
        parametrization=parametrization,
    )
    result = sampler.sample(all_masked(n, LENGTH, orc.mask_id), seed=seed)
    tokens = result.tokens
    assert tokens.shape == (n, LENGTH) and int(tokens.min()) >= 0 and int(tokens.max()) < NUM_TOKENS
    return tokens


def pair_marginal(P: torch.Tensor) -> torch.Tensor:
    X = all_clean()
    idx = X[:, PAIR[0]] * NUM_TOKENS + X[:, PAIR[1]]
    return torch.zeros(NUM_TOKENS**2, dtype=torch.float64).index_add_(0, idx, P)


def pair_counts(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens[:, PAIR[0]] * NUM_TOKENS + tokens[:, PAIR[1]], minlength=NUM_TOKENS**2)


def loglik_z(name: str, tokens: torch.Tensor, P: torch.Tensor) -> tuple[float, float]:
    """``(z, d)``: the sample mean of the oracle log-likelihood against its exact mean under ``P``,
    in standard errors (``z``) and in standard deviations of log p under ``P`` (``d``)."""
    logp = torch.log(oracle_probs(name))
    mean = float((P * logp).sum())
    sd = float((P * (logp - mean) ** 2).sum().sqrt())
    got = float(oracle(name).log_prob(tokens).mean())
    return (got - mean) / (sd / math.sqrt(len(tokens))), (got - mean) / sd


def assert_matches(name: str, tokens: torch.Tensor, P: torch.Tensor, p_fail: float = P_FAIL, z_tol: float = Z_TOL):
    """Full-joint chi-square (4096 sequences, small cells pooled), chi-square of the far-apart pair,
    and the mean log-likelihood z-test, all against the law ``P``."""
    full = gof_pvalue(torch.bincount(codes(tokens), minlength=len(P)), P)
    pair = gof_pvalue(pair_counts(tokens), pair_marginal(P))
    z, _ = loglik_z(name, tokens, P)
    assert full > p_fail and pair > p_fail and abs(z) < z_tol, f"full p={full:.2e} pair p={pair:.2e} z={z:.2f}"


N_LAW = 3000

LAW_CASES = [
    # (oracle, parametrization, rule, num_steps, grid)
    ("mixture", "mean", "tweedie", 1, "geometric"),
    ("mixture", "mean", "tweedie", 4, "geometric"),
    ("mixture", "mean", "first", 2, "geometric"),
    ("mixture", "mean", "reject", 3, "uniform"),
    ("mixture", "score", "tweedie", 4, "geometric"),
    ("mixture", "score", "reject", 3, "uniform"),
    ("hmm", "mean", "tweedie", 4, "geometric"),
    ("hmm", "mean", "first", 2, "geometric"),
    ("hmm", "score", "tweedie", 4, "geometric"),
]


@pytest.mark.parametrize("name,parametrization,rule,N,grid", LAW_CASES)
def test_tau_leaping_matches_its_exact_law(name, parametrization, rule, N, grid):
    """For ANY grid the sampler's output is exactly the tau-leaping law (``TauLeapingLaw``):
    3000 samples; full-joint and pair chi-square (rate 1e-4 each), mean log-likelihood |z| < 4
    (rate 6.3e-5). These coarse grids are far from the oracle (see the next test), so this checks
    the sampler's mechanics (timing, conditioning on the pre-step state, independent draws within
    a step, final fill) with full power. The score rows use the perfect SEDD scores of the oracle."""
    tokens = sampled(name, rule, N, grid, N_LAW, parametrization)
    assert_matches(name, tokens, exact_law(name, rule, N, grid))


def test_coarse_grids_are_not_the_oracle_distribution():
    """Deterministic (exact laws): tau-leaping draws the positions that unmask in the same step
    independently, so on dependent oracles a coarse grid is NOT the oracle distribution, for every
    rule including tweedie (whose unmask *timing* is exact for any grid, but not the joint draw);
    the error shrinks as the grid is refined. Total variation distances to the oracle:
    mixture tweedie N = 1: 0.76, N = 4: 0.66, N = 16 (uniform): 0.06; uniform N = 256: 0.004."""
    for name in ("mixture", "hmm"):
        p = oracle_probs(name)
        tv = [
            0.5 * float((exact_law(name, "tweedie", N, grid) - p).abs().sum())
            for N, grid in ((1, "geometric"), (4, "geometric"), (16, "uniform"))
        ]
        assert tv[0] > 0.3 and tv[0] > tv[1] > tv[2]
    ind = make_oracle("independent", seed=0, num_tokens=NUM_TOKENS, length=LENGTH)
    P = TauLeapingLaw(ind).run(unmask_probs(LogLinear(), time_grid(1), "first"))
    # without dependence every grid is exact
    torch.testing.assert_close(P, ind.log_prob(all_clean()).exp(), rtol=1e-9, atol=1e-12)


def test_coarse_run_is_measurably_off():
    """Power of the oracle tests: 2 steps of rule 'first' on the mixture oracle (exact TV to the
    oracle 0.52) is rejected by the full-joint and pair chi-squares (p < 1e-4) and its mean
    log-likelihood is more than 10 standard errors below the oracle's (exact gap: 38 SE at n = 3000)."""
    name = "mixture"
    tokens = sampled(name, "first", 2, "geometric", N_LAW)
    p = oracle_probs(name)
    assert gof_pvalue(torch.bincount(codes(tokens), minlength=len(p)), p) < P_FAIL
    assert gof_pvalue(pair_counts(tokens), pair_marginal(p)) < P_FAIL
    z, _ = loglik_z(name, tokens, p)
    assert z < -10


N_ORACLE = 2000
Z_TOL_BIASED = 4.5  # z-tests against the oracle, where the exact law is slightly biased


@pytest.mark.parametrize("name,N", [("mixture", 256), ("hmm", 128)])
def test_tweedie_many_steps_matches_oracle(name, N):
    """tweedie on a fine uniform grid, 2000 samples, against the oracle itself: full-joint and pair
    chi-square (p > 1e-4), mean log-likelihood |z| < 4.5. The exact law's residual bias (computed
    with ``TauLeapingLaw``: TV 0.0039 mixture N=256 / 0.0033 hmm N=128; mean log p 0.58 / 0.24 SE
    low; chi-square noncentralities pair 0.20 / 0.01, full joint 0.37 / 0.05) puts the false-failure
    rates at 1.2e-4 / 1.0e-4 (pair), 1.3e-4 / 1.0e-4 (full joint) and 5e-5 / 1e-5 (z)."""
    tokens = sampled(name, "tweedie", N, "uniform", N_ORACLE, seed=1)
    assert_matches(name, tokens, oracle_probs(name), z_tol=Z_TOL_BIASED)


@pytest.mark.parametrize("name,rule", [("mixture", "reject"), ("hmm", "first")])
def test_poisson_rules_many_steps_close_to_oracle(name, rule):
    """reject / first, 256 geometric steps, 2000 samples against the oracle, with a looser stated
    tolerance: the left-Riemann rates of the geometric grid and the same-step independent draws
    leave an exact bias (TV 0.019 mixture / 0.006 hmm; mean log p 0.063 / 0.011 sd = 2.8 / 0.5 SE
    low; pair chi-square noncentrality 5.4 / 0.06). Tolerances: pair chi-square p > 1e-7
    (false-failure rate 2.4e-5 mixture, 1.1e-7 hmm); mean log p within 4 SE + 0.1 sd (rate < 1e-7)."""
    tokens = sampled(name, rule, 256, "geometric", N_ORACLE, seed=2)
    p = oracle_probs(name)
    assert gof_pvalue(pair_counts(tokens), pair_marginal(p)) > 1e-7
    z, d = loglik_z(name, tokens, p)
    assert abs(d) < Z_TOL / math.sqrt(len(tokens)) + 0.1, f"z={z:.2f} d={d:.3f}"


def test_score_parametrization_matches_oracle():
    """Perfect SEDD scores ``s_v = log p(v | x) + log(alpha(t) / (1 - alpha(t)))``, tweedie, 16 uniform
    steps (no skip-inactive with scores: 17 rounds), 2000 samples on the hmm oracle:

    * against the exact tau-leaping law of that grid (nominal rates: 1e-4, 1e-4, 6.3e-5), and that
      law is within TV 0.03 of the oracle (deterministic; exactly 0.026);
    * directly against the oracle, the pair chi-square (noncentrality 0.62: rate 1.8e-4).
    (``test_tau_leaping_matches_its_exact_law`` covers score tweedie/reject on coarse grids, and the
    next test shows the score path reproduces the mean path sample by sample.)"""
    name = "hmm"
    tokens = sampled(name, "tweedie", 16, "uniform", N_ORACLE, "score", seed=3)
    law = exact_law(name, "tweedie", 16, "uniform")
    assert_matches(name, tokens, law)
    p = oracle_probs(name)
    assert 0.5 * float((law - p).abs().sum()) < 0.03
    assert gof_pvalue(pair_counts(tokens), pair_marginal(p)) > P_FAIL


@pytest.mark.parametrize("rule,N", [("tweedie", 4), ("reject", 3)])
def test_score_and_mean_parametrizations_agree_sample_by_sample(rule, N):
    """With perfect scores the score path computes the same process from the same noise: the same
    unmask decisions (integer thresholds vs float32 CDFs differ only within ~1e-7 of a threshold)
    and the same Gumbel-max tokens (the score rows are the mean logits plus a constant per row, so
    only float32 near-ties can differ). So nearly every sample is identical for the same seed."""
    grid = "geometric" if rule == "tweedie" else "uniform"
    for name in ("mixture", "hmm") if rule == "tweedie" else ("mixture",):
        a = sampled(name, rule, N, grid, N_LAW, "mean")
        b = sampled(name, rule, N, grid, N_LAW, "score")
        same = float((a == b).all(1).to(torch.float64).mean())
        assert same > 0.99, f"{name}: only {same:.4f} of the samples agree"
