"""Semi-autoregressive block sampling (:mod:`pit_sampler.blocks`): the ``cache=False`` reference path.

The denoiser is an exact oracle seen through :class:`~pit_sampler.testing.PrefixOracle` (any input
length; positions after the input are unobserved), so a block's logits depend only on the prefix and
the block, as a block-causal model's do. The block loop is also checked against the spec's naive
step-by-step sampler (``tests/test_exactness.py``) run block by block.
"""
import pytest
import torch

import pit_sampler as ps
from pit_sampler.blocks import BlockRunner, BlockSettings
from pit_sampler.testing import CachedPrefixOracle, Gathered, PrefixOracle, make_oracle
from test_exactness import naive_tau_leaping
from tiers import tiered

ORACLE = make_oracle("hmm", seed=3, num_tokens=5, length=10)
MASK, L, N = ORACLE.mask_id, ORACLE.length, 16
EOS = 4
KW = dict(mask_id=MASK, num_steps=N)


def ragged_x() -> torch.Tensor:
    """Five rows: all masked; a prompt ending inside block 0; a prompt covering two blocks of 3 and
    ending with an EOS inside the next block (a prompt's EOS must not stop the row); infilling context
    in the middle; nothing masked."""
    truth = ORACLE.sample(5, torch.Generator().manual_seed(1))
    x = torch.full((5, L), MASK)
    x[1, :2] = torch.tensor([1, 2])
    x[2, :7] = torch.tensor([0, 1, 3, 2, 1, 2, EOS])
    x[3, 4:7] = truth[3, 4:7]
    x[4] = truth[4]
    return x


def blocks(den, bl, window=None, **kw):
    kw = {**KW, "block_length": bl, **kw}
    return ps.TauLeapingSampler(den, **kw) if window is None else ps.PITSampler(den, window=window, **kw)


def naive_blocks(x, seed, bl, eos=None, fill=None):
    """The module docstring, literally: the spec's naive sampler on ``x[:, :e_k]`` for each block, the
    whole batch each time (rows are independent; the per-slot seeds of an int seed), then only the
    rows still running keep the block; rows that drew ``eos`` at a masked position stop."""
    x, masked, live = x.clone(), x == MASK, torch.ones(x.shape[0], dtype=torch.bool)
    for s in range(0, L, bl):
        e = min(L, s + bl)
        out = naive_tau_leaping(PrefixOracle(ORACLE), x[:, :e], seed, ps.LogLinear(), ps.time_grid(N), "reject", MASK)
        x[live, :e] = out[live]
        if eos is not None:
            live &= ~((out[:, s:e] == eos) & masked[:, s:e]).any(1)
    return torch.where(x == MASK, fill if fill is not None else -1, x)


FULL, POSITIONS = PrefixOracle(ORACLE), Gathered(PrefixOracle(ORACLE))
CASES = {  # backend: (block lengths, windows, eos ids, denoisers); Triton runs in its interpreter: a tiny case
    "reference": ((3, 4), (2, "auto"), (None, EOS), (FULL, POSITIONS)),
    "native": ((3, 4), (2, 5, "auto"), (None, EOS), (FULL, POSITIONS)),
    "triton": ((5,), (4,), (EOS,), (POSITIONS,)),
}


@pytest.mark.parametrize("backend", ps.ops.available_backends("cpu"))
def test_pit_equals_sequential_and_the_naive_block_loop(backend):
    """tol=0 Picard inside blocks equals sequential inside blocks, bit for bit, and both equal the
    naive block loop: prompts of several lengths, a ragged batch, EOS stops, fixed and "auto" windows,
    the full output and the positions protocol."""
    x = ragged_x()
    lengths, windows, eos_ids, dens = CASES[backend]
    stopped = 0
    with ps.ops.use_backend(backend):
        for bl in lengths:
            for eos in eos_ids:
                seq = blocks(PrefixOracle(ORACLE), bl, eos_id=eos).sample(x, seed=7)
                assert torch.equal(seq.tokens, naive_blocks(x, 7, bl, eos, eos)), (bl, eos)
                stopped += int((seq.lengths < L).sum())
                work = [[bool((x[b, s : s + bl] == MASK).any()) and seq.lengths[b] > s for b in range(5)]
                        for s in range(0, L, bl)]
                assert seq.block_samples == [sum(w) for w in work]  # rows with nothing to do are not run
                for window in windows:
                    for den in dens:
                        pit = blocks(den, bl, window, eos_id=eos).sample(x, seed=7)
                        assert torch.equal(pit.tokens, seq.tokens), (bl, eos, window)
                        assert pit.exact and torch.equal(pit.lengths, seq.lengths)
                        assert pit.rounds == 1 + sum(pit.block_rounds)  # the probe: x holds prompts
                        assert window == "auto" or max(pit.windows) > 1
        assert ps.ops.last_backend() == backend
    assert stopped > 0  # EOS stopped some sample before its last block


@pytest.mark.parametrize("window", [None, 4])
def test_every_call_sees_the_prefix_and_its_block_only(window):
    """Each call's input is ``x[:, :e_k]``: the finished prefix (no mask) and block ``k``; block ``k``
    reaches its first call as ``x_init`` left it (nothing of a later block is unmasked before its block
    runs); blocks run in order, each exactly once; a probe row comes first (no ``vocab_size``)."""
    bl, x = 3, torch.full((3, L), MASK)
    den = PrefixOracle(ORACLE, record=True)
    out = blocks(den, bl, window).sample(x, seed=2)
    ends = [min(L, s + bl) for s in range(0, L, bl)]
    probe, calls = den.inputs[0], den.inputs[1:]
    assert probe.shape == (1, ends[0]) and bool((probe == MASK).all())
    seen = [c.shape[1] for c in calls]
    assert seen == sorted(seen) and sorted(set(seen)) == ends
    for c in calls:
        e = c.shape[1]
        s = ends.index(e) * bl
        assert not bool((c[:, :s] == MASK).any())
    for k, e in enumerate(ends):
        first = next(c for c in calls if c.shape[1] == e)
        assert bool((first[:, k * bl :] == MASK).all())
    assert out.block_rounds == [seen.count(e) for e in ends] and out.rounds == len(den.inputs)
    assert out.block_samples == [3] * len(ends) and bool((out.lengths == L).all())


def test_picard_pays_inside_every_block():
    """Exact Picard inside blocks takes fewer rounds than sequential in every block (same tokens)."""
    oracle = make_oracle("mixture", seed=0, num_tokens=6, length=32)
    kw = dict(mask_id=oracle.mask_id, num_steps=256, block_length=16, vocab_size=oracle.vocab_size)
    x = torch.full((2, 32), oracle.mask_id)
    seq = ps.TauLeapingSampler(PrefixOracle(oracle), **kw).sample(x, seed=0)
    pit = ps.PITSampler(PrefixOracle(oracle), window=8, **kw).sample(x, seed=0)
    assert torch.equal(pit.tokens, seq.tokens) and seq.block_samples == pit.block_samples == [2, 2]
    assert all(p * 2 <= s for p, s in zip(pit.block_rounds, seq.block_rounds)), (pit.block_rounds, seq.block_rounds)


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
def test_one_block_is_the_plain_sampler(cls):
    """``block_length >= L``: the plain sampler's tokens, rounds and rows (its probe included)."""
    for x in (ragged_x(), torch.full((3, L), MASK)):
        plain = cls(ORACLE, **KW).sample(x, seed=3)
        for bl in (L, 64):
            one = cls(ORACLE, block_length=bl, **KW).sample(x, seed=3)
            assert torch.equal(one.tokens, plain.tokens)
            probe = int(bool((x != MASK).any()))  # x holds a prompt: one probe row, outside the block
            assert (one.rounds, one.nfe, one.block_rounds) == (plain.rounds, plain.nfe, [plain.rounds - probe])


@pytest.mark.parametrize("window,pad", [(None, None), (3, 0)])
def test_a_sample_that_produced_eos_makes_no_further_calls(window, pad):
    """Rows carry distinct first tokens, so each call's rows name their samples. A sample that drew
    EOS in block ``k`` is in no call after block ``k``; its later masked positions hold ``pad_id``
    (default ``eos_id``); samples still running are in block ``k + 1``'s calls."""
    bl, B = 3, 4
    x = torch.full((B, L), MASK)
    x[:, 0] = torch.arange(B)
    den = PrefixOracle(ORACLE, record=True)
    out = blocks(den, bl, window, eos_id=EOS, pad_id=pad, vocab_size=MASK + 1).sample(x, seed=11)
    lengths, fill = out.lengths.tolist(), EOS if pad is None else pad
    assert min(lengths) < L - bl and max(lengths) > bl  # stops early, and some sample runs on
    for b, n in enumerate(lengths):
        s = (n - 1) // bl * bl  # the last block the sample ran: EOS there (if it stopped), not before
        assert EOS not in out.tokens[b, 1:s].tolist() and (n == L or EOS in out.tokens[b, s:n].tolist())
        assert bool((out.tokens[b, n:] == fill).all())
    for s in range(bl, L, bl):
        rows = {int(r) for c in den.inputs if c.shape[1] == min(L, s + bl) for r in c[:, 0]}
        assert rows == {b for b in range(B) if lengths[b] > s}, s
    assert out.block_samples == [sum(n > s for n in lengths) for s in range(0, L, bl)]


def test_a_sample_does_not_depend_on_its_batch():
    """Per-sample seed tensors: each sample alone gets its tokens in the batch (ragged rows, EOS
    stops, "auto" windows), and a permuted batch gives the permuted tokens."""
    x, seeds = ragged_x(), torch.tensor([5, 6, 7, 8, 9])
    make = lambda: blocks(PrefixOracle(ORACLE), 3, "auto", eos_id=EOS)  # noqa: E731
    batch = make().sample(x, seed=seeds)
    for b in range(x.shape[0]):
        alone = make().sample(x[b : b + 1], seed=seeds[b : b + 1])
        assert torch.equal(alone.tokens[0], batch.tokens[b]) and alone.lengths[0] == batch.lengths[b], b
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert torch.equal(make().sample(x[perm], seed=seeds[perm]).tokens, batch.tokens[perm])
    capped = blocks(PrefixOracle(ORACLE), 3, 2, eos_id=EOS, max_rows=2).sample(x, seed=seeds)  # groups of 1
    assert torch.equal(capped.tokens, batch.tokens)
    plain = blocks(PrefixOracle(ORACLE), 3).sample(x, seed=seeds)
    cached = blocks(CachedPrefixOracle(ORACLE), 3, max_rows=2).sample(x, seed=seeds)  # groups of 2 samples
    assert torch.equal(cached.tokens, plain.tokens)  # each group's rows find their samples' caches


def test_other_rules_and_modes_run_inside_blocks():
    """The trapezoidal solver and the score parametrization are exact under Picard inside blocks;
    approximate modes fill every mask and say they are approximate."""
    x, den = ragged_x(), PrefixOracle(ORACLE)
    for extra in ({"solver": "trapezoidal"}, {"parametrization": "score", "vocab_size": MASK + 1}):
        seq = blocks(den, 4, **extra).sample(x, seed=1)
        assert torch.equal(blocks(den, 4, 3, **extra).sample(x, seed=1).tokens, seq.tokens), extra
    for extra in ({"tol": 0.5}, {"mode": "fixed", "max_iters": 1}):
        out = blocks(den, 4, 4, eos_id=EOS, **extra).sample(x, seed=1)
        assert not out.exact and not bool((out.tokens == MASK).any()), extra


def test_maskgit_orders_run_block_by_block_on_the_same_runner():
    """The runner takes any engine: MaskGIT's k-per-step rule, Picard equal to sequential inside blocks,
    every call on a prefix and its block (this is the design MaskGIT's block-causal mode will use;
    its own ``block_length`` is LLaDA's, on full-length inputs)."""
    x, runs = ragged_x(), []
    for window in (1, 3):
        den = PrefixOracle(ORACLE, record=True)
        mg = ps.MaskGITSampler(den, mask_id=MASK, num_steps=4, order="confidence", window=window)
        runs.append(BlockRunner(mg.engine, BlockSettings(3, EOS)).sample(x, ps.sample_seeds(0, 5)))
        seen = [c.shape[1] for c in den.inputs]  # the probe (x holds prompts), then each block in order
        assert seen == sorted(seen) and sorted(set(seen)) == [3, 6, 9, 10], seen
    assert torch.equal(runs[0].tokens, runs[1].tokens) and not bool((runs[0].tokens == MASK).any())


@pytest.mark.parametrize("kw,error,match", [
    ({"block_length": 0}, ValueError, "block_length"),
    ({"block_length": 2.5}, TypeError, "block_length"),
    ({"block_length": True}, TypeError, "block_length"),
    ({"block_length": "4"}, TypeError, "block_length"),
    ({"block_length": 4, "eos_id": MASK}, ValueError, "eos_id must differ from mask_id"),
    ({"block_length": 4, "eos_id": -1}, ValueError, "eos_id"),
    ({"block_length": 4, "eos_id": 1.0}, TypeError, "eos_id"),
    ({"block_length": 4, "eos_id": MASK + 1, "vocab_size": MASK + 1}, ValueError, "eos_id"),
    ({"block_length": 4, "eos_id": 1, "pad_id": MASK}, ValueError, "pad_id must differ"),
    ({"block_length": 4, "pad_id": 1}, ValueError, "pad_id .* needs eos_id"),
    ({"eos_id": 1}, ValueError, "need block_length"),
])
def test_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        ps.PITSampler(ORACLE, **KW, **kw)


def test_window_parallelism_refuses_blocks():
    from pit_sampler.distributed import WindowParallelPIT

    with pytest.raises(ValueError, match="block_length"):
        WindowParallelPIT(ORACLE, window=2, block_length=3, **KW)


def test_ids_out_of_the_learned_vocabulary_are_reported():
    """Without ``vocab_size`` the probe learns ``V``: an ``eos_id`` or a prompt id beyond it is a
    ValueError naming it before any block runs."""
    den = PrefixOracle(ORACLE, record=True)
    with pytest.raises(ValueError, match="eos_id=9 is out of range"):
        blocks(den, 3, eos_id=9).sample(torch.full((2, L), MASK), seed=0)
    x = torch.full((2, L), MASK)
    x[0, 0] = MASK + 2
    with pytest.raises(ValueError, match=f"x_init holds token id {MASK + 2}"):
        blocks(den, 3).sample(x, seed=0)
    assert len(den.inputs) == 2  # the probes only


# -- the cache (pit_sampler.block_cache) -----------------------------------------------------------


def cached_and_plain(backend):
    """The (block length, window, eos id) cases of a backend, and the cached oracles (positions
    protocol or full output; Triton's interpreter: the positions protocol only)."""
    lengths, windows, eos_ids, _ = CASES[backend]
    cases = [(bl, w, eos) for bl in lengths for w in (None, *windows) for eos in eos_ids]
    return cases, (True,) if backend == "triton" else (True, False)


@pytest.mark.parametrize("backend", ps.ops.available_backends("cpu"))
def test_the_cache_gives_the_tokens_of_the_reference_path(backend):
    """``cache=True`` (an exact cached oracle) equals ``cache=False`` for the same seed bit for bit,
    with the same rounds per block: sequential and Picard (fixed and "auto" windows), the positions
    protocol and the full output, prompts, a ragged batch, EOS stops; past the first block every
    call is a cached one, and the model processes fewer positions."""
    x = ragged_x()
    cases, protocols = cached_and_plain(backend)
    with ps.ops.use_backend(backend):
        for bl, window, eos in cases:
            ref = blocks(PrefixOracle(ORACLE), bl, window, eos_id=eos).sample(x, seed=7)
            for positions in protocols:
                den = CachedPrefixOracle(ORACLE, positions=positions)
                out = blocks(den, bl, window, eos_id=eos).sample(x, seed=7)
                case = (bl, window, eos, positions)
                assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.lengths, ref.lengths), case
                assert window == "auto" or out.block_rounds == ref.block_rounds, case
                assert all(n <= bl for kind, _, n in den.calls if kind != "encode"), case  # no prefix recomputed
                assert out.positions < ref.positions and "cached" in {kind for kind, _, _ in den.calls}, case
        assert ps.ops.last_backend() == backend


@pytest.mark.parametrize("window", [None, 3])
def test_a_round_processes_at_most_the_window_of_blocks_plus_one_encoding_per_block(window):
    """Counting the positions of every call with the cache: a round of block ``k`` processes at most
    ``W B_k n_k`` positions (``n_k <= block_length``, ``B_k`` the samples in the block); the prefix is
    encoded at most once per finished block, each position of each running sample once; the result's
    ``positions`` is the sum of all of it."""
    bl, x = 3, ragged_x()
    den = CachedPrefixOracle(ORACLE)
    out = blocks(den, bl, window, eos_id=EOS).sample(x, seed=5)
    W, B = window or 1, x.shape[0]
    probe, calls = den.calls[0], den.calls[1:]
    assert probe == ("plain", 1, bl)
    for kind, rows, n in calls:
        assert (kind == "encode") or (n <= bl and rows <= W * B), (kind, rows, n)
    encodes = [(rows, n) for kind, rows, n in calls if kind == "encode"]
    assert len(encodes) == out.encodes <= len(range(0, L, bl)) - 1
    last_start = [max((s for s in range(0, L, bl) if s < n and bool((x[b, s : s + bl] == MASK).any())), default=0)
                  for b, n in enumerate(out.lengths.tolist())]
    assert sum(rows * n for rows, n in encodes) <= sum(last_start)
    assert out.positions == sum(rows * n for _, rows, n in den.calls)
    cached = [(rows, n) for kind, rows, n in calls if kind == "cached"]
    assert len(cached) == sum(out.block_rounds[1:])  # every round past block 0 is one cached call


RULES = ({"solver": "trapezoidal"}, {"parametrization": "score", "vocab_size": MASK + 1}, {"top_k": 2},
         {"tol": 0.5}, {"mode": "fixed", "max_iters": 1})


@pytest.mark.parametrize("backend", tiered(ps.ops.available_backends("cpu"), ("reference", "native")))
def test_the_cache_under_every_rule_and_mode(backend):
    """The trapezoidal solver, the score parametrization, top-k, the approximate modes and MaskGIT's
    rule make the same decisions from the same logits: the cached tokens equal the reference's, on
    every backend (Triton's interpreter, extended tier: Picard windows of the first two rules and
    MaskGIT's)."""
    x, interpreter = ragged_x(), backend == "triton"
    with ps.ops.use_backend(backend):
        for extra in RULES[:2] if interpreter else RULES:
            for window in (3,) if interpreter else (None, 3):
                if window is None and ("tol" in extra or "mode" in extra):
                    continue
                ref = blocks(PrefixOracle(ORACLE), 4, window, eos_id=EOS, **extra).sample(x, seed=1)
                out = blocks(CachedPrefixOracle(ORACLE), 4, window, eos_id=EOS, **extra).sample(x, seed=1)
                assert torch.equal(out.tokens, ref.tokens), (extra, window)
        _maskgit_with_and_without_the_cache(x, (3,) if interpreter else (1, 3))


def _maskgit_with_and_without_the_cache(x, windows):
    for window in windows:
        runs = []
        cached = CachedPrefixOracle(ORACLE)
        cached.block_causal = False  # MaskGITSampler refuses block-causal models; the runner needs encode/select
        for den, cache in ((PrefixOracle(ORACLE), False), (cached, True)):
            mg = ps.MaskGITSampler(den, mask_id=MASK, num_steps=4, order="confidence", window=window)
            runs.append(BlockRunner(mg.engine, BlockSettings(3, EOS, cache=cache)).sample(x, ps.sample_seeds(0, 5)))
        assert torch.equal(runs[0].tokens, runs[1].tokens), window


def test_a_block_causal_denoiser_sets_the_block_length():
    """A denoiser that declares ``block_causal`` and ``block_length`` gives the default block length
    (and the cache); another block length is a ValueError naming it."""
    x = ragged_x()
    own = ps.PITSampler(CachedPrefixOracle(ORACLE, block_length=3), window=2, **KW).sample(x, seed=4)
    given = ps.PITSampler(CachedPrefixOracle(ORACLE), window=2, block_length=3, **KW).sample(x, seed=4)
    assert torch.equal(own.tokens, given.tokens) and own.positions == given.positions
    with pytest.raises(ValueError, match="block_length=4, but the block-causal denoiser attends in blocks of 3"):
        ps.PITSampler(CachedPrefixOracle(ORACLE, block_length=3), block_length=4, **KW)


def test_the_cache_with_several_rounds_per_poll():
    """``sync_every > 1`` (the accelerator default) sizes the packed request for several rounds, so it
    holds padding slots (index 0, a prefix position): the cached view must keep every index in the
    block. Tokens equal the reference path's, sequential and Picard, with EOS stops."""
    x = ragged_x()
    for window in (None, 3):
        ref = blocks(PrefixOracle(ORACLE), 4, window, eos_id=EOS).sample(x, seed=2)
        for sync in (4, 8):
            out = blocks(CachedPrefixOracle(ORACLE), 4, window, eos_id=EOS, sync_every=sync).sample(x, seed=2)
            assert torch.equal(out.tokens, ref.tokens), (window, sync)


def test_maskgit_refuses_a_block_causal_denoiser():
    with pytest.raises(ValueError, match="block-causal"):
        ps.MaskGITSampler(CachedPrefixOracle(ORACLE), mask_id=MASK, num_steps=4)


@pytest.mark.parametrize("kw,error,match", [
    ({"block_length": 4, "cache": "yes"}, TypeError, "cache must be None, True or False"),
    ({"block_length": 4, "cache": True}, ValueError, "cache=True needs a block-causal denoiser"),
    ({"cache": False}, ValueError, "need block_length"),
])
def test_bad_cache_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        ps.PITSampler(ORACLE, **KW, **kw)
