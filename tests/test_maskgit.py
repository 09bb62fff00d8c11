"""MaskGITSampler (k-per-step unmasking), its fused op on every backend, and classifier-free guidance.

* Picard (``window > 1``, ``tol = 0``) equals the sequential sampler bit for bit, for every order and
  schedule, with and without blocks and prompts, for W in {2, 7, 64, more than the steps}.
* Every backend (native C++, Triton; the interpreter without a GPU) gives the reference's states,
  residuals and invalid counts on fresh random inputs (odd V, L = 1, B = 1, fp32/bf16/fp16, ties).
* Each step unmasks exactly ``k_j`` positions of its block; no mask is left.
* Random order with one position per step is an exact sampler of an oracle (chi-square).
"""

import pytest
import torch
from scipy import stats

import pit_sampler as ps
from pit_sampler import maskgit_ops, ops
from pit_sampler.steps.maskgit import block_counts, step_counts
from pit_sampler.maskgit_reference import ORDERS
from pit_sampler.testing import make_oracle

ORACLE = make_oracle("mixture", length=12, num_tokens=5)
MASK = ORACLE.mask_id
SCHEDULES = ("linear", "cosine")


def _x_init(B=3, L=12, prompt=0):
    x = torch.full((B, L), MASK)
    x[:, :prompt] = torch.arange(prompt) % 4
    return x


def _sampler(**kw):
    kw = {"mask_id": MASK, "num_steps": 6, **kw}
    return ps.MaskGITSampler(kw.pop("denoiser", ORACLE), **kw)


# -- exactness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("blocks,prompt", [(None, 0), (None, 4), (4, 0), (4, 4)])
def test_picard_equals_sequential(order, schedule, blocks, prompt):
    """Tokens identical for every window; with blocks, 12 - prompt masked positions split into blocks of 4."""
    x = _x_init(prompt=prompt)
    kw = dict(order=order, unmask_schedule=schedule, block_length=blocks)
    seq = _sampler(**kw).sample(x, seed=5)
    assert seq.rounds == 6 + (prompt > 0) and seq.exact  # a prompt costs one all-mask row: the vocabulary probe
    assert not bool((seq.tokens == MASK).any()) and torch.equal(seq.tokens[:, :prompt], x[:, :prompt])
    for window in (2, 7, 64, 9):
        pit = _sampler(window=window, **kw).sample(x, seed=5)
        assert torch.equal(pit.tokens, seq.tokens), window
        assert pit.exact and pit.rounds <= seq.rounds and len(pit.residuals) == pit.iterations == pit.rounds - (prompt > 0)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_picard_equals_sequential_other_temperatures_and_seeds(temperature):
    """Greedy and tempered draws, per-sample seeds (a sample does not depend on its batch slot)."""
    x = _x_init(B=4)
    seeds = torch.tensor([3, -7, 2**40, 11])
    kw = dict(order="confidence", temperature=temperature)
    seq = _sampler(**kw).sample(x, seed=seeds)
    assert torch.equal(_sampler(window=5, **kw).sample(x, seed=seeds).tokens, seq.tokens)
    assert torch.equal(_sampler(**kw).sample(x[[2, 0]], seed=seeds[[2, 0]]).tokens, seq.tokens[[2, 0]])


def test_max_rows_and_tolerance():
    """``max_rows`` shrinks the windows without changing tokens; ``tol > 0`` reports an approximate result."""
    x = _x_init()
    seq = _sampler(order="random").sample(x, seed=1)
    capped = _sampler(order="random", window=8, max_rows=6).sample(x, seed=1)
    assert torch.equal(capped.tokens, seq.tokens)
    loose = _sampler(order="random", window=8, tol=0.5).sample(x, seed=1)
    assert not loose.exact and not bool((loose.tokens == MASK).any())


def test_random_order_converges_in_fewer_rounds():
    """Random order does not depend on the model, so Picard needs far fewer sequential calls."""
    x = _x_init(B=2)
    pit = _sampler(order="random", num_steps=12, window=12).sample(x, seed=0)
    assert pit.rounds < 12 and pit.nfe > 12


# -- the schedule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,s", [(12, 6), (10, 4), (7, 7), (256, 16), (5, 1), (3, 8), (1, 5), (0, 4)])
def test_block_counts(n, s):
    """The counts sum to n; every step unmasks >= 1 when s <= n (LLaDA's schedule gives the extra steps
    of s > n nothing to do); linear is LLaDA's even split; cosine never grows back."""
    for schedule in SCHEDULES:
        k = block_counts(n, s, schedule)
        assert len(k) == s and sum(k) == n and min(k) >= (1 if s <= n else 0)
    assert block_counts(n, s, "linear") == [n // s + (i < n % s) for i in range(s)]
    assert block_counts(10, 4, "cosine") == [1, 2, 4, 3]


class _Recorder:
    """The oracle, recording the states the sampler evaluates it on."""

    def __init__(self):
        self.states = []

    def __call__(self, x, t):
        self.states.append(x.clone())
        return ORACLE(x, t)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_step_unmasks_exactly_k_in_its_block(schedule):
    x = _x_init(B=2, prompt=4)
    rec = _Recorder()
    out = _sampler(denoiser=rec, order="margin", unmask_schedule=schedule, block_length=4).sample(x, seed=2)
    kcount = torch.tensor([step_counts(8, 6, 4, schedule, b) for b in range(2)])  # 8 masked: 2 blocks, 3 steps each
    block_of = ((x == MASK).cumsum(1) - 1) // 4
    states = rec.states[1:] + [out.tokens]  # the first call is the vocabulary probe (a prompt)
    for j in range(6):
        newly = (states[j] == MASK) & (states[j + 1] != MASK)
        assert torch.equal(newly.sum(1), kcount[:, j])
        assert bool((block_of[newly] == j // 3).all())
        assert torch.equal(states[j + 1][states[j] != MASK], states[j][states[j] != MASK])
    assert not bool((out.tokens == MASK).any())


# -- the op on every backend ----------------------------------------------------------------------
def _random_case(W, B, L, V, dtype, seed, ties):
    g = torch.Generator().manual_seed(seed)
    mask_id = int(torch.randint(0, V, (1,), generator=g))
    x0 = torch.randint(0, V, (B, L), generator=g)
    x0[torch.rand(B, L, generator=g) < 0.7] = mask_id
    logits = torch.randn(W * B, L, V, generator=g) * 3
    logits = (logits.round() if ties else logits).to(dtype)  # rounded logits: many tied scores
    steps = torch.randint(0, 50, (W, B), generator=g)
    steps[0, 0] = -1 if W > 1 else steps[0, 0]
    return (
        logits, torch.randperm(W * B, generator=g).view(W, B), steps, x0,
        torch.randint(0, V, (W, B, L), generator=g), torch.randint(-(2**62), 2**62, (B,), generator=g),
        torch.randint(0, 4, (W, B), generator=g), torch.randint(0, 2, (W, B), generator=g),
        torch.where(x0 == mask_id, torch.randint(0, 2, (B, L), generator=g), -1), mask_id,
    )


def _run(backend, args, temperature, order):
    with ops.use_backend(backend):
        out = maskgit_ops.maskgit_sweep(*args, temperature, order)
    assert maskgit_ops.last_backend() == backend
    return out


def _assert_backend_matches(backend, shapes, dtypes, temperatures):
    for i, (W, B, L, V) in enumerate(shapes):
        for dtype in dtypes:
            for order in range(len(ORDERS)):
                for temperature in temperatures:
                    args = _random_case(W, B, L, V, dtype, seed=i, ties=bool(i % 2))
                    want, got = _run("reference", args, temperature, order), _run(backend, args, temperature, order)
                    for a, b in zip(want, got):
                        assert torch.equal(a, b), (backend, W, B, L, V, dtype, ORDERS[order], temperature)


@pytest.mark.skipif("native" not in ops.available_backends("cpu"), reason="native extension not built")
def test_native_equals_reference():
    shapes = [(3, 2, 5, 7), (1, 1, 1, 2), (2, 3, 9, 33), (4, 2, 6, 130), (5, 1, 17, 1001)]
    _assert_backend_matches("native", shapes, (torch.float32, torch.bfloat16, torch.float16), (1.0, 0.0, 0.7))


@pytest.mark.skipif("triton" not in ops.available_backends("cpu") and not torch.cuda.is_available(),
                    reason="Triton backend unavailable here")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_triton_equals_reference():
    if torch.cuda.is_available():  # pragma: no cover - GPU runs
        pytest.skip("run the CUDA variant with device tensors (bench/); the interpreter covers CPU")
    _assert_backend_matches("triton", [(2, 2, 5, 7), (1, 1, 1, 2)], (torch.float32,), (1.0, 0.0))
    _assert_backend_matches("triton", [(2, 1, 3, 130)], (torch.bfloat16, torch.float16), (0.7,))


@pytest.mark.skipif("native" not in ops.available_backends("cpu"), reason="native extension not built")
def test_samplers_agree_across_backends():
    x = _x_init(B=2, prompt=2)
    for order in ORDERS:
        with ops.use_backend("reference"):
            want = _sampler(order=order, window=3, num_steps=5).sample(x, seed=4).tokens
        with ops.use_backend("native"):
            assert torch.equal(_sampler(order=order, window=3, num_steps=5).sample(x, seed=4).tokens, want)


def test_invalid_rows_are_reported():
    bad = lambda x, t: torch.full((*x.shape, ORACLE.vocab_size), float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match="NaN/inf"):
        _sampler(denoiser=bad).sample(_x_init(), seed=0)


def test_op_is_compile_friendly():
    """The fake kernel and schema pass ``torch.library.opcheck``; a sampler step traces with fullgraph."""
    args = _random_case(2, 2, 4, 7, torch.float32, seed=0, ties=False)
    with ops.use_backend("reference"):
        torch.library.opcheck(torch.ops.pit_sampler.maskgit_sweep.default, (*args, 1.0, 0),
                              test_utils=("test_schema", "test_faketensor"))
    table = torch.randn(ORACLE.vocab_size, ORACLE.vocab_size, generator=torch.Generator().manual_seed(0))

    def toy(x, t):  # pure tensor code (the oracle's input checks are data-dependent)
        return table[x].sum(1, keepdim=True) + table[x]

    sampler = _sampler(denoiser=toy, window=3)
    compiled = _sampler(denoiser=toy, window=3, compile={"backend": "eager"})
    x = _x_init()
    assert torch.equal(compiled.sample(x, seed=3).tokens, sampler.sample(x, seed=3).tokens)


# -- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(order="lowest"), "order"),
    (dict(unmask_schedule="exp"), "unmask_schedule"),
    (dict(block_length=0), "block_length"),
    (dict(temperature=-1.0), "temperature"),
    (dict(window=0), "window"),
    (dict(tol=1.0), "tol"),
    (dict(num_steps=0), "num_steps"),
    (dict(max_rows=0), "max_rows"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        _sampler(**kw)


@pytest.mark.parametrize("kw,prompt,match", [
    (dict(num_steps=6, block_length=5), 0, "block_length=5 must divide"),
    (dict(num_steps=5, block_length=4), 0, "num_steps=5 must be a multiple of the number of blocks"),
])
def test_bad_plans(kw, prompt, match):
    with pytest.raises(ValueError, match=match):
        _sampler(**kw).sample(_x_init(prompt=prompt))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ragged_batches_and_steps_that_unmask_nothing(order, schedule):
    """More steps than a row's masked positions (LLaDA gives the extra steps nothing to do), and a row
    with nothing to fill: no error; steps with k = 0 cost no call (each row makes at most its masked
    count of calls, and the prompt-only row none); Picard equals sequential, blocks included."""
    x = _x_init(B=4)
    x[0, :7] = 1  # 5 masked positions, 32 steps
    x[1] = 2  # nothing to fill
    x[3, :11] = 3  # 1 masked position
    calls = []

    def counted(xs, t):
        calls.append(xs.shape[0])
        return ORACLE(xs, t)

    seq = _sampler(denoiser=counted, num_steps=32, order=order, unmask_schedule=schedule).sample(x, seed=9)
    assert torch.equal(seq.tokens[1], x[1]) and not bool((seq.tokens == MASK).any())
    assert seq.rounds == 1 + 12  # the probe, then at most 12 steps (row 2's 12 positions) with k > 0
    for window in (3, 8, "auto"):
        pit = _sampler(num_steps=32, order=order, unmask_schedule=schedule, window=window).sample(x, seed=9)
        assert torch.equal(pit.tokens, seq.tokens), window
    blocks = torch.full((2, 12), MASK)
    blocks[0, :4] = 1  # 8 masked: 2 blocks of 4, 8 steps each (4 with k = 0)
    blocks[1, :8] = 2  # 4 masked: 1 block, 16 steps (12 with k = 0)
    seq = _sampler(num_steps=16, block_length=4, order=order).sample(blocks, seed=2)
    assert torch.equal(_sampler(num_steps=16, block_length=4, order=order, window=4).sample(blocks, seed=2).tokens,
                       seq.tokens)


def test_bad_inputs():
    with pytest.raises(TypeError, match="x_init"):
        _sampler().sample(torch.zeros(2, 12))
    with pytest.raises(TypeError, match="logits"):
        args = _random_case(1, 1, 3, 5, torch.float32, seed=0, ties=False)
        maskgit_ops.maskgit_sweep(args[0].double(), *args[1:])
    with pytest.raises(ValueError, match="kcount"):
        args = list(_random_case(2, 2, 3, 5, torch.float32, seed=0, ties=False))
        args[6] = args[6][:1]
        maskgit_ops.maskgit_sweep(*args)
    with pytest.raises(TypeError, match="denoiser"):
        ps.MaskGITSampler(None, mask_id=MASK, num_steps=2)


# -- distribution ----------------------------------------------------------------------------------
P_FAIL = 1e-4
SMALL = make_oracle("mixture", length=4, num_tokens=3, seed=1)


def _joint_pvalue(tokens):
    """Chi-square of the full joint (3**4 = 81 sequences) against the oracle's exact probabilities,
    cells with expected count < 5 pooled into one."""
    K, L = SMALL.num_tokens, SMALL.length
    grid = torch.cartesian_prod(*[torch.arange(K)] * L)
    expected = SMALL.log_prob(grid).exp() * len(tokens)
    index = (tokens * (K ** torch.arange(L - 1, -1, -1))).sum(1)
    observed = torch.bincount(index, minlength=K**L).double()
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    return float(stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


def test_random_order_one_per_step_is_exact():
    """Random order with k = 1 per step is any-order autoregressive sampling: exact for an exact
    denoiser. 8000 samples, full-joint chi-square, rejection at p < 1e-4 (the false-failure rate).
    Power checks (deliberate breaks that must be rejected): two positions per step (num_steps = L/2:
    they draw independently given the state) and confidence order (greedy-biased toward likely tokens)."""
    n = 8000
    x = torch.full((n, SMALL.length), SMALL.mask_id)
    run = lambda **kw: ps.MaskGITSampler(SMALL, mask_id=SMALL.mask_id, **kw).sample(x, seed=123).tokens  # noqa: E731
    assert _joint_pvalue(run(num_steps=4, order="random")) > P_FAIL
    assert _joint_pvalue(run(num_steps=2, order="random")) < P_FAIL
    assert _joint_pvalue(run(num_steps=4, order="confidence")) < P_FAIL


# -- classifier-free guidance ---------------------------------------------------------------------
def test_guidance_formula_and_banned_tokens():
    calls = []

    def den(x, t):
        calls.append(x.clone())
        return torch.stack([x.float(), -x.float(), torch.full_like(x, float("-inf"), dtype=torch.float32)], -1)

    cfg = ps.ClassifierFreeGuidance(den, mask_id=2, cfg_scale=1.5, prompt=2)
    x = torch.tensor([[1, 0, 2, 1]])
    out = cfg(x, torch.ones(1))
    assert len(calls) == 1 and torch.equal(calls[0][1], torch.tensor([2, 2, 2, 1]))
    cond, uncond = den(x, None)[0], den(calls[0][1:], None)[0]
    assert torch.allclose(out[0, :, :2], uncond[:, :2] + 2.5 * (cond[:, :2] - uncond[:, :2]))
    assert bool(torch.isneginf(out[..., 2]).all())
    assert ps.ClassifierFreeGuidance(den, mask_id=2, cfg_scale=0, prompt=2)(x, torch.ones(1)).shape == (1, 4, 3)


def test_guidance_with_every_sampler():
    """Guided oracle: MaskGIT Picard == sequential, PIT == tau-leaping."""
    prompt = torch.zeros(12, dtype=torch.bool)
    prompt[:3] = True
    guided = ps.ClassifierFreeGuidance(ORACLE, mask_id=MASK, cfg_scale=0.5, prompt=prompt)
    x = _x_init(B=2, prompt=3)
    seq = _sampler(denoiser=guided, order="entropy").sample(x, seed=0)
    assert torch.equal(_sampler(denoiser=guided, order="entropy", window=4).sample(x, seed=0).tokens, seq.tokens)
    kw = dict(mask_id=MASK, num_steps=16)
    tau = ps.TauLeapingSampler(guided, **kw).sample(x, seed=0)
    assert torch.equal(ps.PITSampler(guided, window=4, **kw).sample(x, seed=0).tokens, tau.tokens)


def test_guidance_checks_its_arguments():
    for scale in (float("nan"), float("inf"), -1):  # nan/inf: refused here, not as NaN logits at step 0
        with pytest.raises(ValueError, match="cfg_scale"):
            ps.ClassifierFreeGuidance(ORACLE, mask_id=MASK, cfg_scale=scale, prompt=3)
    with pytest.raises(TypeError, match="cfg_scale"):
        ps.ClassifierFreeGuidance(ORACLE, mask_id=MASK, cfg_scale="1", prompt=3)
    with pytest.raises(TypeError, match="prompt"):
        ps.ClassifierFreeGuidance(ORACLE, mask_id=MASK, cfg_scale=1, prompt=1.5)


@pytest.mark.skipif("native" not in ops.available_backends("cpu"), reason="native extension not built")
def test_native_schema_matches_the_python_op():
    public = torch.ops.pit_sampler.maskgit_sweep.default._schema
    kernel = torch.ops.pit_sampler_native.maskgit_sweep.default._schema
    assert str(kernel).replace("pit_sampler_native::", "pit_sampler::") == str(public)


# -- the raw op: argument checks and every value of the index tensors ------------------------------
BIG = 2**63 - 1
ROWS_OUT = (-1, -(2**40), -(2**63), BIG, 2**40)  # outside [0, R) (plus R itself, per case)
STEPS = (-1, -2, -(2**63), 0, 3, 49, 2**32 - 1, 2**32 + 3, 2**40 + 1, BIG)
KCOUNTS = (-(2**63), -5, -1, 0, 1, 2, 3, 7, 2**62, BIG)
BLOCKS = (-(2**63), -1, 0, 7, 2**40, BIG)
TOKENS = (-(2**63), -1, BIG, 2**40)  # besides 0..V + 2: tokens outside [0, V)
INDEX_BACKENDS = [b for b in ("reference", "native", "triton") if b in ops.available_backends("cpu")]


def _pick(g, values, shape):
    values = torch.tensor(values, dtype=torch.int64)
    return values[torch.randint(0, len(values), shape, generator=g)]


def _adversarial_case(W, B, L, V, R, seed):
    """Raw-op arguments whose index tensors take values from the whole int64 range: rows outside
    ``[0, R)`` (at live and dead slices), every kind of negative and huge step, kcount below 0 and above
    ``L``, arbitrary blocks, ``x0``/``prev`` tokens outside ``[0, V)``, extreme seeds; some rows hold NaN,
    some are certain (one token 60 above the rest: entropy 0, the largest possible key at ``l = 0``)."""
    g = torch.Generator().manual_seed(seed)
    mask_id = int(torch.randint(0, V, (1,), generator=g))
    logits = torch.randn(R, L, V, generator=g) * 3
    logits[..., (mask_id + 1) % V] += 60.0 * (torch.rand(R, L, generator=g) < 0.3)
    logits[torch.rand(R, L, generator=g) < 0.15, int(torch.randint(0, V, (1,), generator=g))] = float("nan")
    rows = torch.where(torch.rand(W, B, generator=g) < 0.35, _pick(g, ROWS_OUT + (R,), (W, B)),
                       torch.randint(0, R, (W, B), generator=g))
    x0 = torch.where(torch.rand(B, L, generator=g) < 0.5, _pick(g, TOKENS, (B, L)), torch.randint(0, V + 3, (B, L), generator=g))
    x0[torch.rand(B, L, generator=g) < 0.6] = mask_id
    prev = torch.where(torch.rand(W, B, L, generator=g) < 0.5, _pick(g, TOKENS, (W, B, L)), x0.expand(W, B, L))
    seeds = torch.cat([torch.tensor([-(2**63), BIG, -1]), torch.randint(-(2**62), 2**62, (B,), generator=g)])
    seeds = seeds[torch.randperm(B + 3, generator=g)[:B]]
    pos_block = _pick(g, BLOCKS[:3], (B, L))
    return (logits, rows, _pick(g, STEPS, (W, B)), x0, prev.contiguous(), seeds, _pick(g, KCOUNTS, (W, B)),
            _pick(g, BLOCKS[:3], (W, B)), pos_block, mask_id)


def _raw(backend, args, temperature, order):
    with ops.use_backend(backend):
        out = torch.ops.pit_sampler.maskgit_sweep(*args, temperature, order)
    assert maskgit_ops.last_backend() == backend
    return out


def _check_index_semantics(args, out):
    """The contract's answers for the index values, derived from the arguments alone (plus each slice's
    starting state): a live slice with a row outside [0, R) reads nothing and reports -1, a dead or
    missing slice passes the state through, slice w unmasks exactly min(max(kcount, 0), eligible)
    positions of its block, tokens are drawn in [0, V) and never the mask, other values are kept."""
    logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id = args
    states, residual, invalid = out
    R, L, V = logits.shape
    W, B = steps.shape
    missing = (steps >= 0) & ((rows < 0) | (rows >= R))
    live = (steps >= 0) & ~missing
    assert torch.equal(invalid == -1, missing)
    assert torch.equal(residual, (states != prev).sum(-1, dtype=torch.int32))
    before = torch.cat([x0[None], states[:-1]])
    for w in range(W):
        for b in range(B):
            cur, new = before[w, b], states[w, b]
            taken = (cur == mask_id) & (new != mask_id)
            assert torch.equal(new[~taken], cur[~taken])  # nothing else changes (tokens outside [0, V) kept)
            assert bool(((new[taken] >= 0) & (new[taken] < V)).all())
            if not live[w, b]:
                assert not bool(taken.any()) and (missing[w, b] or invalid[w, b] == 0)
                continue
            y = logits[rows[w, b]].clone()  # [L, V]: each position's row
            y[:, mask_id] = float("-inf")
            bad = y.isnan().any(1) | (y == float("inf")).any(1) | (y == float("-inf")).all(1)
            block = (x0[b] == mask_id) & (pos_block[b] == slice_block[w, b]) & (cur == mask_id)
            assert invalid[w, b] == int((block & bad).sum())
            k = min(max(int(kcount[w, b]), 0), int((block & ~bad).sum()))
            assert int(taken.sum()) == k and bool(block[taken].all()) and not bool(bad[taken].any())


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_index_values_from_the_whole_int64_range(backend):
    """The raw op on every CPU backend: index values from the whole int64 range never read out of bounds
    (far outside values would fault or read garbage), give the contract's answers
    (:func:`_check_index_semantics`) and the reference's exact outputs; a step and the step plus
    ``2**32`` are the same noise. Odd sizes: V not a power of two, L = 1, B = 1, R = 1."""
    shapes = [(4, 3, 5, 7, 3), (1, 1, 1, 2, 1), (3, 2, 6, 33, 2), (5, 2, 9, 130, 4)]
    if backend == "triton":  # the interpreter: a few small cases
        shapes = shapes[:2]
    for i, (W, B, L, V, R) in enumerate(shapes):
        for order in range(len(ORDERS)):
            args = _adversarial_case(W, B, L, V, R, seed=10 * i + order)
            temperature = (1.0, 0.0, 0.7)[order % 3]
            out = _raw(backend, args, temperature, order)
            _check_index_semantics(args, out)
            want = out if backend == "reference" else _raw("reference", args, temperature, order)
            for a, b in zip(want, out):
                assert torch.equal(a, b), (backend, W, B, L, V, R, ORDERS[order])
            if backend == "triton" and ORDERS[order] != "random":  # (the interpreter: once per shape)
                continue
            steps = args[2]
            shifted = torch.where((steps >= 0) & (steps < 2**32), steps + 2**32, steps)
            again = _raw(backend, (*args[:2], shifted, *args[3:]), temperature, order)
            assert all(torch.equal(a, b) for a, b in zip(out, again)), "the step enters the noise mod 2**32"


def _op_args():
    args = list(_random_case(2, 3, 4, 7, torch.float32, seed=0, ties=False))
    return dict(zip(("logits", "rows", "steps", "x0", "prev", "seeds", "kcount", "slice_block", "pos_block",
                     "mask_id"), args), temperature=1.0, order=0)


OP_ARGS = ("logits", "rows", "steps", "x0", "prev", "seeds", "kcount", "slice_block", "pos_block", "mask_id",
           "temperature", "order")
BAD_ARGS = [
    (dict(kcount=torch.zeros(1, 3, dtype=torch.long)), ValueError, "kcount"),
    (dict(rows=torch.zeros(2, 2, dtype=torch.long)), ValueError, "rows"),
    (dict(slice_block=torch.zeros(2, 3, 1, dtype=torch.long)), ValueError, "slice_block"),
    (dict(pos_block=torch.zeros(3, 5, dtype=torch.long)), ValueError, "pos_block"),
    (dict(prev=torch.zeros(2, 3, 5, dtype=torch.long)), ValueError, "prev"),
    (dict(seeds=torch.arange(2)), ValueError, "seeds"),
    (dict(steps=torch.zeros(2, 3, dtype=torch.int32)), TypeError, "steps"),
    (dict(x0=torch.zeros(3, 4)), TypeError, "x0"),
    (dict(logits=torch.randn(4, 5, 7)), ValueError, "logits"),
    (dict(logits=torch.randn(4, 4, 7).double()), TypeError, "logits"),
    (dict(mask_id=7), ValueError, "mask_id"),
    (dict(mask_id=-1), ValueError, "mask_id"),
    (dict(order=4), ValueError, "order"),
    (dict(temperature=-1.0), ValueError, "temperature"),
]


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
@pytest.mark.parametrize("change, exc, match", BAD_ARGS)
def test_the_raw_op_validates_for_every_backend(change, exc, match, backend):
    """``torch.ops.pit_sampler.maskgit_sweep`` (what compiled graphs call) checks its arguments in its
    body, whatever the backend, and its fake kernel checks them at trace time."""
    args = {**_op_args(), **change}
    with ops.use_backend(backend), pytest.raises(exc, match=match):
        torch.ops.pit_sampler.maskgit_sweep(*(args[k] for k in OP_ARGS))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, pytest.raises(exc, match=match):
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        torch.ops.pit_sampler.maskgit_sweep(*(fake[k] for k in OP_ARGS))


@pytest.mark.parametrize("name", ["mask_id", "order", "temperature"])
def test_the_wrapper_rejects_bools(name):
    args = {**_op_args(), name: True}
    with pytest.raises(TypeError, match=name):
        maskgit_ops.maskgit_sweep(*(args[k] for k in OP_ARGS))


@pytest.mark.skipif("native" not in ops.available_backends("cpu"), reason="native extension not built")
@pytest.mark.parametrize("change, exc, match", BAD_ARGS[:10])
def test_the_native_kernel_checks_direct_calls(change, exc, match):
    """``torch.ops.pit_sampler_native.maskgit_sweep`` (bypassing the Python op) checks every shape its
    indexing relies on, naming the argument."""
    args = {**_op_args(), **change}
    with pytest.raises(RuntimeError, match=match):
        torch.ops.pit_sampler_native.maskgit_sweep(*(args[k] for k in OP_ARGS))


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
def test_kcount_at_most_zero_selects_nothing_even_the_largest_key(backend):
    """A certain row (entropy 0) at ``l = 0`` has the largest possible key, ``2**63 - 1``: ``kcount <= 0``
    still selects nothing, ``kcount = 1`` selects it."""
    logits = torch.zeros(1, 2, 3)
    logits[..., 2] = 60.0
    x0 = torch.zeros(1, 2, dtype=torch.int64)  # mask_id 0
    kcount = torch.tensor([[0], [-(2**63)], [-1], [1]])
    zeros = torch.zeros(4, 1, dtype=torch.int64)
    args = (logits, zeros, zeros, x0, x0.expand(4, 1, 2).contiguous(), torch.tensor([5]), kcount, zeros,
            torch.zeros(1, 2, dtype=torch.int64), 0)
    states, residual, invalid = _raw(backend, args, 1.0, ORDERS.index("entropy"))
    assert torch.equal(states[:, 0], torch.tensor([[0, 0], [0, 0], [0, 0], [2, 0]]))
    assert torch.equal(residual[:, 0], torch.tensor([0, 0, 0, 1], dtype=torch.int32)) and not bool(invalid.any())


@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_ragged_picard_equals_sequential_on_every_backend(backend):
    """The exactness matrix for the k-per-step rule on each CPU backend: ragged prompts, a row with
    nothing to fill, steps with k = 0, blocks; Picard windows 3 and 8 give the sequential tokens."""
    x = _x_init(B=3)
    x[0, :7] = 1
    x[1] = 2
    kw = dict(num_steps=16, order="margin", block_length=None)
    with ops.use_backend(backend):
        seq = _sampler(**kw).sample(x, seed=4)
        for window in ((3,) if backend == "triton" else (3, 8)):
            assert torch.equal(_sampler(window=window, **kw).sample(x, seed=4).tokens, seq.tokens), window
        assert ops.last_backend("maskgit_sweep") == backend
    with ops.use_backend("reference"):
        assert torch.equal(_sampler(**kw).sample(x, seed=4).tokens, seq.tokens)
