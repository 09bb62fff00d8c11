"""PIT with tol=0 equals sequential tau-leaping, bit for bit; skip-inactive changes no token.

Also checks both against a naive step-by-step sampler written here from the spec's formulas (float64
Poisson CDFs, not the integer tables of ``rules.py``), so the samplers are not only equal to each other.
"""
import math

import pytest
import torch

import pit_sampler as ps
from pit_sampler import noise
from pit_sampler.testing import make_oracle
from tiers import tiered

NUM_STEPS = 24
WINDOWS = (1, 2, 7, 64, NUM_STEPS + 9, "auto")  # 64 and NUM_STEPS + 9 exceed the number of steps
SEEDS = (0, 12345)


def _x_init(oracle, batch, prompt, seed):
    x = torch.full((batch, oracle.length), oracle.mask_id)
    if prompt:  # a prefix prompt in one sample, scattered infilling context in another
        g = torch.Generator().manual_seed(seed)
        truth = oracle.sample(batch, g)
        x[0, :3] = truth[0, :3]
        keep = torch.rand(oracle.length, generator=g) < 0.4
        x[-1, keep] = truth[-1, keep]
    return x


def _naive_steps(x, seed, times, mask_id):
    """The spec's loop: for each step ``j = 0..N`` at which ``x`` (updated in place by the caller)
    still has a mask, ``(j, masked [B, L], u [B, L])`` with ``u`` the float64 jump uniform of
    (seed, step, position); also returns the per-sample seeds."""
    seeds = noise.sample_seeds(seed, x.shape[0])
    positions = torch.arange(x.shape[1])

    def steps():
        for j in range(len(times)):
            masked = x == mask_id
            if masked.any():
                yield j, masked, (noise.jump_bits(seeds[:, None], torch.tensor(j), positions[None]).double() + 0.5) / 2**32

    return seeds, steps()


def naive_tau_leaping(denoiser, x, seed, schedule, times, rule, mask_id, temperature=1.0, final="sample"):
    """The spec, literally: every step in order for the whole batch, float64 rule probabilities."""
    x = x.clone()
    B, N = x.shape[0], len(times) - 1
    seeds, steps = _naive_steps(x, seed, times, mask_id)
    for j, masked, u in steps:
        if j == N:
            go = masked
        elif rule == "tweedie":
            a_now, a_next = schedule.alpha(times[j]), schedule.alpha(times[j + 1])
            go = masked & (u > 1 - (a_next - a_now) / (1 - a_now))
        else:
            lam = float((times[j] - times[j + 1]) * schedule.rate(times[j]))
            p0, p1 = math.exp(-lam), math.exp(-lam) * (1 + lam)
            go = masked & ((u > p0) & (u <= p1) if rule == "reject" else (u > p0))
        if not go.any():
            continue
        inv_t = torch.tensor(1.0) / torch.tensor(temperature) if temperature > 0 else 1.0  # a float32 multiply
        logits = denoiser(x, torch.full((B,), float(times[j]))).float() * inv_t
        bb, ll = go.nonzero(as_tuple=True)
        rows = logits[bb, ll]
        if not (j == N and final == "argmax") and temperature > 0:  # temperature 0: greedy
            vocab = torch.arange(rows.shape[1])
            bits = noise.gumbel_bits(seeds[bb, None], torch.tensor(j), ll[:, None], vocab)
            rows = rows + noise.gumbel_from_bits(bits)
        rows[:, mask_id] = float("-inf")
        x[bb, ll] = rows.argmax(1)
    return x


@pytest.fixture(scope="module", params=["mixture", "hmm"])
def oracle(request):
    return make_oracle(request.param, seed=3, num_tokens=5, length=10)


@pytest.mark.parametrize("schedule", ["loglinear", "linear", "cosine"])
@pytest.mark.parametrize("grid", ["uniform", "geometric"])
@pytest.mark.parametrize("rule", ["reject", "first", "tweedie"])
def test_pit_equals_sequential(oracle, rule, grid, schedule):
    kw = dict(mask_id=oracle.mask_id, num_steps=NUM_STEPS, rule=rule, grid=grid, schedule=schedule)
    for seed in SEEDS:
        for prompt in (False, True):
            x = _x_init(oracle, 3, prompt, seed)
            seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=seed)
            assert not (seq.tokens == oracle.mask_id).any()
            if prompt:
                kept = x != oracle.mask_id
                assert torch.equal(seq.tokens[kept], x[kept])
            dense = ps.TauLeapingSampler(oracle, skip_inactive=False, **kw).sample(x, seed=seed)
            assert torch.equal(dense.tokens, seq.tokens)
            probe = int(prompt)  # learning V before the model sees prompt ids costs one counted call
            assert dense.rounds == NUM_STEPS + 1 + probe >= seq.rounds
            naive = naive_tau_leaping(oracle, x, seed, ps.get_schedule(schedule), ps.time_grid(NUM_STEPS, grid), rule,
                                      oracle.mask_id)
            assert torch.equal(naive, seq.tokens)
            for window in WINDOWS:
                for skip in (True, False) if window in (1, 7) else (True,):
                    pit = ps.PITSampler(oracle, window=window, skip_inactive=skip, **kw).sample(x, seed=seed)
                    assert torch.equal(pit.tokens, seq.tokens), (window, skip, seed, prompt)
                    assert pit.exact
                    assert pit.rounds <= (seq.rounds if skip else dense.rounds)


def naive_score_tau_leaping(scores, x, seed, schedule, times, rule, mask_id):
    """The spec's score parametrization, literally (float64): at step ``j`` a masked position's jump
    count is Poisson with mean ``Delta_j sigma(t_j) sum_{v != mask} exp(s_v)`` (``reject``: unmask iff
    ``K == 1``; ``first``: iff ``K >= 1``), or, for ``tweedie``, it unmasks with probability
    ``min(1, (alpha(t_{j+1}) / alpha(t_j) - 1) sum_v exp(s_v))``; the token is Gumbel-max over ``s``."""
    x = x.clone()
    B, N = x.shape[0], len(times) - 1
    seeds, steps = _naive_steps(x, seed, times, mask_id)
    for j, masked, u in steps:
        s = scores(x, torch.full((B,), float(times[j]))).float()
        s[:, :, mask_id] = float("-inf")
        total = torch.exp(torch.logsumexp(s.double(), -1))
        if j == N:
            go = masked
        elif rule == "tweedie":
            p = (schedule.alpha(times[j + 1]) / schedule.alpha(times[j]) - 1) * total
            go = masked & (u > 1 - p.clamp(max=1.0))
        else:
            lam = (times[j] - times[j + 1]) * schedule.sigma(times[j]) * total
            p0, p1 = torch.exp(-lam), torch.exp(-lam) * (1 + lam)
            go = masked & ((u > p0) & (u <= p1) if rule == "reject" else (u > p0))
        bb, ll = go.nonzero(as_tuple=True)
        vocab = torch.arange(s.shape[2])
        rows = s[bb, ll] + noise.gumbel_from_bits(noise.gumbel_bits(seeds[bb, None], torch.tensor(j), ll[:, None], vocab))
        x[bb, ll] = rows.argmax(1)
    return x


@pytest.mark.parametrize("window", [1, 3, 40])
def test_score_parametrization_pit_equals_sequential_and_the_spec(window):
    oracle = make_oracle("mixture", seed=1, num_tokens=4, length=8)
    sched = ps.LogLinear()

    def scores(x, t):  # a perfect SEDD-style log-score model: s_v = log p(v | x) + log(alpha / (1 - alpha))
        a = sched.alpha(t.double()).float()
        return oracle(x, t) + torch.log(a / (1 - a))[:, None, None]

    for rule in ("reject", "first", "tweedie"):
        kw = dict(mask_id=oracle.mask_id, num_steps=16, rule=rule, parametrization="score")
        x = _x_init(oracle, 4, True, 7)
        seq = ps.TauLeapingSampler(scores, **kw).sample(x, seed=5)
        pit = ps.PITSampler(scores, window=window, **kw).sample(x, seed=5)
        naive = naive_score_tau_leaping(scores, x, 5, sched, ps.time_grid(16), rule, oracle.mask_id)
        assert torch.equal(seq.tokens, naive), rule
        assert torch.equal(seq.tokens, pit.tokens)
        assert seq.rounds == 17 + 1  # every step, plus the vocabulary probe (x holds a prompt)


TEMPERATURE_CASES = [(f, T, b) for f in ("sample", "argmax") for T in (0.7, 0.0) for b in ps.ops.available_backends("cpu")]


@pytest.mark.parametrize("final,temperature,backend", tiered(
    TEMPERATURE_CASES, default={c for c in TEMPERATURE_CASES if c[2] != "triton"} | {("argmax", 0.0, "triton")}))
def test_temperature_and_final_rule(final, temperature, backend):
    """Temperature as a float32 multiply; ``temperature=0`` is greedy (argmax, no noise) everywhere."""
    oracle = make_oracle("hmm", seed=2, num_tokens=6, length=9)
    kw = dict(mask_id=oracle.mask_id, num_steps=8, rule="first", temperature=temperature, final=final, grid="uniform")
    x = _x_init(oracle, 5, False, 0)
    with ps.ops.use_backend(backend):
        seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=9)
        pit = ps.PITSampler(oracle, window=4, **kw).sample(x, seed=9)
    naive = naive_tau_leaping(oracle, x, 9, ps.LogLinear(), ps.time_grid(8, "uniform"), "first", oracle.mask_id,
                              temperature=temperature, final=final)
    assert torch.equal(seq.tokens, pit.tokens) and torch.equal(seq.tokens, naive)


@pytest.mark.parametrize("backend", ps.ops.available_backends("cpu"))
def test_logits_that_overflow_when_scaled_raise_instead_of_drawing_the_mask(backend):
    """Finite logits times 1/T overflow to +inf at T = 1e-30: an invalid row, in every backend (it used
    to pick index 0, which may be the mask)."""
    def huge(x, t):
        g = torch.Generator().manual_seed(x.shape[0])
        return torch.rand(x.shape[0], x.shape[1], 4, generator=g) * 1e10

    with ps.ops.use_backend(backend), pytest.raises(ValueError, match="NaN/inf"):
        ps.TauLeapingSampler(huge, mask_id=0, num_steps=8, temperature=1e-30).sample(torch.zeros(2, 5, dtype=torch.long))


def test_pit_needs_far_fewer_rounds_on_dependent_oracles():
    for name in ("mixture", "hmm"):
        oracle = make_oracle(name, seed=0, num_tokens=8, length=64)
        kw = dict(mask_id=oracle.mask_id, num_steps=256)
        x = torch.full((4, oracle.length), oracle.mask_id)
        seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=0)
        pit = ps.PITSampler(oracle, window=32, **kw).sample(x, seed=0)
        assert torch.equal(seq.tokens, pit.tokens)
        # sequential needs one round per active step (about L of them); PIT converges a window in a few sweeps
        assert pit.rounds * 3 <= seq.rounds, (name, seq.rounds, pit.rounds)


def test_approximate_modes_report_it():
    oracle = make_oracle("mixture", seed=0, num_tokens=5, length=12)
    kw = dict(mask_id=oracle.mask_id, num_steps=32)
    x = torch.full((2, oracle.length), oracle.mask_id)
    seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=1)
    fixed_full = ps.PITSampler(oracle, window=4, mode="fixed", max_iters=4, **kw).sample(x, seed=1)
    assert fixed_full.exact and torch.equal(fixed_full.tokens, seq.tokens)
    fixed_one = ps.PITSampler(oracle, window=8, mode="fixed", max_iters=1, **kw).sample(x, seed=1)
    loose = ps.PITSampler(oracle, window=8, tol=0.5, **kw).sample(x, seed=1)
    for r in (fixed_one, loose):
        assert not r.exact
        assert not (r.tokens == oracle.mask_id).any()
    assert fixed_one.rounds < seq.rounds


def test_seed_tensor_makes_samples_slot_independent():
    oracle = make_oracle("hmm", seed=4, num_tokens=5, length=10)
    kw = dict(mask_id=oracle.mask_id, num_steps=16)
    seeds = torch.tensor([11, 22, 33], dtype=torch.int64)
    x = torch.full((3, oracle.length), oracle.mask_id)
    full = ps.PITSampler(oracle, window=5, **kw).sample(x, seed=seeds)
    alone = ps.TauLeapingSampler(oracle, **kw).sample(x[1:2], seed=seeds[1:2])
    assert torch.equal(full.tokens[1], alone.tokens[0])
    again = ps.PITSampler(oracle, window=5, **kw).sample(x, seed=seeds)
    assert torch.equal(full.tokens, again.tokens)
    other = ps.PITSampler(oracle, window=5, **kw).sample(x, seed=seeds + 1)
    assert not torch.equal(full.tokens, other.tokens)


@pytest.mark.parametrize("max_rows", [1, 3, 5, 13])
@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
def test_max_rows_caps_every_call_and_keeps_exactness(cls, max_rows):
    """``max_rows`` is a hard cap on the rows of every denoiser call, also with more unfinished samples
    than ``max_rows`` (B = 5 > 1, 3); ``rounds`` counts the calls."""
    oracle = make_oracle("mixture", seed=5, num_tokens=5, length=12)
    kw = dict(mask_id=oracle.mask_id, num_steps=40, vocab_size=oracle.mask_id + 1)
    calls = []

    def recorded(x, t):
        calls.append(x.shape[0])
        return oracle(x, t)

    x = _x_init(oracle, 5, True, 2)
    seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=4)
    extra = dict(window=16) if cls is ps.PITSampler else {}
    capped = cls(recorded, max_rows=max_rows, **extra, **kw).sample(x, seed=4)
    assert torch.equal(seq.tokens, capped.tokens)
    assert max(calls) <= max_rows and capped.rounds == len(calls)
    assert sum(calls) == capped.nfe * x.shape[0]


@pytest.mark.parametrize("backend", ps.ops.available_backends("cpu"))
def test_every_backend_pit_equals_sequential_and_the_reference(backend):
    """Exactness through each CPU backend (reference, native when built, triton under the interpreter),
    and every backend's tokens equal the reference backend's for the same seed."""
    oracle = make_oracle("hmm", seed=6, num_tokens=7, length=11)
    kw = dict(mask_id=oracle.mask_id, num_steps=32, rule="reject")
    x = _x_init(oracle, 3, True, 1)
    with ps.ops.use_backend("reference"):
        expect = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=21).tokens
    with ps.ops.use_backend(backend):
        seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=21)
        assert ps.ops.last_backend() == backend
        pit = ps.PITSampler(oracle, window=6, **kw).sample(x, seed=21)
    assert torch.equal(seq.tokens, pit.tokens) and torch.equal(seq.tokens, expect)


NEVER_FAILS = [(w, b) for w in (2, 8, 64) for b in ps.ops.available_backends("cpu")]


@pytest.mark.parametrize("window,backend", tiered(NEVER_FAILS, default={c for c in NEVER_FAILS if c[1] != "triton"}
                                                  | {(8, "triton")}))
def test_pit_never_fails_where_sequential_succeeds(window, backend):
    """A denoiser that returns NaN on every state the sequential chain never visits: PIT evaluates such
    guessed states inside its windows, but only rows of slices it accepts as exact may raise."""
    oracle = make_oracle("hmm", seed=8, num_tokens=6, length=10)
    kw = dict(mask_id=oracle.mask_id, num_steps=32, vocab_size=oracle.mask_id + 1)
    visited = set()

    def recording(x, t):
        visited.update(map(tuple, x.tolist()))
        return oracle(x, t)

    x = _x_init(oracle, 3, True, 4)
    with ps.ops.use_backend(backend):
        seq = ps.TauLeapingSampler(recording, **kw).sample(x, seed=2)
    off_path = []

    def poisoned(x, t):
        out = oracle(x, t).clone()
        off = torch.tensor([tuple(row) not in visited for row in x.tolist()])
        out[off] = float("nan")
        off_path.append(int(off.sum()))
        return out

    with ps.ops.use_backend(backend):
        pit = ps.PITSampler(poisoned, window=window, **kw).sample(x, seed=2)
    assert sum(off_path) > 0  # the test exercises what it claims
    assert torch.equal(pit.tokens, seq.tokens)


def test_nan_on_the_sequential_path_still_raises_in_pit():
    oracle = make_oracle("hmm", seed=8, num_tokens=6, length=10)
    kw = dict(mask_id=oracle.mask_id, num_steps=32, vocab_size=oracle.mask_id + 1)
    calls = [0]

    def poisoned_later(x, t):  # fine for the first calls, then NaN everywhere (on the path too)
        calls[0] += 1
        out = oracle(x, t).clone()
        if calls[0] > 2:
            out[:] = float("nan")
        return out

    x = _x_init(oracle, 3, False, 4)
    with pytest.raises(ValueError, match=r"NaN/inf .* sample \d, step \d+"):
        ps.PITSampler(poisoned_later, window=8, **kw).sample(x, seed=2)
