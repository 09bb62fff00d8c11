"""The shipped text model (pit_sampler.models.text): files load with from_pretrained, the two samplers
give identical tokens through HFMaskedLM, misconfigured adapters fail clearly, and the metrics are
right on inputs checkable by hand. Skipped without transformers."""

import gzip
import hashlib
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pit_sampler import PITSampler, TauLeapingSampler  # noqa: E402
from pit_sampler.adapters import HFMaskedLM, check_batch_invariance  # noqa: E402
from pit_sampler.models import text  # noqa: E402

if not (text.MODEL_DIR / "model.safetensors").is_file():
    pytest.skip("text model weights not shipped", allow_module_level=True)


@pytest.fixture(scope="module")
def tok():
    return text.load_tokenizer()


@pytest.fixture(scope="module")
def model():
    return text.load_text_model()


@pytest.fixture(scope="module")
def evaluator():
    return text.load_evaluator()


def test_shipped_files_load_with_from_pretrained(tok):
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(text.MODEL_DIR))
    assert len(fast) == text.VOCAB_SIZE == 4096
    assert (fast.pad_token_id, fast.sep_token_id, fast.mask_token_id) == (0, 1, 2)
    quote = text.read_quotes()[0]
    ids = fast(quote, add_special_tokens=False).input_ids
    assert fast.decode(ids) == quote and len(ids) < len(quote)  # byte-level BPE round trip, merges used
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(str(text.MODEL_DIR))
    assert type(mlm).__name__ == "ModernBertForMaskedLM"
    ev = transformers.GPT2LMHeadModel.from_pretrained(str(text.EVALUATOR_DIR))
    assert mlm.config.vocab_size == ev.config.vocab_size == len(fast)
    assert mlm.config.mask_token_id == fast.mask_token_id
    assert mlm.config.max_position_embeddings >= 256 and ev.config.n_positions >= 256
    from safetensors import safe_open

    for folder in (text.MODEL_DIR, text.EVALUATOR_DIR):
        path = folder / "model.safetensors"
        assert path.stat().st_size < 8 * 2**20  # a few MB
        with safe_open(str(path), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert text.COPYRIGHT_FILE.read_text().count("Regents of the University of California") >= 1


def test_both_samplers_identical_on_the_text_model(tok, model):
    den = text.text_denoiser(model, tok)
    assert isinstance(den, HFMaskedLM) and den.projection is not None and den.suppress_ids == (tok.pad_token_id,)
    kw = dict(num_steps=64, **den.sampler_kwargs())
    x = torch.full((2, 24), tok.mask_token_id)
    prompt = tok("The cat", add_special_tokens=False).input_ids
    x[1, : len(prompt)] = torch.tensor(prompt)  # a prompt: its tokens are kept
    seq = TauLeapingSampler(den, **kw).sample(x, seed=3)
    pit = PITSampler(den, window=8, **kw).sample(x, seed=3)
    assert torch.equal(seq.tokens, pit.tokens) and pit.exact
    assert pit.rounds < seq.rounds
    assert torch.equal(seq.tokens[1, : len(prompt)], x[1, : len(prompt)])
    assert not (seq.tokens == tok.mask_token_id).any() and not (seq.tokens == tok.pad_token_id).any()
    x = torch.full((1, text.LENGTH), tok.mask_token_id)  # the trained length
    kw = dict(num_steps=2 * text.LENGTH, **den.sampler_kwargs())
    seq = TauLeapingSampler(den, **kw).sample(x, seed=0)
    pit = PITSampler(den, window=16, **kw).sample(x, seed=0)
    assert torch.equal(seq.tokens, pit.tokens) and pit.rounds < seq.rounds


def test_float64_model_is_batch_invariant_and_runs_at_256(tok, model):
    assert model.dtype == torch.float64 and not model.training
    den = text.text_denoiser(model, tok)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, len(tok), (5, 40), generator=g)
    x = torch.where(torch.rand(5, 40, generator=g) < 0.6, tok.mask_token_id, x)
    assert check_batch_invariance(den, x, torch.rand(5, generator=g))
    assert den.probe(256, batch=1) == len(tok)  # position embeddings cover L = 256


def test_misconfigured_adapter_is_a_clear_error(tok, model):
    with pytest.raises(ValueError, match="mask_id=3, but model.config.mask_token_id=2"):
        HFMaskedLM(model, mask_id=3)
    den = HFMaskedLM(model, mask_id=tok.mask_token_id, vocab_size=4000)
    with pytest.raises(ValueError, match="vocab mismatch: the model returned V=4096"):
        den.probe(8)
    with pytest.raises(ValueError, match="suppress_ids"):
        text.text_denoiser(model, tok, suppress_ids=[tok.mask_token_id])


class ConstantLM(torch.nn.Module):
    """A causal LM whose next-token distribution is ``probs`` whatever the context."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.tensor(probs, dtype=torch.float64).log()
        self.config = transformers.PretrainedConfig(vocab_size=len(probs))

    def forward(self, input_ids):
        return transformers.modeling_outputs.CausalLMOutput(logits=self.logits.expand(*input_ids.shape, -1))


def test_metrics_by_hand():
    # entropy of each row's token histogram, averaged: log 2, 0, and (3/4, 1/4)
    assert text.unigram_entropy(torch.tensor([[7, 7, 9, 9]])) == pytest.approx(math.log(2), abs=1e-12)
    assert text.unigram_entropy(torch.tensor([[5, 5, 5, 5]])) == 0.0
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert text.unigram_entropy(torch.tensor([[1, 2, 1, 2], [4, 4, 4, 3]])) == pytest.approx((math.log(2) + h) / 2)
    # generative perplexity: the first token is not scored; the others cost log 2, log 4, log 8
    lm = ConstantLM([0.5, 0.25, 0.125, 0.125])
    x = torch.tensor([[0, 0, 1, 2]])
    assert text.sequence_nll(lm, x).tolist() == pytest.approx([6 * math.log(2)])
    assert text.generative_perplexity(lm, x) == pytest.approx(4.0)
    assert text.generative_perplexity(lm, torch.tensor([[0, 0, 0], [1, 1, 1]]), batch=1) == pytest.approx(
        math.exp((2 * math.log(2) + 2 * math.log(4)) / 4))
    assert text.generative_perplexity(ConstantLM([0.25] * 4), torch.randint(0, 4, (3, 9))) == pytest.approx(4.0)
    with pytest.raises(ValueError, match=r"ids in \[0, 4\)"):
        text.generative_perplexity(lm, torch.tensor([[0, 4]]))


def test_nelbo_of_a_uniform_model():
    """A model uniform over the C clean tokens it may predict scores (1/t) (masked / L) log C per row:
    log C in expectation (E[masked / L] = (1 - eps) t), here within the Monte-Carlo error."""

    class Uniform(torch.nn.Module):
        def forward(self, input_ids):
            return transformers.modeling_outputs.MaskedLMOutput(logits=torch.zeros(*input_ids.shape, 10))

    x = torch.randint(3, 10, (256, 32), generator=torch.Generator().manual_seed(0))
    nelbo = text.heldout_nelbo(Uniform(), x, mask_id=2, repeats=8)  # [MASK] = 2 and [PAD] = 0 excluded: C = 8
    assert nelbo == pytest.approx(math.log(8), rel=0.03)
    # the training estimate averages the cross-entropy over the k masked positions: log C for every row
    den = text.MaskedLMDenoiser(Uniform(), mask_id=2)
    assert float(text.masked_count_loss(den, x[:8], torch.Generator().manual_seed(0))) == pytest.approx(math.log(8))


def test_corpus_parsing_split_and_windows(tok):
    raw = "First\tline\nsecond  line.\n%\n\n%\n_\x08Und_\x08e_\x08r\x07lined\n%\n"
    assert text.parse_fortunes(raw) == ["First line second line.", "Underlined"]
    held = text.read_quotes()
    assert all(text.is_heldout(q) for q in held) and len(set(held)) == len(held) > 500
    value = [int(hashlib.sha256(f"0:quote {i}".encode()).hexdigest()[:16], 16) % 100 for i in range(2000)]
    assert [text.is_heldout(f"quote {i}") for i in range(2000)] == [v < 5 for v in value] and 5 in value
    assert sum(v < 5 for v in value) == pytest.approx(100, abs=30)
    with gzip.open(text.HELDOUT_FILE, "rt") as f:
        assert f.read().count("\n") == len(held)
    stream = text.pack_stream([[5, 6], [7]], sep_id=1)
    assert stream.tolist() == [5, 6, 1, 7, 1] and text.chunk_stream(stream, 2).tolist() == [[5, 6], [1, 7]]
    windows = text.heldout_windows(tok)
    assert windows.shape[1] == 128 and windows.shape[0] > 200
    first = text.decode(tok, windows[:1])[0]
    assert first.startswith(held[0]) and first.split(" | ")[1] == held[1]


def test_demo_text(capsys):
    from pit_sampler.__main__ import main

    res = main(["demo", "--model", "text", "--batch", "1", "--steps", "32", "--window", "4", "--no-progress"])
    assert res["identical"]
    names = list(res["runs"])
    assert names[0] == "tau-leaping" and len(names) == 5
    seq, pit = res["metrics"][names[0]], res["metrics"][names[1]]
    assert seq == pit  # identical tokens, identical scores
    assert not res["runs"][names[3]]["result"].exact  # mode="fixed" with 1 iteration is approximate
    assert set(res["metrics"]) == {*names, "held-out text"} and res["metrics"]["held-out text"]["n"] > 200
    out = capsys.readouterr().out
    assert "gen-PPL" in out and "entropy" in out and "held-out NELBO" in out and "  > " in out


def test_demo_continues_a_prompt_and_fills_its_gap(capsys):
    """``python -m pit_sampler demo --model text --prompt ...``: text in, text out, both samplers."""
    from pit_sampler.__main__ import main

    out = main(["demo", "--model", "text", "--prompt", "A friend in need <gap:3> indeed. Never", "--max-new-tokens", "4",
                "--steps", "64", "--window", "8"])
    printed = capsys.readouterr().out
    assert out["identical"] and "identical: yes" in printed
    for result in out["outputs"].values():
        text = result.texts[0]
        assert text.startswith("A friend in need") and "indeed. Never" in text
        assert int(result.generated[0].sum()) == 3 + 4  # the gap's tokens and the continuation


def test_demo_prompt_errors_exit_2_like_sample(tok, model, monkeypatch, capsys):
    """generate()'s errors on a ``demo --model text --prompt`` run are usage errors (exit 2, the
    message, no traceback), as for ``sample``. The loaded model is reused (no reloading)."""
    from pit_sampler.__main__ import main

    monkeypatch.setattr(text, "load_tokenizer", lambda: tok)
    monkeypatch.setattr(text, "load_text_model", lambda: model)
    for argv, message in [
        (["--prompt", "a <gap:0> b"], "prompts: a gap needs at least one token"),
        (["--prompt", "x", "--max-new-tokens", "1000"], "max_position_embeddings=512"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--model", "text", "--steps", "8", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv
