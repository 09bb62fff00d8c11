"""Adapters: each model shape drives both samplers; misconfigurations fail with clear errors; the
positions protocol through every adapter (and classifier-free guidance); compile without graph breaks.
Real Hugging Face classes: tests/test_hf.py."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from positions_checks import assert_compiles, assert_positions_match

from pit_sampler import ClassifierFreeGuidance, LogLinear, PITSampler, TauLeapingSampler
from pit_sampler.adapters import CallableDenoiser, HFMaskedLM, SEDDScoreModel, check_batch_invariance
from pit_sampler.testing import make_oracle

ORACLE = make_oracle("mixture", seed=0)
V, MASK, L = ORACLE.vocab_size, ORACLE.mask_id, ORACLE.length


def both_samplers(adapter, n=6, seed=0, steps=48):
    x = torch.full((n, L), MASK)
    kw = dict(num_steps=steps, **adapter.sampler_kwargs())
    seq = TauLeapingSampler(adapter, **kw).sample(x, seed=seed)
    pit = PITSampler(adapter, window=8, **kw).sample(x, seed=seed)
    assert torch.equal(seq.tokens, pit.tokens)
    assert not (seq.tokens == MASK).any()
    return seq


def reference_tokens(n=6, seed=0, steps=48):
    x = torch.full((n, L), MASK)
    return TauLeapingSampler(ORACLE, mask_id=MASK, vocab_size=V, num_steps=steps).sample(x, seed=seed).tokens


class Recorder:
    """A plain callable denoiser (the oracle) that records the time values it was given."""

    def __init__(self, with_time=True, dtype=torch.float32):
        self.seen, self.with_time, self.dtype = [], with_time, dtype

    def __call__(self, x, *time):
        assert len(time) == int(self.with_time)
        self.seen.extend(time)
        return ORACLE(x).to(self.dtype)


@pytest.mark.parametrize("time_input", ["t", "none", "total_noise", "noise_rate"])
def test_callable_time_inputs(time_input):
    fn = Recorder(with_time=time_input != "none")
    adapter = CallableDenoiser(fn, mask_id=MASK, vocab_size=V, time_input=time_input)
    t = torch.tensor([1.0, 0.5, 0.01])
    adapter(torch.full((3, L), MASK), t)
    sched = LogLinear()
    expected = {
        "t": t,
        "total_noise": -torch.log(sched.alpha(t.double())).float(),  # sigma_bar(t) = -log alpha(t)
        "noise_rate": sched.sigma(t.double()).float(),  # sigma(t) = -alpha'(t) / alpha(t)
    }
    if time_input == "none":
        assert fn.seen == []
    else:
        assert torch.allclose(fn.seen[0], expected[time_input]) and fn.seen[0].dtype == torch.float32
    # the adapter passes the oracle through unchanged: same tokens as the bare oracle
    assert torch.equal(both_samplers(adapter).tokens, reference_tokens())


def test_float64_outputs_become_float32_and_stay_exact():
    adapter = CallableDenoiser(Recorder(dtype=torch.float64), mask_id=MASK, vocab_size=V)
    assert adapter(torch.full((2, L), MASK), torch.ones(2)).dtype == torch.float32
    both_samplers(adapter)


@dataclass
class MaskedLMOutput:
    logits: torch.Tensor


class FakeHFModel(torch.nn.Module):
    """HF-style: keyword input_ids, returns an output object (or dict) with .logits; has a config."""

    def __init__(self, as_dict=False, mask_token_id=MASK, extra_vocab=0):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=V + extra_vocab, mask_token_id=mask_token_id)
        self.as_dict, self.extra = as_dict, extra_vocab
        self.calls = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(attention_mask)
        logits = ORACLE(input_ids)
        if self.extra:
            logits = torch.cat([logits, torch.zeros(*logits.shape[:2], self.extra)], -1)
        return {"logits": logits} if self.as_dict else MaskedLMOutput(logits)


@pytest.mark.parametrize("as_dict", [False, True])
def test_hf_masked_lm(as_dict):
    model = FakeHFModel(as_dict)
    adapter = HFMaskedLM(model, mask_id=MASK)
    assert adapter.vocab_size == V  # from model.config
    assert torch.equal(both_samplers(adapter).tokens, reference_tokens())
    kw = HFMaskedLM(model, mask_id=MASK, model_kwargs={"attention_mask": "ones"})
    kw.probe(L)
    assert model.calls[-1] == "ones"


def test_hf_suppress_ids():
    adapter = HFMaskedLM(FakeHFModel(), mask_id=MASK, suppress_ids=[0, 2])
    logits = adapter(torch.full((2, L), MASK), torch.ones(2))
    assert torch.isneginf(logits[..., [0, 2]]).all()
    tokens = both_samplers(adapter).tokens
    assert not ((tokens == 0) | (tokens == 2)).any()


def oracle_log_scores(x, sigma_bar):
    """An exact SEDD absorbing score: s_v = log p(v | x) + log(alpha / (1 - alpha)), alpha = exp(-sigma_bar)."""
    sigma_bar = sigma_bar.double()
    log_odds = -sigma_bar - torch.log(-torch.expm1(-sigma_bar))
    return (ORACLE(x).double() + log_odds[:, None, None]).float()


def test_sedd_score_model():
    adapter = SEDDScoreModel(oracle_log_scores, mask_id=MASK, vocab_size=V)
    assert adapter.sampler_kwargs()["parametrization"] == "score"
    seq = both_samplers(adapter, n=32)
    # an exact score model samples the oracle: the log-likelihood matches exact samples'
    exact = ORACLE.sample(256, generator=torch.Generator().manual_seed(0))
    assert abs(float(ORACLE.log_prob(seq.tokens).mean() - ORACLE.log_prob(exact).mean())) < 2.0
    # mean reading of the same log-scores: a per-position constant shift, so the oracle's tokens
    mean = SEDDScoreModel(oracle_log_scores, mask_id=MASK, vocab_size=V, parametrization="mean")
    assert torch.equal(both_samplers(mean).tokens, reference_tokens())


def bad(kind):
    def fn(x, t):
        n = x.shape[0]
        return {
            "vocab": torch.zeros(n, L, V + 3),
            "flat": torch.zeros(n, V),
            "positions": torch.zeros(n, L + 1, V),
            "int": torch.zeros(n, L, V, dtype=torch.int64),
            "list": [0.0] * n,
        }[kind]

    return fn


@pytest.mark.parametrize(
    "kind, error, match",
    [
        ("vocab", ValueError, f"vocab mismatch: the model returned V={V + 3} .* vocab_size={V}"),
        ("flat", ValueError, rf"returned shape \(2, {V}\), expected \[N, L, V\]"),
        ("positions", ValueError, "expected \\[N, L, V\\]"),
        ("int", TypeError, "floating-point logits"),
        ("list", TypeError, "returned list"),
    ],
)
def test_wrong_outputs_raise(kind, error, match):
    adapter = CallableDenoiser(bad(kind), mask_id=MASK, vocab_size=V)
    with pytest.raises(error, match=match):
        adapter.probe(L)
    with pytest.raises(error, match=match):  # the same error from inside a sampler
        TauLeapingSampler(adapter, num_steps=8, **adapter.sampler_kwargs()).sample(torch.full((2, L), MASK))


def test_configuration_errors():
    with pytest.raises(ValueError, match="vocab_size must be an int > mask_id"):
        CallableDenoiser(ORACLE, mask_id=V, vocab_size=V)
    with pytest.raises(ValueError, match="time_input"):
        CallableDenoiser(ORACLE, mask_id=MASK, time_input="sigma")
    with pytest.raises(ValueError, match="parametrization"):
        SEDDScoreModel(oracle_log_scores, mask_id=MASK, parametrization="logits")
    with pytest.raises(TypeError, match="callable"):
        CallableDenoiser("model", mask_id=MASK)
    with pytest.raises(ValueError, match="suppress_ids"):
        HFMaskedLM(FakeHFModel(), mask_id=MASK, suppress_ids=[MASK])
    with pytest.raises(ValueError, match="mask_token_id=3"):
        HFMaskedLM(FakeHFModel(mask_token_id=3), mask_id=MASK)
    # the model's outputs have V + 2 columns but the sampler side says V
    with pytest.raises(ValueError, match="vocab mismatch"):
        HFMaskedLM(FakeHFModel(extra_vocab=2), mask_id=MASK, vocab_size=V).probe(L)
    no_logits = HFMaskedLM(lambda input_ids: (ORACLE(input_ids),), mask_id=MASK)
    with pytest.raises(TypeError, match="without .logits"):
        no_logits.probe(L)
    # total noise is infinite where alpha(t) = 0 (linear schedule at t = 1)
    linear = CallableDenoiser(Recorder(), mask_id=MASK, time_input="total_noise", schedule="linear")
    with pytest.raises(ValueError, match="infinite"):
        linear.probe(L)
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        CallableDenoiser(ORACLE, mask_id=MASK)(torch.full((2, L), MASK), torch.ones(3))


def test_check_batch_invariance():
    x = torch.full((5, L), MASK)
    t = torch.rand(5)
    assert check_batch_invariance(ORACLE, x, t)

    def batch_dependent(x, t):  # leaks the batch size into every row
        return ORACLE(x) + 1e-3 * x.shape[0]

    assert not check_batch_invariance(batch_dependent, x, t)


# -- the positions protocol ------------------------------------------------------------------------


class PackedOracle:
    """The oracle behind the positions protocol: ``fn(x, *time, positions=index)`` returns the rows
    ``[M, V]``; ``asked`` records each call's ``M`` (``None``: a full call)."""

    supports_positions = True

    def __init__(self, with_time=True):
        self.with_time, self.asked = with_time, []

    def __call__(self, x, *time, positions=None):
        assert len(time) == int(self.with_time)
        self.asked.append(None if positions is None else positions.shape[0])
        full = ORACLE(x)
        return full if positions is None else full.flatten(0, 1)[positions]


def masked_states(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.where(torch.rand(n, L, generator=g) < 0.5, MASK, torch.randint(0, MASK, (n, L), generator=g))
    return x, torch.rand(n, generator=g)


@pytest.mark.parametrize("time_input", ["t", "none"])
def test_callable_positions_opt_in(time_input):
    fn = PackedOracle(with_time=time_input != "none")
    adapter = CallableDenoiser(fn, mask_id=MASK, vocab_size=V, time_input=time_input, positions=True)
    assert adapter.supports_positions and adapter.model_positions
    x, t = masked_states()
    assert_positions_match(adapter, x, t)
    assert [m for m in fn.asked if m is not None] == [0, 1, 1, 5, 7, x.numel()]  # the model computed only those rows
    assert CallableDenoiser(fn, mask_id=MASK, time_input=time_input).model_positions  # read off fn.supports_positions


def test_callable_without_positions_gathers():
    """A plain callable is never passed positions: the adapter gathers the rows from its full output."""
    fn = PackedOracle()
    for adapter in (CallableDenoiser(ORACLE, mask_id=MASK), CallableDenoiser(fn, mask_id=MASK, positions=False)):
        assert adapter.supports_positions and not adapter.model_positions
        assert_positions_match(adapter, *masked_states())
    assert fn.asked and set(fn.asked) == {None}
    with pytest.raises(TypeError, match="positions must be True, False or None"):
        CallableDenoiser(fn, mask_id=MASK, positions="yes")


def test_positions_suppress_ids_and_float64():
    fn = PackedOracle()
    adapter = CallableDenoiser(lambda x, t, positions=None: fn(x, t, positions=positions).double(), mask_id=MASK,
                               positions=True, suppress_ids=[0, 2])
    x, t = masked_states()
    full = assert_positions_match(adapter, x, t)
    assert full.dtype == torch.float32 and torch.isneginf(full[..., [0, 2]]).all()
    packed = adapter(x, t, positions=torch.tensor([1, 1, 9]))
    assert packed.dtype == torch.float32 and torch.isneginf(packed[:, [0, 2]]).all()


def test_hf_fake_model_positions():
    """A model without an nn.Linear output embedding: the rows come from its full logits."""
    adapter = HFMaskedLM(FakeHFModel(), mask_id=MASK, suppress_ids=[1])
    assert adapter.projection is None and not adapter.model_positions
    assert_positions_match(adapter, *masked_states())


def packed_log_scores(x, sigma_bar, positions=None):
    out = oracle_log_scores(x, sigma_bar)
    return out if positions is None else out.flatten(0, 1)[positions]


@pytest.mark.parametrize("time_input", ["total_noise", "noise_rate"])
def test_sedd_positions(time_input):
    adapter = SEDDScoreModel(packed_log_scores, mask_id=MASK, vocab_size=V, time_input=time_input, positions=True)
    assert adapter.model_positions
    assert_positions_match(adapter, *masked_states())


def bad_packed(kind):
    def fn(x, t, positions=None):
        M = x.numel() if positions is None else positions.shape[0]
        return {
            "full": torch.zeros(x.shape[0], x.shape[1], V),  # ignores positions
            "vocab": torch.zeros(M, V + 3),
            "rows": torch.zeros(M + 1, V),
            "int": torch.zeros(M, V, dtype=torch.int64),
            "list": [0.0] * M,
        }[kind] if positions is not None else torch.zeros(x.shape[0], x.shape[1], V)

    return fn


@pytest.mark.parametrize(
    "kind, error, match",
    [
        ("full", ValueError, rf"returned shape \(2, {L}, {V}\), expected \[M, V\] = \[1, V\]"),
        ("vocab", ValueError, f"vocab mismatch: the model returned V={V + 3}"),
        ("rows", ValueError, rf"returned shape \(2, {V}\), expected \[M, V\] = \[1, V\]"),
        ("int", TypeError, "floating-point logits"),
        ("list", TypeError, r"returned list, expected a tensor of logits \[M, V\]"),
    ],
)
def test_wrong_packed_outputs_raise(kind, error, match):
    adapter = CallableDenoiser(bad_packed(kind), mask_id=MASK, vocab_size=V, positions=True)
    with pytest.raises(error, match=match):
        adapter.probe(L)  # probes the positions form too


def test_bad_positions_raise():
    adapter = CallableDenoiser(PackedOracle(), mask_id=MASK, positions=True)
    x, t = masked_states(2)
    with pytest.raises(TypeError, match="positions must be a LongTensor"):
        adapter(x, t, positions=torch.tensor([0.0]))
    with pytest.raises(ValueError, match="1-D"):
        adapter(x, t, positions=torch.tensor([[0]]))
    with pytest.raises(ValueError, match=rf"outside \[0, R \* L = {2 * L}\)"):
        adapter(x, t, positions=torch.tensor([2 * L]))


def test_guidance_positions():
    """Classifier-free guidance offers positions when its denoiser does; the stacked call asks for the
    conditional rows and the unconditional rows at index + N * L."""
    x, t = masked_states()
    inner = CallableDenoiser(PackedOracle(), mask_id=MASK, positions=True)
    for scale in (0.0, 1.5):
        cfg = ClassifierFreeGuidance(inner, mask_id=MASK, cfg_scale=scale, prompt=3)
        assert cfg.supports_positions
        assert_positions_match(cfg, x, t)
    assert not getattr(ClassifierFreeGuidance(ORACLE, mask_id=MASK, cfg_scale=1.0, prompt=3), "supports_positions", False)
    with pytest.raises(ValueError, match="outside"):  # an index into the unconditional half is still out of range
        cfg(x, t, positions=torch.tensor([x.numel()]))


def smooth(x, time=None, positions=None):
    """A compile-clean stand-in network: logits from one-hot tokens and the time input."""
    logits = torch.nn.functional.one_hot(x, V).to(torch.float32) * 2.0 - 1.0
    if time is not None:
        logits = logits * time[:, None, None]
    return logits if positions is None else logits.flatten(0, 1)[positions]


@pytest.mark.parametrize(
    "make",
    [
        lambda: CallableDenoiser(smooth, mask_id=MASK, vocab_size=V, positions=True, suppress_ids=[0]),
        lambda: CallableDenoiser(smooth, mask_id=MASK, vocab_size=V, time_input="none"),  # gathered
        lambda: CallableDenoiser(smooth, mask_id=MASK, time_input="noise_rate", positions=True),
        lambda: SEDDScoreModel(smooth, mask_id=MASK, vocab_size=V),  # total noise (used to break the graph)
        lambda: SEDDScoreModel(smooth, mask_id=MASK, vocab_size=V, positions=True),
    ],
    ids=["callable", "callable-gathered", "noise-rate", "sedd", "sedd-positions"],
)
def test_adapters_compile_without_graph_breaks(make):
    adapter = make()
    x, t = masked_states()
    assert_compiles(adapter, x, t)
    assert_compiles(adapter, x, t, positions=torch.tensor([0, 7, 7, x.numel() - 1]))
