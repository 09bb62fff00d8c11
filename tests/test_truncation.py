"""Top-k / top-p truncation (pit_sampler.truncation): Hugging Face's own warpers as the reference on
random rows (odd V, one row, every float dtype, temperatures, the mask left out), ties kept together,
rows independent of each other, invalid rows left for the sweep to report, argument errors; token
draws through the sweep follow the truncated distribution (chi-square, false-failure rate 1e-4); and
PIT still equals the sequential sampler with truncated logits (exactness kept)."""

import math

import pytest
import torch
from scipy import stats

from sweep_inputs import full_form
from tiers import tiered

import pit_sampler
from pit_sampler import PITSampler, TauLeapingSampler, ops
from pit_sampler.rules import step_tables
from pit_sampler.schedules import LogLinear, time_grid
from pit_sampler.testing import make_oracle
from pit_sampler.truncation import TruncatedDenoiser, check_truncation, truncate_logits

transformers = pytest.importorskip("transformers")
from transformers import TopKLogitsWarper, TopPLogitsWarper  # noqa: E402

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
P_FAIL = 1e-4


def reference_keep(logits, top_k, top_p, temperature, mask_id=None):
    """bool: the tokens Hugging Face keeps (``TopKLogitsWarper`` then ``TopPLogitsWarper`` on
    ``logits / T`` in float64, the mask set to -inf first), with every token tied with a kept one kept
    too (HF's sort breaks ties by position; truncate_logits keeps a tie group whole)."""
    z = logits.double().reshape(-1, logits.shape[-1]).clone()
    if mask_id is not None:
        z[:, mask_id] = -math.inf
    z = z / temperature
    if top_k is not None:
        z = TopKLogitsWarper(top_k)(None, z)
    if top_p is not None:
        z = TopPLogitsWarper(top_p)(None, z)
    keep = torch.isfinite(z)
    values = logits.double().reshape(keep.shape)
    keep = torch.stack([k | torch.isin(v, v[k]) for v, k in zip(values, keep)])  # v ties a kept token
    if mask_id is not None:
        keep[:, mask_id] = True
    return keep.reshape(logits.shape)


def random_rows(M, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, V, generator=g, dtype=torch.float64) * 2.5).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, V", [(1, 1), (1, 2), (1, 101), (6, 7), (5, 101), (2, 1001)])
def test_matches_huggingface_warpers(dtype, M, V):
    cases = [(k, p, T) for k in (None, 1, 5, V + 3) for p in (None, 0.05, 0.5, 0.9, 1.0) for T in (0.5, 1.3)]
    for i, (top_k, top_p, T) in enumerate(cases):
        logits = random_rows(M, V, dtype, seed=1000 * M + V + i)
        for mask_id in (None, V // 2) if V > 1 else (None,):
            out = truncate_logits(logits, top_k, top_p, T, mask_id)
            assert out.dtype == dtype and out.shape == logits.shape
            keep = reference_keep(logits, top_k, top_p, T, mask_id)
            label = f"top_k={top_k} top_p={top_p} T={T} mask_id={mask_id}"
            assert torch.equal(torch.isfinite(out), keep | ~torch.isfinite(logits)), label
            assert torch.equal(out[keep], logits[keep]), label  # kept entries bit for bit
            assert bool(keep.any(-1).all()), label  # never an empty row


def test_edge_values():
    """A row of every finite value kept by top_p=1; -inf entries (suppressed ids) stay; top_k above
    the clean tokens keeps all; the mask column is left as it is (even when it holds the top logit)."""
    row = torch.tensor([[3.0, -math.inf, 1.0, 9.0, 0.5]])
    assert truncate_logits(row, None, None) is row
    assert torch.equal(truncate_logits(row, top_p=1.0), row)
    assert torch.equal(truncate_logits(row, top_k=4), row)
    out = truncate_logits(row, top_k=1, mask_id=3)  # the mask (9.0) is not a candidate: 3.0 is the top clean
    assert out.tolist() == [[3.0, -math.inf, -math.inf, 9.0, -math.inf]]
    out = truncate_logits(row, top_p=0.5, mask_id=3)  # p(0) = e^3 / (e^3 + e + e^0.5) = 0.82 >= 0.5
    assert out.tolist() == [[3.0, -math.inf, -math.inf, 9.0, -math.inf]]
    assert torch.equal(truncate_logits(row, top_k=1, temperature=0.0), row)  # greedy: argmax unchanged anyway


def test_ties_are_kept_together():
    # top-k: HF keeps every token tied with the k-th largest
    row = torch.tensor([[3.0, 1.0, 1.0, 0.0, 1.0]])
    assert torch.isfinite(truncate_logits(row, top_k=2)).tolist() == [[True, True, True, False, True]]
    # top-p: p(3.0) = e^3 / (e^3 + 3 e + 1) = 0.687, the mass strictly above the tied tokens: below 0.9,
    # so all three stay (HF keeps only the first one or two of them, by sort position)
    assert torch.isfinite(truncate_logits(row, top_p=0.9)).tolist() == [[True, True, True, False, True]]
    assert torch.isfinite(truncate_logits(row, top_p=0.69)).tolist() == [[True, True, True, False, True]]
    assert torch.isfinite(truncate_logits(row, top_p=0.68)).tolist() == [[True, False, False, False, False]]
    # the same values in another order give the same set (no dependence on ids)
    perm = torch.tensor([4, 2, 0, 3, 1])
    assert torch.equal(truncate_logits(row[:, perm], top_p=0.9), truncate_logits(row, top_p=0.9)[:, perm])


def test_rows_do_not_depend_on_each_other():
    logits = random_rows(64, 257, torch.float32, seed=3)
    logits[::3, 5:9] = 1.25  # ties
    full = truncate_logits(logits, top_k=40, top_p=0.8, temperature=0.7, mask_id=256)
    for i in range(0, 64, 7):
        assert torch.equal(truncate_logits(logits[i : i + 1], top_k=40, top_p=0.8, temperature=0.7, mask_id=256),
                           full[i : i + 1])
    assert torch.equal(truncate_logits(logits[10:40], top_k=40, top_p=0.8, temperature=0.7, mask_id=256), full[10:40])


def test_invalid_rows_are_left_for_the_sweep():
    rows = torch.tensor([
        [1.0, math.nan, 0.0, 2.0],
        [1.0, math.inf, 0.0, 2.0],
        [-math.inf, -math.inf, 5.0, -math.inf],  # only the mask (column 2) finite: no clean token
        [0.0, 3.0, 1.0, -math.inf],
    ])
    out = truncate_logits(rows, top_k=1, mask_id=2)
    assert torch.equal(out[:3].nan_to_num(), rows[:3].nan_to_num())  # unchanged
    assert out[3].tolist() == [-math.inf, 3.0, 1.0, -math.inf]


def test_bad_arguments_raise():
    x = torch.zeros(2, 5)
    for kwargs, error, match in [
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=-3), ValueError, "top_k"),
        (dict(top_k=2.0), TypeError, "top_k"),
        (dict(top_k=True), TypeError, "top_k"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(top_p=math.nan), ValueError, "top_p"),
        (dict(top_p="0.9"), TypeError, "top_p"),
        (dict(top_p=0.5, temperature=-1.0), ValueError, "temperature"),
        (dict(top_k=2, mask_id=5), ValueError, "mask_id"),
        (dict(top_k=2, mask_id=-1), ValueError, "mask_id"),
    ]:
        with pytest.raises(error, match=match):
            truncate_logits(x, **kwargs)
    with pytest.raises(TypeError, match="floating point"):
        truncate_logits(torch.zeros(2, 5, dtype=torch.int64), top_k=2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        truncate_logits([[0.0, 1.0]], top_k=1)
    with pytest.raises(ValueError, match="V >= 1"):
        truncate_logits(torch.zeros(2, 0), top_k=1)
    assert check_truncation(3, 0.5) == (3, 0.5)
    with pytest.raises(TypeError, match="callable"):
        TruncatedDenoiser("not a model", top_k=1)


def draws(logits_row, mask_id, temperature, B=1200, L=25, N=40):
    """``B * L`` Gumbel-max draws of one logits row through ``ops.sweep`` (the automatic CPU backend),
    each from its own noise key (per-sample seed, step, position); thresholds of 0 make every masked
    position unmask (as tests/test_statistics.py's token_draws)."""
    V = logits_row.shape[0]
    logits = logits_row.expand(1, L, V).contiguous()
    seeds = pit_sampler.sample_seeds(77, B)
    tables = step_tables(LogLinear(), time_grid(N), "reject")
    cdf = torch.zeros_like(tables.cdf[:, :1])
    steps = (torch.arange(B) % (N + 1)).view(1, B)
    packed, rows = full_form(logits, torch.zeros(1, B, dtype=torch.int64))
    x0 = torch.full((B, L), mask_id)
    states, _, _, invalid = ops.sweep(packed, rows, steps, x0, x0.unsqueeze(0), seeds, cdf, tables.rate, mask_id,
                                      temperature, tables.rule)
    assert bool((invalid == 0).all())
    return torch.bincount(states[0].reshape(-1), minlength=V)


def chi2_pvalue(counts, probs):
    """Chi-square of ``counts`` against ``probs`` over the cells of positive probability (expected
    counts >= 5 here); a count in a zero-probability cell fails outright."""
    if bool(((probs == 0) & (counts > 0)).any()):
        return 0.0
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    assert bool((expected >= 5).all())
    return float(stats.chisquare(counts[keep].double().numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_draws_follow_the_truncated_distribution(dtype):
    """30000 draws from the truncated row (top_k=5, top_p=0.85 at T=0.8, V=11, mask id 4) against
    softmax(kept logits / T): chi-square at p > 1e-4 (false-failure rate 1e-4 per test); removed
    tokens are never drawn. Power: the same counts reject the untruncated softmax."""
    values = torch.tensor([1.2, 0.4, 2.0, -0.3, 3.0, 1.9, 0.0, 1.0, -1.0, 1.5, 0.9], dtype=torch.float64)
    row = values.to(dtype)
    mask_id, T = 4, 0.8
    truncated = truncate_logits(row.unsqueeze(0), top_k=5, top_p=0.85, temperature=T, mask_id=mask_id)[0]
    kept = torch.isfinite(truncated) & (torch.arange(11) != mask_id)
    assert 2 <= int(kept.sum()) < 5  # top-p cut into the top 5
    counts = draws(truncated, mask_id, T)
    z = row.double() / T
    want = torch.softmax(torch.where(kept, z, -math.inf), 0)
    assert chi2_pvalue(counts, want) > P_FAIL
    assert int(counts[~kept].sum()) == 0
    plain = torch.softmax(torch.where(torch.arange(11) != mask_id, z, -math.inf), 0)
    assert chi2_pvalue(counts, plain) < P_FAIL


ORACLE = make_oracle("mixture", seed=0)


@pytest.mark.parametrize("top_k, top_p, T", [(3, None, 1.0), (None, 0.7, 0.8), (4, 0.9, 1.3)])
def test_pit_equals_sequential_with_truncation(top_k, top_p, T):
    V, MASK, L = ORACLE.vocab_size, ORACLE.mask_id, ORACLE.length
    den = TruncatedDenoiser(ORACLE, top_k=top_k, top_p=top_p, temperature=T, mask_id=MASK)
    kw = dict(mask_id=MASK, vocab_size=V, num_steps=48, temperature=T)
    x = torch.full((5, L), MASK)
    seq = TauLeapingSampler(den, **kw).sample(x, seed=1)
    pit = PITSampler(den, window=8, **kw).sample(x, seed=1)
    assert torch.equal(seq.tokens, pit.tokens)
    plain = TauLeapingSampler(ORACLE, **kw).sample(x, seed=1)
    assert not torch.equal(plain.tokens, seq.tokens)  # the truncation changed the draws


@pytest.mark.parametrize("backend", tiered(["reference"] + [b for b in ("native", "triton") if b in ops.available_backends("cpu")],
                                            default={"reference", "native"}))
def test_the_samplers_apply_top_k_and_top_p_themselves(backend):
    """``top_k=``/``top_p=`` of the samplers give the wrapper's tokens, PIT equals sequential, on every
    backend and through the positions protocol."""
    from pit_sampler.testing import Gathered

    V, MASK, L = ORACLE.vocab_size, ORACLE.mask_id, ORACLE.length
    kw = dict(mask_id=MASK, vocab_size=V, num_steps=48, temperature=0.8)
    x = torch.full((4, L), MASK)
    x[1, :3] = 0
    with ops.use_backend(backend):
        want = TauLeapingSampler(TruncatedDenoiser(ORACLE, top_k=4, top_p=0.8, temperature=0.8, mask_id=MASK),
                                 **kw).sample(x, seed=2).tokens
        for den in (ORACLE, Gathered(ORACLE)):
            seq = TauLeapingSampler(den, top_k=4, top_p=0.8, **kw).sample(x, seed=2)
            pit = PITSampler(den, window=8, top_k=4, top_p=0.8, **kw).sample(x, seed=2)
            assert torch.equal(seq.tokens, want) and torch.equal(pit.tokens, want)
    with pytest.raises(ValueError, match="top_p"):
        TauLeapingSampler(ORACLE, top_p=1.5, **kw)
    with pytest.raises(TypeError, match="top_k"):
        PITSampler(ORACLE, top_k=2.0, **kw)
    with pytest.raises(ValueError, match="mean parametrization"):
        TauLeapingSampler(ORACLE, top_k=3, parametrization="score", schedule="loglinear", **kw)


def test_top_k_1_is_greedy():
    """top_k = 1 leaves the argmax alone, so the Gumbel draw is the greedy choice: the tokens equal
    temperature = 0 (the unmask steps do not depend on the temperature)."""
    V, MASK, L = ORACLE.vocab_size, ORACLE.mask_id, ORACLE.length
    x = torch.full((6, L), MASK)
    kw = dict(mask_id=MASK, vocab_size=V, num_steps=32)
    top1 = PITSampler(TruncatedDenoiser(ORACLE, top_k=1, mask_id=MASK), window=4, **kw).sample(x, seed=5)
    greedy = PITSampler(ORACLE, window=4, temperature=0.0, **kw).sample(x, seed=5)
    assert torch.equal(top1.tokens, greedy.tokens)


def test_truncated_denoiser_follows_the_positions_protocol():
    from pit_sampler.adapters import CallableDenoiser
    from positions_checks import assert_positions_match

    MASK, V = ORACLE.mask_id, ORACLE.vocab_size
    inner = CallableDenoiser(ORACLE, mask_id=MASK, vocab_size=V, time_input="none")
    den = TruncatedDenoiser(inner, top_k=2)
    assert den.supports_positions and den.mask_id == MASK and den.sampler_kwargs()["vocab_size"] == V
    x = torch.full((3, ORACLE.length), MASK)
    x[:, ::2] = 0
    full = assert_positions_match(den, x, torch.ones(3))
    assert bool((torch.isfinite(full[x == MASK]).sum(-1) == 2).all())  # the two largest of each masked row
    assert not TruncatedDenoiser(ORACLE, top_k=2).supports_positions  # a plain callable offers no positions


def test_traces_without_graph_breaks():
    """The sampler applies it inside a round compiled with fullgraph=True."""
    from positions_checks import assert_compiles

    assert_compiles(truncate_logits, random_rows(6, 33, torch.float32, seed=9), 5, 0.8, 0.7, 3)
