"""The Triton kernels equal the reference ops (the oracle), integer for integer.

Without a GPU they run in Triton's interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``),
so sizes stay small; with a GPU the same tests run the compiled kernels on CUDA tensors. Every case
draws fresh random logits (never zeros) and compares ``states``, ``counts``, ``residual`` and
``invalid`` with :func:`pit_sampler.reference.sweep`, and the unmask table with
:func:`pit_sampler.reference.unmask_table`. The plain equality over rules, parametrizations and
dtypes is tests/test_backends.py (every backend); this file covers what is Triton's own: tiles,
launch configurations, the noise helpers, invalid rows under every configuration.
"""
import pytest
import torch

import pit_sampler as ps
from pit_sampler import noise, ops, reference
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import get_schedule, time_grid
from pit_sampler.testing import make_oracle
from sweep_inputs import positional, sweep_case

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.skipif("triton" not in ops.available_backends(DEVICE), reason="Triton backend unavailable here"),
    # the interpreter evaluates -inf - -inf in masked lanes whose result is discarded
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]
if "triton" in ops.available_backends(DEVICE):
    import triton
    import triton.language as tl

    from pit_sampler.triton_kernels import philox
    from pit_sampler.triton_kernels import sweep as triton_sweep
    from pit_sampler.triton_kernels import table as triton_table

    @triton.jit
    def _noise_kernel(seeds_ptr, jump_ptr, gumbel_ptr, g_ptr, step, L, V, BLOCK_L: tl.constexpr, GROUPS: tl.constexpr):
        """Jump words ``[B, BLOCK_L]`` and Gumbel words/values ``[B, L, 4 GROUPS]`` of the noise helpers."""
        b = tl.program_id(0)
        k0, k1 = philox.seed_key(tl.load(seeds_ptr + b))
        offs = tl.arange(0, BLOCK_L)
        tl.store(jump_ptr + b * BLOCK_L + offs, philox.jump_bits(k0, k1, step, offs).to(tl.int64))
        grp = tl.arange(0, GROUPS)
        lane = tl.arange(0, 4)[None, :]
        v = grp[:, None] * 4 + lane
        for pos in range(L):
            w0, w1, w2, w3 = philox.gumbel_words(k0, k1, step, pos, grp)
            bits = tl.where(lane == 0, w0[:, None], tl.where(lane == 1, w1[:, None], tl.where(lane == 2, w2[:, None], w3[:, None])))
            out = (b * L + pos) * V + v
            tl.store(gumbel_ptr + out, bits.to(tl.int64))
            tl.store(g_ptr + out, philox.gumbel_from_bits(bits))


def _ulp32(x):
    return torch.nextafter(x, torch.tensor(float("inf"), dtype=x.dtype)) - x


def test_noise_helpers_equal_the_contract():
    """Philox words bit for bit (all 4 Gumbel words used), the Gumbel transform to float32 rounding."""
    seeds = torch.tensor([0, 3, -9, 2**45 + 7, 2**63 - 1, -(2**63)], dtype=torch.int64)
    B, L, V, step = len(seeds), 3, 64, 1234567
    jump = torch.empty(B, 16, dtype=torch.int64, device=DEVICE)
    bits = torch.empty(B, L, V, dtype=torch.int64, device=DEVICE)
    g = torch.empty(B, L, V, dtype=torch.float32, device=DEVICE)
    _noise_kernel[(B,)](seeds.to(DEVICE), jump, bits, g, step, L, V, BLOCK_L=16, GROUPS=V // 4)
    want_jump = noise.jump_bits(seeds[:, None], torch.tensor(step), torch.arange(16)[None])
    assert torch.equal(jump.cpu(), want_jump)
    want_bits = noise.gumbel_bits(seeds[:, None, None], torch.tensor(step), torch.arange(L)[:, None], torch.arange(V))
    assert torch.equal(bits.cpu(), want_bits)
    want_g = noise.gumbel_from_bits(want_bits)
    err = (g.cpu() - want_g).abs() / _ulp32(want_g.abs().clamp(min=1.0))
    assert float(err.max()) <= 4.0  # both are float32 evaluations of the same formula (logs may differ by an ulp)


def test_gumbel_transform_over_the_whole_range():
    """The extremes of the uint32 range (tail accuracy) and both halves of the transform."""
    x = torch.cat([torch.arange(0, 8), torch.arange(2**31 - 4, 2**31 + 4), torch.arange(2**32 - 8, 2**32),
                   torch.randint(0, 2**32, (232,), generator=torch.Generator().manual_seed(0))]).to(torch.int64)

    @triton.jit
    def kernel(x_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(out_ptr + i, philox.gumbel_from_bits(tl.load(x_ptr + i).to(tl.uint32)))

    out = torch.empty(len(x), dtype=torch.float32, device=DEVICE)
    kernel[(1,)](x.to(DEVICE), out, N=len(x))
    want = noise.gumbel_from_bits(x)
    assert torch.isfinite(out).all() and float(out.max()) > 22.0
    assert float(((out.cpu() - want).abs() / _ulp32(want.abs().clamp(min=1.0))).max()) <= 4.0


# ---------------------------------------------------------------------------------------------
# Random sweep inputs
# ---------------------------------------------------------------------------------------------
def _sweep_case(B, L, V, W, N, rule, score, dtype, seed, mask_id=None, temperature=1.0, argmax_final=False,
                with_counts=True):
    """:func:`sweep_inputs.sweep_case` (packed rows) on ``DEVICE``, as the op's positional arguments."""
    case = sweep_case(W, B, L, V, N, rule=rule, score=score, dtype=dtype, seed=seed, mask_id=mask_id, device=DEVICE)
    return positional(case, temperature, rule, score, argmax_final, with_counts)


def _check_sweep(args, config=None):
    got = triton_sweep.sweep(*args, config=config)
    want = reference.sweep(*args)
    for name, a, b in zip(("states", "counts", "residual", "invalid"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a.cpu(), b.cpu()), f"{name} differs:\n{a}\n{b}"
    return got


def _small_tiles():
    """Several vocabulary tiles per row at test sizes under the interpreter; a GPU runs its defaults."""
    return None if DEVICE.type == "cuda" else triton_sweep.SweepConfig(block_v=16, num_warps=1, target_programs=64)


@pytest.mark.parametrize("V", [71, 72])
@pytest.mark.parametrize("score", [False, True])
def test_sweep_vocabulary_tiles_split_and_options(score, V):
    """Rows over several tiles (mask token inside one), the vocabulary split across programs (mean),
    odd V (strided column loads, a partial last tile) and V = 72 (vector loads: 4-aligned rows),
    temperature and the final argmax fill."""
    args = _sweep_case(B=2, L=4, V=V, W=3, N=4, rule="first", score=score, dtype=torch.bfloat16, seed=5,
                       mask_id=21, temperature=0.5, argmax_final=True)
    _check_sweep(args, _small_tiles())
    if not score:
        _check_sweep(args, triton_sweep.SweepConfig(block_v=16, num_warps=1, target_programs=1, block_l=2, v_split=3))


def test_sweep_long_window_one_position_and_one_sample():
    """L = 1, B = 1, a window longer than the steps left (trailing pass-through slices)."""
    args = _sweep_case(B=1, L=1, V=5, W=9, N=6, rule="reject", score=False, dtype=torch.bfloat16, seed=3)
    _check_sweep(args)
    args = _sweep_case(B=1, L=1, V=2, W=2, N=3, rule="first", score=True, dtype=torch.float16, seed=4, mask_id=0)
    _check_sweep(args)


@pytest.mark.parametrize("score", [False, True])
def test_sweep_invalid_rows_keep_positions_masked(score):
    """NaN, +inf and all--inf rows where a position is drawn: counted in ``invalid``, never a token;
    the mean parametrization redraws at the position's next unmasking slice."""
    B, L, V, W, N = 2, 6, 13, 4, 3
    args = list(_sweep_case(B=B, L=L, V=V, W=W, N=N, rule="first", score=score, dtype=torch.float32, seed=8))
    logits = args[0].clone()
    mask_id = args[8]
    rows = args[1]

    def at(l):  # the packed rows of position l
        return rows[:, :, l][rows[:, :, l] >= 0]

    logits[at(1), 3] = float("nan")
    logits[at(2), 5] = float("inf")
    logits[at(3)] = float("-inf")
    logits[at(4), mask_id] = float("nan")  # on the mask column: ignored
    logits[at(5)[1::2], 0] = float("nan")  # bad in some rows only: later slices may draw
    args[0] = logits
    args[3] = torch.full((B, L), mask_id, dtype=torch.int64, device=DEVICE)
    states, _, _, invalid = _check_sweep(tuple(args))
    assert bool((invalid > 0).any())
    assert bool((states[:, :, 1:4] == mask_id).all())
    assert int(states.max()) < V


def test_sweep_strided_logits():
    """Packed logits that are a non-contiguous view (rows interleaved, vocabulary strided) are read in place."""
    args = list(_sweep_case(B=2, L=5, V=19, W=3, N=5, rule="reject", score=False, dtype=torch.bfloat16, seed=6))
    M, V = args[0].shape
    base = torch.randn(V, 2 * M, dtype=torch.bfloat16, device=DEVICE)
    args[0] = base[:, ::2].t()  # [M, V] with strides (2, 2 M)
    assert not args[0].is_contiguous()
    _check_sweep(tuple(args))
    padded = torch.randn(M, 24, device=DEVICE)
    args[0] = padded[:, 2:21]  # rows start off 4-element alignment
    _check_sweep(tuple(args))


@pytest.mark.parametrize("score", [False, True], ids=["mean", "score"])
def test_sweep_missing_and_repeated_rows(score):
    """Packed rows read by several positions (a 3-row table, 4-aligned and not) and reads whose row is
    missing (-1, M, 2**40): the position stays masked, ``invalid = -1``; one chunk of a split vocabulary
    and the whole row alike."""
    args = list(_sweep_case(B=2, L=4, V=72, W=3, N=4, rule="first", score=score, dtype=torch.float32, seed=9,
                            mask_id=21))
    g = torch.Generator().manual_seed(9)
    W, B, L = args[1].shape
    rows = torch.randint(0, 3, (W, B, L), generator=g)
    rows[0, 0, 1], rows[1, 1, 2], rows[2, 0, 3] = -1, 3, 2**40
    args[1] = rows.to(DEVICE)
    for logits in (torch.randn(3, 72, generator=g), torch.randn(3, 73, generator=g)[:, :72]):
        args[0] = logits.to(DEVICE)
        for config in (_small_tiles(), triton_sweep.SweepConfig(block_v=16, num_warps=1, target_programs=1,
                                                                  block_l=2, v_split=3)):
            states, _, _, invalid = _check_sweep(tuple(args), config)
            assert bool((invalid == -1).any()) and bool((states != args[3].unsqueeze(0)).any())


def test_launch_params_are_the_launched_ones():
    """``kernel_configurations`` is built from ``launch_params``, the function the launcher calls: every
    constexpr set a launch uses is among them (here the CPU defaults, windows of 1 to 128 slices)."""
    cfg = triton_sweep.default_config(torch.device("cpu"))
    keys = {c.key() for c in triton_sweep.kernel_configurations(cfg)}
    for W in (1, 2, 3, 5, 64, 100, 128):
        for score in (False, True):
            for greedy in (False, True):
                launch = triton_sweep.launch_params(cfg, W=W, L=6, V=37, score=score, rule=1, greedy=greedy,
                                                    scale=not greedy, argmax_final=True, with_counts=True,
                                                    aligned=W % 2 == 0)
                assert launch.key() in keys
    w_pads = {c.constexprs.get("W_PAD") for c in triton_sweep.kernel_configurations(cfg)} - {None}
    assert w_pads == {2, 4, 8, 16, 32, 64, 128}


def _gpu_launch():
    """The GPU launch settings (256-token tiles, one warp, 4224 programs: the vocabulary gets split)."""
    return triton_sweep.SweepConfig(block_v=256, num_warps=1, target_programs=4224)


def _split_configs():
    return [_gpu_launch(), triton_sweep.SweepConfig(block_v=64, num_warps=1, target_programs=1, block_l=2, v_split=3)]


@pytest.mark.parametrize("kind", ["topk", "mask_last_1025", "suppressed_block"])
def test_split_vocabulary_chunks_without_candidates_are_not_invalid(kind):
    """Regression: with the vocabulary split over programs, a chunk whose values are all -inf (or only
    the mask) has no candidate; it must not flag the row invalid (it used to win the merge as a bad key)."""
    V, mask_id = (1025, 1024) if kind == "mask_last_1025" else (1025, 512)
    args = list(_sweep_case(B=2, L=2, V=V, W=2, N=4, rule="first", score=False, dtype=torch.float32, seed=21,
                            mask_id=mask_id))
    logits = args[0].clone()
    if kind == "topk":  # top-5 filtering: everything else -inf
        keep = logits.topk(5, dim=1).indices
        logits = torch.full_like(logits, float("-inf")).scatter(1, keep, logits.gather(1, keep))
    elif kind == "suppressed_block":
        logits[:, 200:900] = float("-inf")  # whole vocabulary chunks hold nothing above -inf
    args[0] = logits
    for config in _split_configs():
        states, _, _, invalid = _check_sweep(tuple(args), config)
        assert bool((invalid == 0).all())
    assert bool((states != args[3].unsqueeze(0)).any())


def test_split_vocabulary_fuzz_case_tweedie_fp16():
    """Regression (the shape of a fuzzing find): W=4, B=3, L=2, V=130, mask 65, tweedie, fp16, T=2, with
    ids 0..63 suppressed (-inf) and the vocabulary split in chunks of 64 tokens, so chunk 0 has no candidate."""
    args = list(_sweep_case(B=3, L=2, V=130, W=4, N=6, rule="tweedie", score=False, dtype=torch.float16, seed=4,
                            mask_id=65, temperature=2.0))
    args[0] = args[0].clone()
    args[0][:, :64] = float("-inf")
    for config in [_gpu_launch(), triton_sweep.SweepConfig(block_v=32, num_warps=1, target_programs=16, v_split=3)]:
        assert bool((_check_sweep(tuple(args), config)[3] == 0).all())


# ---------------------------------------------------------------------------------------------
# A sample's bits do not depend on the batch around it (PIT compacts batches, sequential does not)
# ---------------------------------------------------------------------------------------------
class _RecordLaunch:
    """Stands in for a sweep kernel: records each launch's grid and options, runs nothing."""

    def __init__(self, name):
        self.__name__, self.launches = name, []

    def __getitem__(self, grid):
        return lambda *args, **options: self.launches.append((grid, options))


def test_launch_does_not_depend_on_the_batch(monkeypatch):
    """The host path of the GPU settings (132 multiprocessors) launches the same specialization (constexprs,
    warps) for a sample of any ``L``/``V`` whatever the batch size, on both sides of the score kernel's
    widening; only the grid (and the mean kernel's vocabulary split) grows with ``B``. Host side only:
    the kernels are replaced by recorders, so large batches cost nothing."""
    kernels = {name: _RecordLaunch(name) for name in ("_score_kernel", "_mean_kernel")}
    for name, recorder in kernels.items():
        monkeypatch.setattr(triton_sweep, name, recorder)
    cfg = triton_sweep.gpu_config(132)
    tables = step_tables(get_schedule("cosine"), time_grid(4), "first")
    for score in (False, True):
        for L, V in ((1, 50257), (7, 1099), (300, 50257), (3000, 1099), (5, 37)):
            options = set()
            for B in (1, 3, 8, 2048):
                x0 = torch.zeros(B, L, dtype=torch.int64)
                args = (torch.zeros(1, V), torch.zeros(2, B, L, dtype=torch.int64), torch.ones(2, B, dtype=torch.int64),
                        x0, x0.expand(2, B, L), torch.zeros(B, dtype=torch.int64), tables.cdf, tables.rate)
                triton_sweep.sweep(*args, 0, 1.0, 1, score, False, True, config=cfg)
                grid, opts = kernels["_score_kernel" if score else "_mean_kernel"].launches[-1]
                options.add(tuple(sorted(opts.items())))
            assert len(options) == 1, (score, L, V, options)
    widths = {opts["GROUPS"] for _, opts in kernels["_score_kernel"].launches}
    assert widths == {cfg.block_v // 4, cfg.block_v}  # both sides of the widening were launched


def _at_the_count_boundary(L, V, W, seed, mask_id):
    """One sample (``seeds[0]``) whose every read sits on a float32 rounding of a jump count: score
    parametrization, rate 1, and the row that position ``l`` reads at slice ``w`` (``rows[w, 0, l] = w L +
    l``) shifted so that ``lambda`` solves ``Poisson CDF(2; lambda) = U`` of that read. Its count is then 2
    or 3 depending on the last bits of the log-sum-exp, and under the reject rule the position never
    unmasks, so every slice reads every position."""
    g = torch.Generator().manual_seed(seed)
    seeds = noise.sample_seeds(seed, 1)
    steps = torch.arange(1, W + 1)
    u = noise.uniform_from_bits(noise.jump_bits(seeds, steps[:, None], torch.arange(L))).double().reshape(-1)
    lo, hi = torch.zeros_like(u), torch.full_like(u, 50.0)
    for _ in range(80):  # bisection: CDF(2; lambda) = exp(-lambda) (1 + lambda + lambda^2 / 2) decreases
        mid = (lo + hi) / 2
        above = torch.exp(-mid) * (1 + mid + mid * mid / 2) > u
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    logits = torch.randn(W * L, V, generator=g, dtype=torch.float64) * 2.0
    lse = torch.logsumexp(logits[:, torch.arange(V) != mask_id], 1)
    logits = (logits + (torch.log(lo) - lse)[:, None]).float()
    return logits, torch.arange(W * L).view(W, 1, L), steps, seeds


def _in_a_batch(sample, B, at, L, V, N, mask_id, rule, score):
    """The op's arguments with ``sample`` as sample ``at`` of a batch of ``B``; the other samples have
    their own seeds and no masked position (nothing to read: cheap in the interpreter)."""
    logits, rows1, steps1, seeds1 = sample
    W = steps1.shape[0]
    g = torch.Generator().manual_seed(B)
    rows = torch.randint(0, logits.shape[0], (W, B, L), generator=g)
    rows[:, at] = rows1[:, 0]
    x0 = torch.randint(0, V - 1, (B, L), generator=g)
    x0 = x0 + (x0 >= mask_id).to(torch.int64)
    x0[at] = mask_id
    seeds = noise.sample_seeds(1000 + B, B)
    seeds[at] = seeds1[0]
    prev = torch.where(torch.rand(W, B, L, generator=g) < 0.5, x0, x0.roll(1, 1)).contiguous()
    tables = step_tables(get_schedule("loglinear"), time_grid(N, "geometric"), rule)
    rate = torch.ones(N + 1) if score else tables.rate
    args = (logits, rows, steps1[:, None].expand(W, B), x0, prev, seeds, tables.cdf, rate)
    return (*(a.to(DEVICE) for a in args), mask_id, 1.0, RULES.index(rule), score, False, True)


@pytest.mark.parametrize("score", [False, True], ids=["mean", "score"])
def test_sample_bits_do_not_depend_on_the_batch(score):
    """The same sample in batches of 1, 3 and 8 (at different indices) under GPU launch settings: its
    states, counts, residual and invalid are the same bits.

    Score parametrization: ``gpu_config(1)`` (256-token tiles, one warp, 32 programs per multiprocessor;
    one multiprocessor, so that these batches straddle the old widening threshold ``2 B L < 32``), and
    every read at a count boundary (:func:`_at_the_count_boundary`), so that a log-sum-exp rounded
    differently in another batch changes a count (it did while the score kernel was widened from ``B L``).
    Mean parametrization: GPU tiles with a grid target of 4 programs, so that these batches split the
    vocabulary 3, 2 and 1 ways (checked); the merged draws must not change."""
    V, N, mask_id = 601, 6, 517
    if score:  # 20 reads at a count boundary: about 2 of them change their count with the tile width
        L, W, rule, cfg = 4, 5, "reject", triton_sweep.gpu_config(1)
    else:
        L, W, rule, cfg = 8, 3, "first", triton_sweep.SweepConfig(block_v=256, num_warps=1, target_programs=4)
    sample = _at_the_count_boundary(L, V, W, seed=2, mask_id=mask_id)
    results, splits = [], []
    for B, at in ((1, 0), (3, 1), (8, 6)):
        args = _in_a_batch(sample, B, at, L, V, N, mask_id, rule, score)
        got = triton_sweep.sweep(*args, config=cfg)
        results.append([t[:, at].cpu() for t in got])
        splits.append(triton_sweep.vocab_split(cfg, B, triton.cdiv(V, cfg.block_v))[0])
    for other in results[1:]:
        for name, a, b in zip(("states", "counts", "residual", "invalid"), results[0], other):
            assert torch.equal(a, b), f"{name} of the sample differs with the batch:\n{a}\n{b}"
    if score:
        assert bool((results[0][1] >= 2).all())  # every slice read every position (count 2 or 3)
    else:
        assert splits == [3, 2, 1] and int((results[0][0][-1] != mask_id).sum()) > L // 2  # most positions drew


@pytest.mark.parametrize("rule", RULES)
def test_unmask_table_matches_reference(rule):
    g = torch.Generator().manual_seed(RULES.index(rule))
    B, L, N, mask_id = 3, 37, 40, 4
    cdf = step_tables(get_schedule("cosine"), time_grid(N), rule).cdf
    x = torch.where(torch.rand(B, L, generator=g) < 0.3, torch.randint(0, 4, (B, L), generator=g), mask_id)
    seeds = torch.randint(-(2**62), 2**62, (B,), generator=g, dtype=torch.int64)
    got = triton_table.unmask_table(x.to(DEVICE), seeds.to(DEVICE), cdf.to(DEVICE), mask_id, RULES.index(rule))
    assert torch.equal(got.cpu(), reference.unmask_table(x, seeds, cdf, mask_id, RULES.index(rule)))
    # one sample, one position, a step count that leaves positions for the final fill
    cdf = step_tables(get_schedule("loglinear"), time_grid(2), rule).cdf
    x1 = torch.full((1, 1), mask_id)
    for s in range(8):
        seed = torch.tensor([s], dtype=torch.int64)
        got = triton_table.unmask_table(x1.to(DEVICE), seed.to(DEVICE), cdf.to(DEVICE), mask_id, RULES.index(rule))
        assert torch.equal(got.cpu(), reference.unmask_table(x1, seed, cdf, mask_id, RULES.index(rule)))


def test_ops_dispatch_to_triton():
    args = _sweep_case(B=2, L=3, V=11, W=2, N=4, rule="reject", score=False, dtype=torch.float32, seed=1)
    with ops.use_backend("triton"):
        got = ops.sweep(*args)
        assert ops.last_backend("sweep") == "triton"
        table = ops.unmask_table(args[3], args[5], args[6], args[8], 0)
        assert ops.last_backend("unmask_table") == "triton"
    want = reference.sweep(*args)
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(got, want))
    assert torch.equal(table.cpu(), reference.unmask_table(*(a.cpu() for a in (args[3], args[5], args[6])), args[8], 0))


@pytest.mark.parametrize("parametrization", ["mean", "score"])
def test_pit_sampler_on_triton_equals_tau_leaping(parametrization):
    """PIT through the Triton kernels returns exactly the sequential sampler's tokens (reference ops)."""
    oracle = make_oracle("mixture", seed=3, num_tokens=5, length=5)
    common = dict(mask_id=oracle.mask_id, num_steps=10, rule="reject")
    if parametrization == "score":
        common.update(parametrization="score", schedule="linear", t_max=0.9)
    x = torch.full((2, oracle.length), oracle.mask_id, dtype=torch.int64)
    x[1, 0] = 2  # a prompt token
    with ops.use_backend("reference"):
        want = ps.TauLeapingSampler(oracle, **common).sample(x, seed=11)
    with ops.use_backend("triton"):
        got = ps.PITSampler(oracle, window=3, **common).sample(x.to(DEVICE), seed=11)
    assert ops.last_backend("sweep") == "triton"
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert got.exact and not bool((got.tokens == oracle.mask_id).any())
