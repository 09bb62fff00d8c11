"""HFMaskedLM on real Hugging Face classes (tiny random configs, no downloads): the output projection
is found, positions give the full rows bit for bit, the projection runs only on the selected rows,
and the adapter traces under torch.compile without graph breaks. The user's path with a tokenizer
(built here with ``tokenizers``): padded ragged batches with per-call attention masks give each row's
tokens alone, special tokens and padded-vocabulary ids are never sampled, fp32 and bf16 run,
misconfigurations raise, and :func:`resolve_sampler_kwargs` merges an adapter's settings. Skipped
without transformers."""

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from positions_checks import assert_compiles, assert_positions_match  # noqa: E402
from tiers import tiered  # noqa: E402

from pit_sampler import PITSampler, TauLeapingSampler, sample_seeds  # noqa: E402
from pit_sampler.adapters import HFMaskedLM, OutputProjection, check_batch_invariance, resolve_sampler_kwargs  # noqa: E402
from pit_sampler.schedules import Linear, LogLinear  # noqa: E402

V, H, MASK = 101, 32, 100  # V not a power of two
SMALL = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)


def bert():
    return transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=V, hidden_size=H, **SMALL))


def roberta():
    return transformers.RobertaForMaskedLM(transformers.RobertaConfig(vocab_size=V, hidden_size=H, pad_token_id=1, **SMALL))


def distilbert():
    config = transformers.DistilBertConfig(vocab_size=V, dim=H, n_layers=2, n_heads=2, hidden_dim=48,
                                           max_position_embeddings=64)
    return transformers.DistilBertForMaskedLM(config)


def modernbert():
    config = transformers.ModernBertConfig(vocab_size=V, hidden_size=H, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                           cls_token_id=1, sep_token_id=2, mask_token_id=MASK, **SMALL)
    return transformers.ModernBertForMaskedLM(config)


def llama(vocab=V, **ids):
    """A decoder-only model with the causal mask off (as LLaDA): with ``config.is_causal = False``
    transformers builds a bidirectional mask (test_llama_runs_bidirectional)."""
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=H, num_key_value_heads=1, is_causal=False,
                                      **SMALL, **ids)
    return transformers.LlamaForCausalLM(config)


def eurobert(vocab=V, mask=MASK, **ids):
    config = transformers.EuroBertConfig(vocab_size=vocab, hidden_size=H, num_key_value_heads=1, mask_token_id=mask,
                                         **{"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **ids}, **SMALL)
    return transformers.EuroBertForMaskedLM(config)


MODELS = {"bert": bert, "roberta": roberta, "distilbert": distilbert, "modernbert": modernbert, "llama": llama}
if hasattr(transformers, "EuroBertForMaskedLM"):
    MODELS["eurobert"] = eurobert


def build(name, dtype=torch.float32):
    torch.manual_seed(0)
    return MODELS[name]().to(dtype).eval()


def states(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, MASK, (n, length), generator=g)
    return torch.where(torch.rand(n, length, generator=g) < 0.5, MASK, x), torch.rand(n, generator=g)


@pytest.mark.parametrize("name,dtype", tiered([(n, d) for n in sorted(MODELS) for d in (torch.float32, torch.bfloat16)],
                                               default={("bert", torch.bfloat16), ("llama", torch.float32),
                                                        ("modernbert", torch.float32)}))
def test_positions_are_the_full_rows(name, dtype):
    model = build(name, dtype)
    adapter = HFMaskedLM(model, mask_id=MASK, suppress_ids=[0])
    assert adapter.projection.module is model.get_output_embeddings() and adapter.model_positions
    for n, length in ((3, 10), (1, 1), (1, 7)):
        x, t = states(n, length)
        full = assert_positions_match(adapter, x, t)
        # the same function as the bare model: only the matmul's rounding may differ
        bare = model(input_ids=x).logits
        bare[..., 0] = -torch.inf
        assert full.dtype == dtype and torch.allclose(full.float(), bare.float(), rtol=0.02, atol=0.02)


def test_projection_runs_on_the_selected_rows_only():
    model = build("bert")
    adapter = HFMaskedLM(model, mask_id=MASK, head_block=4)
    projection = model.get_output_embeddings()
    seen = []
    forward = projection.forward
    projection.forward = lambda h: seen.append(h.shape[:-1].numel()) or forward(h)
    x, t = states(3, 10)
    adapter(x, t, positions=torch.tensor([29, 0, 0, 11, 5]))
    assert seen == [0, 4, 4]  # the module's own call gets no rows; then two blocks for M = 5, not 30 rows
    seen.clear()
    adapter(x, t)
    assert seen == [0] + [4] * 8  # the full form: 30 rows in blocks of 4
    seen.clear()
    model(input_ids=x)  # outside an adapter call the hooks do nothing
    assert seen == [30]
    adapter.projection.remove()  # detached: the module is plain again, the model computes in full
    seen.clear()
    adapter(x, t)
    assert seen == [30]


def test_positions_need_every_position_at_the_projection():
    adapter = HFMaskedLM(build("llama"), mask_id=MASK, model_kwargs={"logits_to_keep": 1})
    x, t = states(2, 5)
    with pytest.raises(ValueError, match=r"got 2 rows, expected one per position \(N \* L = 10\)"):
        adapter(x, t, positions=torch.tensor([3]))


def test_no_linear_projection_means_no_split():
    class Wrapped(torch.nn.Module):  # an output "embedding" that is not an nn.Linear
        def __init__(self):
            super().__init__()
            self.inner = build("bert")

        def get_output_embeddings(self):
            return None

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids)

    adapter = HFMaskedLM(Wrapped(), mask_id=MASK, vocab_size=V)
    assert adapter.projection is None and not adapter.model_positions
    assert_positions_match(adapter, *states(2, 6))
    with pytest.raises(TypeError, match="must be an nn.Linear"):
        OutputProjection(torch.nn.Embedding(4, 4))
    with pytest.raises(ValueError, match="head_block"):
        HFMaskedLM(build("bert"), mask_id=MASK, head_block=0)


@pytest.mark.parametrize("name", ["bert", "modernbert", "llama"])  # RoBERTa and DistilBERT trace the same way
def test_compiles_without_graph_breaks(name):
    adapter = HFMaskedLM(build(name), mask_id=MASK)
    x, t = states(2, 6)
    assert_compiles(adapter, x, t)
    assert_compiles(adapter, x, t, positions=torch.tensor([0, 7, 7, 11]))


# ---------------------------------------------------------------------------------------------
# the user's path: a tokenizer, padding, special tokens, settings
# ---------------------------------------------------------------------------------------------
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "the a cat dog sat on mat and ran to big small red blue is was".split()
PAD, UNK, CLS, SEP, TMASK = range(5)
TV = 24  # the models' vocabulary: 21 tokenizer ids, padded to 24 (as ModernBERT pads 50280 to 50368)


def make_tokenizer():
    """A word-level tokenizer (``tokenizers``, no download): 5 special tokens, 16 words, BERT's template."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tk = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    tk.decoder = decoders.WordPiece()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


TOK_IDS = dict(pad_token_id=PAD)
TOK_MODELS = {
    "bert": lambda: transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=TV, hidden_size=H, **TOK_IDS,
                                                                          **SMALL)),
    "roberta": lambda: transformers.RobertaForMaskedLM(transformers.RobertaConfig(vocab_size=TV, hidden_size=H,
                                                                                   **TOK_IDS, **SMALL)),
    "distilbert": lambda: transformers.DistilBertForMaskedLM(transformers.DistilBertConfig(
        vocab_size=TV, dim=H, n_layers=2, n_heads=2, hidden_dim=48, max_position_embeddings=64, **TOK_IDS)),
    "modernbert": lambda: transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
        vocab_size=TV, hidden_size=H, bos_token_id=CLS, eos_token_id=SEP, cls_token_id=CLS, sep_token_id=SEP,
        mask_token_id=TMASK, **TOK_IDS, **SMALL)),
    "llama": lambda: llama(TV, **TOK_IDS),
}
if "eurobert" in MODELS:
    TOK_MODELS["eurobert"] = lambda: eurobert(TV, TMASK, bos_token_id=CLS, eos_token_id=SEP, **TOK_IDS)


def build_tok_model(name, dtype=torch.float64):
    torch.manual_seed(1)
    return TOK_MODELS[name]().to(dtype).eval()


def adapter_for(name, model, tok, **kwargs):
    """``HFMaskedLM`` with the tokenizer; Llama's tokenizer here has a mask token, as LLaDA's does."""
    return HFMaskedLM(model, tokenizer=tok, **kwargs)


# ragged prompts ([CLS] ... [SEP], masks to generate), padded on the right to the longest
RAGGED = [[CLS, 5, 7, TMASK, TMASK, TMASK, 9, SEP], [CLS, 6, TMASK, TMASK, SEP], [CLS] + [TMASK] * 6 + [SEP, TMASK]]


def padded(rows):
    L = max(map(len, rows))
    return torch.tensor([r + [PAD] * (L - len(r)) for r in rows])


def sample_both(den, x, seeds, steps=24, window=4):
    kw = resolve_sampler_kwargs(den, {"num_steps": steps})
    seq = TauLeapingSampler(den, **kw).sample(x, seed=seeds)
    pit = PITSampler(den, window=window, **kw).sample(x, seed=seeds)
    return seq.tokens, pit.tokens


@pytest.mark.parametrize("name", tiered(sorted(TOK_MODELS), default={"bert", "llama"}))
def test_padded_ragged_batch_gives_each_row_alone(name):
    """float64 (batch-invariant): the padded batch, sampled with per-call attention masks, gives every
    row the tokens it gets alone and unpadded (same per-row seed), in PIT and sequential alike; pad
    positions stay pad. Without pad_id the padding is attended to and rows change."""
    tok = make_tokenizer()
    model = build_tok_model(name)
    den = adapter_for(name, model, tok)
    assert den.pad_id == PAD and den.mask_id == TMASK
    x, seeds = padded(RAGGED), sample_seeds(3, len(RAGGED))
    seq, pit = sample_both(den, x, seeds)
    assert torch.equal(seq, pit)
    assert bool((seq[x == PAD] == PAD).all()) and torch.equal(seq[x != TMASK], x[x != TMASK])
    for i, row in enumerate(RAGGED):
        alone, _ = sample_both(den, torch.tensor([row]), seeds[i : i + 1])
        assert torch.equal(alone[0], seq[i, : len(row)]), f"row {i}"
    # the logits behind it: each row's equal its logits alone with the mask, and differ without it
    # (the random tiny models are nearly uniform, so their tokens rarely show the difference)
    unmasked = adapter_for(name, model, tok, pad_id=None)
    t = torch.ones(len(RAGGED))
    with_mask, without = den(x, t), unmasked(x, t)
    for i, row in enumerate(RAGGED):
        alone = den(torch.tensor([row]), t[:1])[0]
        assert torch.equal(with_mask[i, : len(row)], alone)
        if len(row) < x.shape[1]:
            assert not torch.allclose(without[i, : len(row)], alone, rtol=0, atol=1e-6)


def test_attention_mask_is_built_per_call():
    """Each call's mask comes from its own rows: the model gets ``x != pad_id`` for exactly the rows it
    is called on (PIT windows and finished samples change them)."""
    tok = make_tokenizer()
    model = build_tok_model("bert")
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append((kwargs["input_ids"], kwargs["attention_mask"])),
                                    with_kwargs=True)
    den = HFMaskedLM(model, tokenizer=tok)
    x = padded(RAGGED)
    # geometric grid: calls of 12, 12 and 1 rows (one sample's last step alone); the cosine default: 12, 12
    PITSampler(den, window=4, num_steps=16, grid="geometric", **den.sampler_kwargs()).sample(x, seed=0)
    assert len({ids.shape[0] for ids, _ in seen}) > 1  # the row count changed between calls
    for ids, mask in seen:
        assert torch.equal(mask, (ids != PAD).long())


def test_fixed_per_row_inputs_are_rejected():
    tok, model = make_tokenizer(), build_tok_model("bert")
    with pytest.raises(ValueError, match=r"model_kwargs\['attention_mask'\] is a tensor of shape \(3, 8\).*pad_id"):
        HFMaskedLM(model, mask_id=TMASK, pad_id=None, model_kwargs={"attention_mask": torch.ones(3, 8)})
    with pytest.raises(ValueError, match=r"model_kwargs\['position_ids'\]"):
        HFMaskedLM(model, tokenizer=tok, model_kwargs={"position_ids": torch.arange(8)[None]})
    with pytest.raises(ValueError, match="holds 'attention_mask', but pad_id=0"):
        HFMaskedLM(model, tokenizer=tok, model_kwargs={"attention_mask": None})
    with pytest.raises(ValueError, match="input_ids"):
        HFMaskedLM(model, tokenizer=tok, model_kwargs={"input_ids": None})
    HFMaskedLM(model, tokenizer=tok, model_kwargs={"output_hidden_states": False, "scale": torch.tensor(1.0)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["bert", "modernbert"])
def test_special_and_padded_vocab_ids_are_never_sampled(name, dtype):
    """The output bias pushes the special tokens and the ids past the tokenizer (21..23) far above the
    words: with the tokenizer they are suppressed and never drawn, in fp32 and bf16 (valid ids, no mask
    left; exactness, PIT equal to sequential, needs a batch-invariant model, which these fp32/bf16 CPU
    runs are not promised to be); without suppression they are drawn."""
    tok, model = make_tokenizer(), build_tok_model(name, dtype)
    banned = [PAD, UNK, CLS, SEP] + list(range(len(tok), TV))
    with torch.no_grad():
        model.get_output_embeddings().bias[banned] += 30.0
    den = HFMaskedLM(model, tokenizer=tok)
    assert set(den.suppress_ids) == set(banned) and TMASK not in den.suppress_ids and den.vocab_size == TV
    x = padded(RAGGED)
    _, tokens = sample_both(den, x, sample_seeds(0, 3))
    drawn = tokens[x == TMASK]
    assert bool((drawn >= len(SPECIALS)).all() & (drawn < len(tok)).all()), drawn.tolist()
    assert bool((tokens[x == PAD] == PAD).all())
    loose = HFMaskedLM(model, tokenizer=tok, suppress_special=False)
    assert loose.suppress_ids == tuple(range(len(tok), TV))  # the padded ids only
    _, tokens = sample_both(loose, x, sample_seeds(0, 3))
    assert bool(torch.isin(tokens[x == TMASK], torch.tensor([PAD, UNK, CLS, SEP])).any())
    keep = HFMaskedLM(model, tokenizer=tok, keep_ids=[SEP])  # e.g. a model that generates its own end of text
    assert SEP not in keep.suppress_ids and CLS in keep.suppress_ids


def test_misconfigured_adapter_raises():
    tok, model = make_tokenizer(), build_tok_model("bert")
    with pytest.raises(ValueError, match="mask_id=5, but the tokenizer's mask_token_id=4"):
        HFMaskedLM(model, tokenizer=tok, mask_id=5)
    small = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=16, hidden_size=H, **SMALL))
    with pytest.raises(ValueError, match="vocab mismatch: the tokenizer has 21 tokens, but the model has vocab_size=16"):
        HFMaskedLM(small, tokenizer=tok)
    with pytest.raises(ValueError, match="model.config.mask_token_id=4"):
        HFMaskedLM(build_tok_model("modernbert"), mask_id=7)
    with pytest.raises(ValueError, match="mask_id is needed"):
        HFMaskedLM(model)  # BERT's config has no mask token and there is no tokenizer
    with pytest.raises(ValueError, match="pad_id=4 is the mask id"):
        HFMaskedLM(model, tokenizer=tok, pad_id=TMASK)
    with pytest.raises(ValueError, match="pad_id must be"):
        HFMaskedLM(model, tokenizer=tok, pad_id="left")
    with pytest.raises(ValueError, match="pad_id=99 is out of range"):
        HFMaskedLM(model, tokenizer=tok, pad_id=99)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        HFMaskedLM(model, mask_id=TMASK, suppress_special=True)
    with pytest.raises(TypeError, match="tokenizer must be"):
        HFMaskedLM(model, mask_id=TMASK, tokenizer="bert-base-uncased")
    wrong = HFMaskedLM(model, mask_id=TMASK, vocab_size=30)  # the logits are 24 wide
    with pytest.raises(ValueError, match="vocab mismatch: the model returned V=24"):
        wrong.probe(6)
    with pytest.raises(ValueError, match="vocab mismatch"):
        TauLeapingSampler(wrong, num_steps=8, **wrong.sampler_kwargs()).sample(torch.full((1, 6), TMASK), seed=0)


def test_llama_runs_bidirectional():
    model = build_tok_model("llama")
    x = torch.tensor([[CLS, 5, 6, 7, 8]])
    y = x.clone()
    y[0, -1] = 9
    assert not torch.equal(model(input_ids=x).logits[0, 0], model(input_ids=y).logits[0, 0])  # sees the last token


def test_resolve_sampler_kwargs():
    tok, model = make_tokenizer(), build_tok_model("bert")
    den = HFMaskedLM(model, tokenizer=tok, schedule="linear")  # LLaDA's schedule
    kw = resolve_sampler_kwargs(den, {"num_steps": 8, "vocab_size": None})
    assert kw.keys() == {"num_steps", "mask_id", "vocab_size", "schedule", "parametrization"}
    assert (kw["mask_id"], kw["vocab_size"], kw["parametrization"]) == (TMASK, TV, "mean")
    assert isinstance(kw["schedule"], Linear)
    for same in ("linear", Linear(), den.schedule):
        assert resolve_sampler_kwargs(den, {"schedule": same})["schedule"] is same
    for key, value, shown in [("schedule", "loglinear", "schedule='loglinear'.*has schedule=Linear()"),
                              ("schedule", LogLinear(), "schedule=LogLinear"), ("mask_id", 5, "mask_id=5.*mask_id=4"),
                              ("vocab_size", 21, "vocab_size=21.*vocab_size=24"),
                              ("parametrization", "score", "parametrization='score'.*parametrization='mean'")]:
        with pytest.raises(ValueError, match=shown):
            resolve_sampler_kwargs(den, {key: value})
    assert resolve_sampler_kwargs(den, {}, keys=("mask_id",)) == {"mask_id": TMASK}
    plain = lambda x, t: None  # noqa: E731 (no settings of its own)
    assert resolve_sampler_kwargs(plain, {"mask_id": 3}) == {"mask_id": 3}
    with pytest.raises(TypeError, match="given must be a dict"):
        resolve_sampler_kwargs(den, [("mask_id", 4)])
    # the case: a schedule beside **den.sampler_kwargs() is a duplicate keyword; merged, it is one
    with pytest.raises(TypeError, match="multiple values"):
        TauLeapingSampler(den, num_steps=8, schedule="linear", **den.sampler_kwargs())
    sampler = TauLeapingSampler(den, **resolve_sampler_kwargs(den, {"num_steps": 8, "schedule": "linear"}))
    assert sampler.config.schedule == "linear" and sampler.config.vocab_size == TV


def test_training_mode_warns():
    tok, model = make_tokenizer(), build_tok_model("bert")
    den = HFMaskedLM(model, tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_sampler_kwargs(den, {})  # eval mode: no warning
    model.bert.encoder.layer[0].attention.self.dropout.train()  # one submodule left in training mode
    with pytest.warns(UserWarning, match="BertForMaskedLM.*1 module\\(s\\) in training mode"):
        resolve_sampler_kwargs(den, {})
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        resolve_sampler_kwargs(den, {})
    from pit_sampler.truncation import TruncatedDenoiser

    with pytest.warns(UserWarning, match="training mode"):  # found through wrappers
        resolve_sampler_kwargs(TruncatedDenoiser(den, top_k=3), {})


def test_from_pretrained_and_batch_invariance(tmp_path):
    tok, model = make_tokenizer(), build_tok_model("modernbert", torch.float32)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    den = HFMaskedLM.from_pretrained(str(tmp_path), dtype=torch.float64, local_files_only=True)
    assert not den.model.training and den.model.dtype == torch.float64 and den.mask_id == TMASK
    assert den.pad_id == PAD and len(den.tokenizer) == len(tok) and set(range(21, TV)) <= set(den.suppress_ids)
    x = padded(RAGGED)
    assert check_batch_invariance(den, x, torch.ones(3))


def test_padding_adapter_compiles_without_graph_breaks():
    den = HFMaskedLM(build_tok_model("distilbert", torch.float32), tokenizer=make_tokenizer())
    x = padded(RAGGED)
    assert_compiles(den, x, torch.ones(3))
    assert_compiles(den, x, torch.ones(3), positions=torch.tensor([3, 4, 4, 20]))
