"""Adapters: each model shape drives both samplers; misconfigurations fail with clear errors."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from pit_sampler import LogLinear, PITSampler, TauLeapingSampler
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
