"""The BD3-LM objective of the block-causal text model (pit_sampler/models/text_blocks.py) on a tiny
random Qwen2 with a local layer in float64: the training pass computes the conditionals the samplers use, the mask is
the one the module docstring states, and the two NELBO estimators agree."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pit_sampler.block_causal import HFBlockCausalLM  # noqa: E402
from pit_sampler.models import text_blocks  # noqa: E402

V, MASK, PAD, L, BL = 37, 36, 0, 12, 4


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                      use_sliding_window=True, sliding_window=3,
                                      layer_types=["sliding_attention", "full_attention"])  # as the shipped model
    return transformers.Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float64).eval()


def clean_tokens(n, gen):
    return torch.randint(1, MASK, (n, L), generator=gen)  # neither the mask nor the pad


def test_the_training_mask():
    """Query i, key j over [x_t ; x_0] (blocks b = (i mod L) // bl): noisy sees noisy of its own block
    and clean of earlier blocks; clean sees clean up to its own block; clean never sees noisy."""
    M = text_blocks.bd3_training_mask(L, BL)
    for i in range(2 * L):
        for j in range(2 * L):
            bi, bj, noisy_i, noisy_j = (i % L) // BL, (j % L) // BL, i < L, j < L
            want = (bj == bi if noisy_j else bj < bi) if noisy_i else (not noisy_j and bj <= bi)
            assert bool(M[i, j]) == want, (i, j)


def test_the_training_pass_computes_the_conditionals_the_samplers_use():
    """The noisy half of one [x_t ; x_0] pass at block k equals the adapter's plain call on the clean
    prefix x_0[:s_k] followed by the noisy block (what block sampling asks the model), for every block."""
    model, g = tiny_model(), torch.Generator().manual_seed(1)
    x0 = clean_tokens(3, g)
    xt = torch.where(torch.rand(3, L, generator=g) < 0.5, MASK, x0)
    train = text_blocks.noisy_half_logits(model, xt, x0, BL, MASK, suppress_ids=(PAD,))
    den = HFBlockCausalLM(model, block_length=BL, mask_id=MASK, suppress_ids=[PAD])
    for s in range(0, L, BL):
        row = torch.cat([x0[:, :s], xt[:, s : s + BL]], 1)
        with torch.no_grad():
            sample = den._forward(row, None, None)[:, s:]
        keep = [v for v in range(V) if v not in (MASK, PAD)]
        torch.testing.assert_close(train[:, s : s + BL, keep], sample[..., keep], rtol=0, atol=1e-10)
    assert torch.isinf(train[..., [MASK, PAD]]).all()


@torch.no_grad()
def test_the_count_and_time_estimators_agree():
    """block_count_loss (training) and block_time_loss (held-out NELBO) estimate the same bound: their
    means over 300 draws each agree within 4 combined standard errors (false failure ~6e-5). Seen
    failing with the count form's 1/k replaced by 1/n, and with the time form's 1/t weight dropped."""
    model, g = tiny_model(2), torch.Generator().manual_seed(3)
    x0 = clean_tokens(16, torch.Generator().manual_seed(4))
    count = torch.tensor([float(text_blocks.block_count_loss(model, x0, BL, MASK, g)) for _ in range(300)])
    time = torch.tensor([float(text_blocks.block_time_loss(model, x0, BL, MASK, g)) for _ in range(300)])
    se = (count.var() / 300 + time.var() / 300).sqrt()
    assert abs(count.mean() - time.mean()) < 4 * se, (count.mean(), time.mean(), se)
    assert se < 0.02 * time.mean()  # the comparison has power: the estimates are tight


def test_block_length_must_divide_the_sequence():
    with pytest.raises(ValueError, match="multiple of block_length=5"):
        text_blocks.block_count_loss(tiny_model(), clean_tokens(2, torch.Generator().manual_seed(0)), 5, MASK)


# -- the shipped model (pit_sampler/models/weights/text/bd3lm) ---------------------------------------

needs_model = pytest.mark.skipif(not (text_blocks.BLOCK_MODEL_DIR / "config.json").is_file(),
                                 reason="the block model is not shipped")


@pytest.fixture(scope="module")
def shipped():
    from pit_sampler.models import text

    tok = text.load_tokenizer()
    model = text_blocks.load_block_model()
    return tok, model, text_blocks.block_denoiser(model, tok)


@needs_model
def test_the_shipped_model_loads_with_plain_transformers():
    model = transformers.AutoModelForCausalLM.from_pretrained(str(text_blocks.BLOCK_MODEL_DIR))
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.block_length == 16
    assert model.config.mask_token_id == 2 and list(model.config.block_lengths) == [16, 32]
    den = HFBlockCausalLM.from_pretrained(str(text_blocks.BLOCK_MODEL_DIR), dtype=torch.float64, local_files_only=True)
    assert den.block_length == 16 and den.mask_id == 2 and 0 in den.suppress_ids  # [PAD] is never generated


@needs_model
@pytest.mark.parametrize("block_length", [16, 32])
def test_cached_pit_equals_uncached_sequential_on_the_shipped_model(shipped, block_length):
    """Exact Picard with the cache gives the tokens of the sequential sampler without it (a prompt, a
    ragged batch) in fewer rounds, and the cached sequential sampler its tokens for fewer positions;
    the same with [SEP] as EOS."""
    import pit_sampler as ps

    tok, model, _ = shipped
    den = text_blocks.block_denoiser(model, tok, block_length)
    x = torch.full((3, 80), tok.mask_token_id)
    prompt = tok("A fool and his money are soon parted.", add_special_tokens=False).input_ids
    x[0, : len(prompt)] = torch.tensor(prompt)  # ends inside block 0
    x[2, 40:44] = torch.tensor([100, 200, 300, 400])
    kw = dict(num_steps=64, **den.sampler_kwargs())
    seq = ps.TauLeapingSampler(den, cache=False, **kw).sample(x, seed=3)
    cached = ps.TauLeapingSampler(den, **kw).sample(x, seed=3)
    pit = ps.PITSampler(den, window=4, **kw).sample(x, seed=3)
    assert torch.equal(pit.tokens, seq.tokens) and torch.equal(cached.tokens, seq.tokens)
    assert pit.rounds < seq.rounds == cached.rounds and cached.positions < seq.positions
    kw["eos_id"] = tok.sep_token_id  # the end of a quotation: frequent, so samples stop early
    seq = ps.TauLeapingSampler(den, cache=False, **kw).sample(x, seed=3)
    pit = ps.PITSampler(den, window=4, **kw).sample(x, seed=3)
    assert torch.equal(pit.tokens, seq.tokens) and torch.equal(pit.lengths, seq.lengths)
    assert int(seq.lengths.min()) < 80


@needs_model
def test_generate_samples_the_block_model_block_by_block(shipped):
    """generate() on the plain Hugging Face module: wrapped as a block-causal model, sampled block by
    block with the cache, rows stop at [SEP] (the end of a quotation); PIT equals sequential."""
    from pit_sampler.blocks import BlockResult
    from pit_sampler.generate import generate

    tok, model, _ = shipped
    outs = {name: generate(model, tok, ["A fool and his money", "Never"], max_new_tokens=96, num_steps=32,
                           sampler=name, seed=1) for name in ("sequential", "pit")}
    assert torch.equal(outs["sequential"].sequences, outs["pit"].sequences)
    for out in outs.values():
        assert all(isinstance(r, BlockResult) for r in out.results)
        assert out.texts[0].startswith("A fool and his money") and out.texts[1].startswith("Never")
        assert all(int(r.lengths.max()) < r.tokens.shape[1] for r in out.results)  # rows stopped at [SEP]
        assert all(r.block_rounds[-1] == 0 for r in out.results)  # and made no call for the last block


@needs_model
def test_demo_text_blocks(capsys):
    from pit_sampler.__main__ import main

    res = main(["demo", "--model", "text-blocks", "--batch", "1", "--steps", "16", "--window", "4", "--no-progress"])
    assert res["identical"] and len(res["runs"]) == 4
    out = capsys.readouterr().out
    assert "positions/round" in out and "held-out NELBO: block model" in out
