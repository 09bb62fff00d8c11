"""The oracles of ``pit_sampler.testing`` against brute-force enumeration.

Every oracle is checked on tiny ``(num_tokens, length)`` where all ``K**L`` sequences (and, for the
HMM, all ``S**L`` hidden paths) can be enumerated from the model's parameters directly, without
going through the oracle's own inference code:

* ``conditionals(x)`` equals ``p(x_i = v | x_O)`` summed out of the enumerated joint, for random
  observed subsets ``O`` (float64, to 1e-10);
* ``log_prob`` equals the enumerated joint, and ``sum_x exp(log_prob(x)) = 1`` (to 1e-12);
* ``sample(n)`` frequencies match ``exp(log_prob)``: chi-square over all sequences (cells with an
  expected count below 5 merged), rejected at p < 1e-4 (the false-failure rate of each such test);
* ``__call__`` is a batch-invariant (bitwise) float32 denoiser with ``-inf`` on the mask column;
* bad inputs raise ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy import stats

from pit_sampler.testing import ORACLES, HMMOracle, IndependentOracle, MixtureOracle, make_oracle

P_FAIL = 1e-4  # per statistical test: probability of a false failure under the null


# ---------------------------------------------------------------------------------------------
# brute force from the parameters
# ---------------------------------------------------------------------------------------------
def all_sequences(K: int, L: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K), repeat=L)), dtype=torch.int64).view(-1, L)


def brute_joint(oracle) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Y [K**L, L], P [K**L])``: every clean sequence and its probability, from the parameters."""
    K, L = oracle.num_tokens, oracle.length
    Y = all_sequences(K, L)
    pos = torch.arange(L)
    if isinstance(oracle, IndependentOracle):
        P = oracle.probs[pos, Y].prod(-1)
    elif isinstance(oracle, MixtureOracle):
        w, p = oracle.log_w.exp(), oracle.log_p.exp()  # [C], [C, L, K]
        P = (w[:, None] * p[:, pos, Y].prod(-1)).sum(0)  # p[:, pos, Y]: [C, K**L, L]
    elif isinstance(oracle, HMMOracle):
        S = oracle.pi.shape[0]
        Z = all_sequences(S, L)  # every hidden path
        pz = oracle.pi[Z[:, 0]] * oracle.A[Z[:, :-1], Z[:, 1:]].prod(-1)  # [S**L]
        emit = oracle.B[Z[:, None, :], Y[None, :, :]].prod(-1)  # [S**L, K**L]
        P = (pz[:, None] * emit).sum(0)
    else:
        raise TypeError(f"unknown oracle {type(oracle).__name__}")
    return Y, P


def brute_conditionals(oracle, x: torch.Tensor) -> torch.Tensor:
    """``p(x_i = v | x_O)`` ``[n, L, K]`` summed out of the enumerated joint (point masses on ``O``)."""
    Y, P = brute_joint(oracle)
    K = oracle.num_tokens
    observed = x != oracle.mask_id
    match = ((Y[None] == x[:, None]) | ~observed[:, None]).all(-1).to(torch.float64)  # [n, K**L]
    onehot = torch.nn.functional.one_hot(Y, K).to(torch.float64)  # [K**L, L, K]
    num = torch.einsum("ns,s,slk->nlk", match, P, onehot)
    return num / num.sum(-1, keepdim=True)


def random_partial(oracle, n: int, seed: int, p_mask: float = 0.5) -> torch.Tensor:
    """Random clean tokens with a random subset masked; the first row all masked, the second all clean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, oracle.num_tokens, (n, oracle.length), generator=g)
    x = torch.where(torch.rand(n, oracle.length, generator=g) < p_mask, oracle.mask_id, x)
    x[0] = oracle.mask_id
    x[1] = torch.randint(0, oracle.num_tokens, (oracle.length,), generator=g)
    return x


def own_params_oracle(name: str, K: int, L: int, seed: int):
    """Oracles built through the constructors from parameters drawn here (not via ``.random``)."""
    g = torch.Generator().manual_seed(seed)

    def simplex(*shape):
        v = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.05
        return v / v.sum(-1, keepdim=True)

    if name == "independent":
        return IndependentOracle(simplex(L, K))
    if name == "mixture":
        return MixtureOracle(simplex(3), simplex(3, L, K))
    S = 3
    return HMMOracle(simplex(S), simplex(S, S), simplex(S, K), L)


SHAPES = [(3, 4), (2, 5), (4, 3), (3, 1)]
NAMES = sorted(ORACLES)


def oracles_for_tests():
    for name in NAMES:
        for K, L in SHAPES:
            for seed in (0, 1):
                yield pytest.param(name, K, L, seed, "random", id=f"{name}-K{K}-L{L}-s{seed}")
        yield pytest.param(name, 3, 4, 5, "own", id=f"{name}-own-params")


def build(name, K, L, seed, how):
    return (
        make_oracle(name, seed=seed, num_tokens=K, length=L) if how == "random" else own_params_oracle(name, K, L, seed)
    )


# ---------------------------------------------------------------------------------------------
# exactness against enumeration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,K,L,seed,how", list(oracles_for_tests()))
def test_conditionals_equal_brute_force(name, K, L, seed, how):
    oracle = build(name, K, L, seed, how)
    assert oracle.mask_id == K and oracle.vocab_size == K + 1
    x = random_partial(oracle, 40, seed=100 + seed)
    got = oracle.conditionals(x)
    assert got.dtype == torch.float64 and got.shape == (40, L, K)
    want = brute_conditionals(oracle, x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    # observed positions: a point mass on their token
    observed = x != oracle.mask_id
    assert torch.equal(got[observed], torch.nn.functional.one_hot(x[observed], K).to(torch.float64))


@pytest.mark.parametrize("name,K,L,seed,how", list(oracles_for_tests()))
def test_log_prob_equals_brute_force_and_normalises(name, K, L, seed, how):
    oracle = build(name, K, L, seed, how)
    Y, P = brute_joint(oracle)
    lp = oracle.log_prob(Y)
    assert lp.dtype == torch.float64 and lp.shape == (len(Y),)
    torch.testing.assert_close(lp, torch.log(P), rtol=1e-10, atol=1e-10)
    assert float(torch.logsumexp(lp, 0).exp()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 39, 154])
def test_log_prob_normalises_default_oracles(name, seed):
    """sum over all K**L sequences of exp(log_prob) = 1, for ``make_oracle`` at its default settings
    (seeds 39 and 154 are ones where a Dirichlet draw falls below the oracles' probability floor)."""
    K, L = (3, 4) if seed != 154 else (4, 4)
    oracle = make_oracle(name, seed=seed, num_tokens=K, length=L)
    lp = oracle.log_prob(all_sequences(K, L))
    assert float(torch.logsumexp(lp, 0).exp()) == pytest.approx(1.0, abs=1e-12)
    # masked positions of the all-masked row: each conditional sums to 1
    c = oracle.conditionals(torch.full((1, L), oracle.mask_id))
    torch.testing.assert_close(c.sum(-1), torch.ones(1, L, dtype=torch.float64), rtol=0, atol=1e-12)


def test_independent_oracle_marginals_sum_to_one():
    """``IndependentOracle.random`` clamps its Dirichlet draws at 1e-6 and must renormalise (as
    ``MixtureOracle.random`` and ``HMMOracle.random`` do), or ``log_prob`` does not normalise and
    ``sample`` (multinomial renormalises) disagrees with ``exp(log_prob)``."""
    bad = {}
    for seed in range(100):
        oracle = make_oracle("independent", seed=seed)
        err = float((oracle.probs.sum(-1) - 1).abs().max())
        if err > 1e-12:
            bad[seed] = err
    assert not bad, f"rows of IndependentOracle.random(seed=...).probs do not sum to 1: {bad}"


def chi_square_sequences(samples: torch.Tensor, probs: torch.Tensor, K: int) -> float:
    """p-value of a chi-square GOF over all sequences (index base K), cells with expected < 5 merged."""
    L = samples.shape[1]
    codes = (samples * K ** torch.arange(L - 1, -1, -1)).sum(1)
    observed = torch.bincount(codes, minlength=K**L).to(torch.float64)
    expected = probs * len(samples)
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    if float(exp[-1]) < 5:  # fold a tiny rest bin into the smallest cell
        i = int(exp[:-1].argmin())
        obs[i] += obs[-1]
        exp[i] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * (obs.sum() / exp.sum())  # exact totals for scipy (probs sum to 1 to rounding)
    return float(stats.chisquare(obs.numpy(), exp.numpy()).pvalue)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("K,L", [(3, 4), (4, 3)])
def test_sample_frequencies_match_log_prob(name, K, L):
    """Chi-square over all K**L sequences, n = 20000, reject at p < 1e-4 (false-failure rate 1e-4)."""
    oracle = make_oracle(name, seed=3, num_tokens=K, length=L)
    n = 20000
    g = torch.Generator().manual_seed(2024)
    x = oracle.sample(n, generator=g)
    assert x.dtype == torch.int64 and x.shape == (n, L)
    assert int(x.min()) >= 0 and int(x.max()) < K
    probs = oracle.log_prob(all_sequences(K, L)).exp()
    assert chi_square_sequences(x, probs, K) > P_FAIL
    # and the power of that check: the product of the single-position marginals is rejected
    # for the dependent oracles (mixture, HMM)
    if name != "independent":
        marg = oracle.conditionals(torch.full((1, L), oracle.mask_id))[0]  # [L, K]
        Y = all_sequences(K, L)
        prod = marg[torch.arange(L), Y].prod(-1)
        assert chi_square_sequences(x, prod, K) < P_FAIL


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_reproducible_with_a_generator(name):
    oracle = make_oracle(name, seed=0, num_tokens=4, length=5)
    a = oracle.sample(50, generator=torch.Generator().manual_seed(1))
    b = oracle.sample(50, generator=torch.Generator().manual_seed(1))
    c = oracle.sample(50, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# the denoiser interface
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_denoiser_output_format(name):
    oracle = make_oracle(name, seed=4, num_tokens=5, length=7)
    x = random_partial(oracle, 30, seed=9)
    out = oracle(x, torch.rand(30))
    assert out.dtype == torch.float32 and out.shape == (30, 7, 6)
    assert bool((out[..., oracle.mask_id] == float("-inf")).all())
    masked = x == oracle.mask_id
    clean = out[..., : oracle.num_tokens]
    # masked positions: finite log-probabilities that normalise
    assert bool(torch.isfinite(clean[masked]).all())
    torch.testing.assert_close(torch.logsumexp(clean[masked], -1), torch.zeros(int(masked.sum())), rtol=0, atol=1e-5)
    # they are the float32 logs of the float64 conditionals
    torch.testing.assert_close(clean, torch.log(oracle.conditionals(x)).to(torch.float32), rtol=0, atol=0)
    # observed positions: 0 on their token, -inf elsewhere
    obs = ~masked
    hot = torch.nn.functional.one_hot(x[obs], oracle.num_tokens).bool()
    assert bool((clean[obs][hot] == 0).all()) and bool((clean[obs][~hot] == float("-inf")).all())
    # t is ignored (time-agnostic) and optional
    assert torch.equal(out, oracle(x)) and torch.equal(out, oracle(x, torch.zeros(30)))


@pytest.mark.parametrize("name", NAMES)
def test_denoiser_is_batch_invariant_bitwise(name):
    oracle = make_oracle(name, seed=5, num_tokens=6, length=9)
    x = random_partial(oracle, 64, seed=11)
    full = oracle(x)
    for i in (0, 1, 2, 17, 63):
        assert torch.equal(oracle(x[i : i + 1])[0], full[i])
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(oracle(x[perm]), full[perm])
    assert torch.equal(oracle(x[10:13]), full[10:13])
    # inside a much larger batch of other rows
    big = torch.cat([random_partial(oracle, 500, seed=12), x[5:6]])
    assert torch.equal(oracle(big)[-1], full[5])


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def _bad_inputs(oracle):
    L, V = oracle.length, oracle.vocab_size
    ok = torch.zeros(2, L, dtype=torch.int64)
    return [
        (ValueError, torch.zeros(2, L + 1, dtype=torch.int64)),  # wrong length
        (ValueError, torch.zeros(2, L - 1, dtype=torch.int64)),
        (ValueError, torch.zeros(L, dtype=torch.int64)),  # not [N, L]
        (ValueError, torch.zeros(1, 2, L, dtype=torch.int64)),
        (TypeError, ok.to(torch.float32)),  # float tokens
        (TypeError, ok.to(torch.float64)),
        (TypeError, ok.to(torch.bool)),
        (ValueError, torch.full((2, L), V)),  # ids out of range
        (ValueError, torch.full((2, L), -1)),
        (TypeError, ok.tolist()),  # not a tensor
    ]


@pytest.mark.parametrize("name", NAMES)
def test_denoiser_and_log_prob_reject_bad_input(name):
    oracle = make_oracle(name, seed=0, num_tokens=3, length=4)
    for exc, x in _bad_inputs(oracle):
        with pytest.raises(exc):
            oracle(x)
        with pytest.raises(exc):
            oracle.log_prob(x)
    # log_prob takes clean sequences only: the mask id is out of range there
    with pytest.raises(ValueError):
        oracle.log_prob(torch.full((1, 4), oracle.mask_id))


@pytest.mark.parametrize("name", NAMES)
def test_conditionals_reject_bad_input(name):
    """``conditionals`` is public API too: it must raise ValueError/TypeError, not return garbage
    (HMMOracle on a wrong-length x silently runs a shorter chain) or fail with an IndexError/RuntimeError."""
    oracle = make_oracle(name, seed=0, num_tokens=3, length=4)
    for exc, x in _bad_inputs(oracle):
        with pytest.raises(exc):
            oracle.conditionals(x)


def test_make_oracle_rejects_unknown_names_and_bad_sizes():
    with pytest.raises(ValueError):
        make_oracle("nope")
    for name in NAMES:
        with pytest.raises(ValueError):
            make_oracle(name, num_tokens=1, length=4)
        with pytest.raises(ValueError):
            make_oracle(name, num_tokens=3, length=0)
