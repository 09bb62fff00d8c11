"""HFBlockCausalLM (pit_sampler/block_causal.py) on tiny random Llama and Qwen2 models in float64.

The reference is independent of the adapter: the plain ``*ForCausalLM`` forward on a whole sequence
(prefix, the block, and random later tokens that the mask must hide) with a block-causal mask built
here by broadcasting ``j // bl <= i // bl``, logits sliced. Covered: the uncached call (full output
and positions), incremental ``encode`` (block by block, several blocks at once, a partial last block)
and the cached call against the reference for ``W`` in {1, 3} slices and ``B'`` in {1, 2} samples
(permuted, a subset after ``select``), positions subsets, the cache left unchanged by calls, ``select``,
``block_length = 1``, batch invariance of the cached call, bad arguments and refused models.

Tolerances: ``sdpa`` in float64 agrees to ``1e-10`` (measured: bit for bit on CPU). Transformers'
eager attention takes its softmax in float32 (``softmax(..., dtype=torch.float32)``), so a float64
eager model is only float32-accurate there: rows laid out differently (a folded slice, a longer
key axis) differ by ~1e-8, hence ``1e-6`` for eager.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pit_sampler.block_causal import BlockCache, HFBlockCausalLM, block_causal_mask  # noqa: E402

V, MASK = 37, 36  # V not a power of two; the mask is the last id
LOCAL = dict(layer_types=["sliding_attention", "full_attention"], use_sliding_window=True, sliding_window=3)
ARCHS = {"llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig, {}),
         "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config, {}),
         "qwen2-local": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config, LOCAL)}  # a local layer
IMPLS = ("sdpa", "eager")
TOL = {"sdpa": 1e-10, "eager": 1e-6}
MODELS = [(a, i) for a in ARCHS for i in IMPLS]


def build(arch="llama", impl="sdpa", seed=0, **config):
    """A fresh tiny model (its own config: ``_from_config`` writes the attention implementation into
    the config object it is given, so models must not share one)."""
    cls, cfg, extra = ARCHS[arch]
    torch.manual_seed(seed)
    c = cfg(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=64, **{**extra, **config})
    return cls._from_config(c, attn_implementation=impl, dtype=torch.float64).eval()


_DENS = {}


def den_for(arch, impl, bl=4):
    if (arch, impl, bl) not in _DENS:
        _DENS[arch, impl, bl] = HFBlockCausalLM(build(arch, impl, seed=len(_DENS)), block_length=bl, mask_id=MASK)
    return _DENS[arch, impl, bl]


def tokens(*shape, gen):
    """Random ids in [0, V), masks included (never all zeros)."""
    return torch.randint(0, V, shape, generator=gen)


def reference(model, x, bl):
    """The plain model on ``x [N, L]`` under the hand-built block-causal mask (and, for a model with a
    local layer, that mask within ``|i - j| < sliding_window`` for it): float64 logits ``[N, L, V]``."""
    N, L = x.shape
    i = torch.arange(L)
    allowed = (i[None, :] // bl) <= (i[:, None] // bl)  # [query i, key j]

    def form(m):
        if model.config._attn_implementation == "eager":
            m = torch.zeros(L, L, dtype=torch.float64).masked_fill(~m, torch.finfo(torch.float64).min)
        return m.expand(N, 1, L, L)

    mask = form(allowed)
    if "sliding_attention" in (getattr(model.config, "layer_types", None) or ()):
        near = (i[None, :] - i[:, None]).abs() < model.config.sliding_window
        mask = {"full_attention": mask, "sliding_attention": form(allowed & near)}
    with torch.no_grad():
        return model(input_ids=x, attention_mask=mask, position_ids=i.expand(N, L), use_cache=False).logits


def raw(den, x, positions=None, cache=None, samples=None, start=None):
    """The adapter's float64 logits (before the public call's float32 cast), after the cached call's checks."""
    args = () if cache is None else den._check_cached(x, cache, samples, start)
    with torch.no_grad():
        return den._forward(x, None, positions, *args)


def cached_reference(den, prefix, blocks, samples, tail_gen):
    """Reference logits ``[R, n, V]`` of the cached call's rows: row ``u B' + b`` is the reference on
    ``cat(prefix[samples[b]], blocks[r], tail)`` at the block's positions, the tail random later tokens
    (blocks after this one, hidden by the mask) when the block is whole, else nothing (a partial block
    ends the sequence)."""
    R, n = blocks.shape
    s, Bp = prefix.shape[1], samples.numel()
    tail = tokens(R, 5 if n == den.block_length else 0, gen=tail_gen)
    rows = torch.cat([prefix[samples.repeat(R // Bp)], blocks, tail], dim=1)
    return reference(den.model, rows, den.block_length)[:, s:s + n]


def test_block_causal_mask_matches_definition():
    for length, bl in [(0, 3), (1, 1), (7, 1), (7, 3), (8, 4), (5, 9)]:
        want = torch.tensor([[j // bl <= i // bl for j in range(length)] for i in range(length)], dtype=torch.bool)
        want = want.reshape(length, length)
        got = block_causal_mask(length, bl)
        assert got.dtype == torch.bool and torch.equal(got, want)
    assert torch.equal(block_causal_mask(6, 1), torch.ones(6, 6, dtype=torch.bool).tril())
    assert block_causal_mask(6, 6).all()
    with pytest.raises(ValueError, match="block_length"):
        block_causal_mask(4, 0)
    with pytest.raises(TypeError, match="block_length"):
        block_causal_mask(4, 2.0)


@pytest.mark.parametrize("arch,impl", MODELS)
def test_uncached_matches_reference(arch, impl):
    den, gen = den_for(arch, impl), torch.Generator().manual_seed(1)
    x = tokens(3, 14, gen=gen)  # blocks [0, 4), [4, 8), [8, 12), [12, 14): partial
    ref = reference(den.model, x, 4)
    for e in (4, 8, 12, 14):  # prefix + a whole block (the sequence's last block may be partial)
        torch.testing.assert_close(raw(den, x[:, :e]), ref[:, :e], atol=TOL[impl], rtol=0)
    full = den(x, torch.ones(3))
    assert full.dtype == torch.float32 and full.shape == (3, 14, V)
    torch.testing.assert_close(full, ref.float(), atol=1e-6, rtol=0)
    pos = torch.tensor([0, 13, 27, 27, 41, 5])
    assert torch.equal(den(x, torch.ones(3), positions=pos), full.flatten(0, 1)[pos])
    torch.testing.assert_close(raw(den, x, pos), ref.flatten(0, 1)[pos], atol=TOL[impl], rtol=0)


@pytest.mark.parametrize("W,Bp", [(1, 1), (1, 2), (3, 1), (3, 2)])
@pytest.mark.parametrize("arch,impl", MODELS)
def test_cached_matches_reference(arch, impl, W, Bp):
    den, gen = den_for(arch, impl), torch.Generator().manual_seed(10 * W + Bp)
    x = tokens(3, 15, gen=gen)  # blocks [0, 4), [4, 8), [8, 12), [12, 15)
    step = den.encode(x[:, :4], 0)  # block by block
    caches = {4: step}
    for s in (4, 8):
        caches[s + 4] = step = den.encode(x[:, s:s + 4], s, step)
    assert (step.length, step.batch) == (12, 3)
    at_once = den.encode(x[:, 4:12], 4, caches[4])  # two blocks in one call
    for a, b in zip(at_once.keys + at_once.values, step.keys + step.values):
        torch.testing.assert_close(a, b, atol=TOL[impl], rtol=0)
    samples = torch.tensor([2, 0])[:Bp]  # not arange
    for s, n in [(4, 4), (8, 4), (12, 3)]:
        blocks = tokens(W * Bp, n, gen=gen)
        want = cached_reference(den, x[:, :s], blocks, samples, gen)
        got = raw(den, blocks, cache=caches[s], samples=samples, start=s)
        torch.testing.assert_close(got, want, atol=TOL[impl], rtol=0)
        out = den(blocks, torch.ones(W * Bp), cache=caches[s], samples=samples, start=s)
        assert out.dtype == torch.float32 and out.shape == (W * Bp, n, V)
        torch.testing.assert_close(out, want.float(), atol=1e-6, rtol=0)
        pos = torch.randint(0, W * Bp * n, (7,), generator=gen)
        part = den(blocks, torch.ones(W * Bp), positions=pos, cache=caches[s], samples=samples, start=s)
        assert torch.equal(part, out.flatten(0, 1)[pos])
        torch.testing.assert_close(raw(den, blocks, pos, cache=caches[s], samples=samples, start=s),
                                   want.flatten(0, 1)[pos], atol=TOL[impl], rtol=0)
        uncached = raw(den, torch.cat([x[samples.repeat(W), :s], blocks], dim=1))[:, s:]  # the adapter's own
        torch.testing.assert_close(got, uncached, atol=TOL[impl], rtol=0)
    # several blocks at once, the last partial: the same as block by block
    partial, at_once = den.encode(x[:, 12:15], 12, caches[12]), den.encode(x[:, 4:15], 4, caches[4])
    for a, b in zip(partial.keys + partial.values, at_once.keys + at_once.values):
        torch.testing.assert_close(a, b, atol=TOL[impl], rtol=0)
    assert (partial.length, partial.batch) == (15, 3)
    # a subset of the samples (select), and a block shorter than the block length
    sub = den.select(den.encode(x[:, 4:12], 4, caches[4]), torch.tensor([2, 1]))
    blocks, samples = tokens(W * Bp, 2, gen=gen), torch.tensor([1, 0])[:Bp]
    want = cached_reference(den, x[[2, 1], :12], blocks, samples, gen)
    torch.testing.assert_close(raw(den, blocks, cache=sub, samples=samples, start=12), want, atol=TOL[impl], rtol=0)


def snapshot(cache):
    return [t.clone() for t in cache.keys + cache.values], (cache.batch, cache.length, len(cache.keys))


@pytest.mark.parametrize("impl", IMPLS)
def test_cached_call_leaves_cache_unchanged(impl):
    den, gen = den_for("qwen2", impl), torch.Generator().manual_seed(3)
    x = tokens(2, 8, gen=gen)
    cache = den.encode(x, 0)
    tensors, meta = snapshot(cache)
    blocks = tokens(6, 4, gen=gen)
    first = den(blocks, torch.ones(6), cache=cache, samples=torch.tensor([1, 0]), start=8)
    den(blocks[:2], torch.ones(2), cache=cache, samples=torch.arange(2), start=8)
    den(blocks[:1], torch.ones(1), positions=torch.tensor([2]), cache=cache, samples=torch.tensor([1]), start=8)
    after, meta_after = snapshot(cache)
    assert meta_after == meta == (2, 8, 2)
    assert all(torch.equal(a, b) for a, b in zip(tensors, after))
    assert torch.equal(den(blocks, torch.ones(6), cache=cache, samples=torch.tensor([1, 0]), start=8), first)
    grown = den.encode(x[:, :4], 8, cache)  # encode returns a new cache, the old one stays
    assert grown.length == 12 and cache.length == 8
    assert all(torch.equal(a, b) for a, b in zip(tensors, snapshot(cache)[0]))


def test_select():
    den, gen = den_for("llama", "sdpa"), torch.Generator().manual_seed(4)
    x = tokens(4, 8, gen=gen)
    cache = den.encode(x, 0)
    tensors, _ = snapshot(cache)
    index = torch.tensor([3, 1, 1])  # reordered, repeated
    sub = den.select(cache, index)
    assert isinstance(sub, BlockCache) and (sub.batch, sub.length) == (3, 8)
    alone = den.encode(x[index], 0)
    for a, b in zip(sub.keys + sub.values, alone.keys + alone.values):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(tensors, snapshot(cache)[0]))  # cache unchanged
    blocks = tokens(6, 4, gen=gen)
    via_sub = den(blocks, torch.ones(6), cache=sub, samples=torch.tensor([0, 1, 2]), start=8)
    via_full = den(blocks, torch.ones(6), cache=cache, samples=index, start=8)
    assert torch.equal(via_sub, via_full)
    empty = den.select(cache, torch.zeros(0, dtype=torch.int64))
    assert (empty.batch, empty.length) == (0, 8)


@pytest.mark.parametrize("arch,impl", MODELS)
def test_block_length_one(arch, impl):
    """``bl = 1``: an autoregressive model; the cached call takes one position per row."""
    den, gen = den_for(arch, impl, bl=1), torch.Generator().manual_seed(5)
    x = tokens(2, 6, gen=gen)
    torch.testing.assert_close(raw(den, x), reference(den.model, x, 1), atol=TOL[impl], rtol=0)
    cache = den.encode(x[:, :2], 0)
    cache = den.encode(x[:, 2:5], 2, cache)  # three one-position blocks at once
    samples = torch.tensor([1, 0])
    blocks = tokens(6, 1, gen=gen)
    want = cached_reference(den, x[:, :5], blocks, samples, gen)
    torch.testing.assert_close(raw(den, blocks, cache=cache, samples=samples, start=5), want, atol=TOL[impl], rtol=0)
    with pytest.raises(ValueError, match="block_length=1"):
        den(tokens(2, 2, gen=gen), torch.ones(2), cache=cache, samples=samples, start=5)


@pytest.mark.parametrize("impl", IMPLS)
def test_cached_call_batch_invariance(impl):
    """A row's logits do not depend on the slices and samples around it (W, B'): bit for bit with
    sdpa in float64 on CPU (measured), to float32 softmax rounding with eager."""
    den, gen = den_for("llama", impl), torch.Generator().manual_seed(6)
    cache = den.encode(tokens(3, 8, gen=gen), 0)
    W, samples = 3, torch.tensor([2, 0, 1])
    blocks = tokens(W * 3, 4, gen=gen)
    big = raw(den, blocks, cache=cache, samples=samples, start=8)
    check = torch.equal if impl == "sdpa" else (lambda a, b: torch.allclose(a, b, atol=1e-6, rtol=0))
    for u in range(W):
        for b in range(3):
            r = u * 3 + b
            one = raw(den, blocks[r:r + 1], cache=cache, samples=samples[b:b + 1], start=8)
            assert check(one[0], big[r]), (u, b)
    two = raw(den, blocks[3:9].view(2, 3, 4)[:, :2].reshape(4, 4), cache=cache, samples=samples[:2], start=8)
    assert check(two.view(2, 2, 4, V), big.view(W, 3, 4, V)[1:, :2])


def bad_calls(den, cache, x, gen):
    """(description, call, exception type, text the message names)."""
    t, blk, s2 = torch.ones(4), tokens(4, 4, gen=gen), torch.tensor([0, 1])
    return [
        ("x float", lambda: den(blk.double(), t), TypeError, "x"),
        ("x 1-D", lambda: den(blk[0], t[:1]), TypeError, "x"),
        ("cached x float", lambda: den(blk.double(), t, cache=cache, samples=s2, start=8), TypeError, "x"),
        ("cached x 3-D", lambda: den(blk[None], t, cache=cache, samples=s2, start=8), ValueError, "x"),
        ("t shape", lambda: den(blk, torch.ones(3)), ValueError, "t must"),
        ("start without cache", lambda: den(blk, t, start=8), ValueError, "cache"),
        ("samples without cache", lambda: den(blk, t, samples=s2), ValueError, "cache"),
        ("cache not a BlockCache", lambda: den(blk, t, cache={}, samples=s2, start=8), TypeError, "cache"),
        ("start not an int", lambda: den(blk, t, cache=cache, samples=s2, start=8.0), TypeError, "start"),
        ("start not a multiple", lambda: den(blk, t, cache=cache, samples=s2, start=6), ValueError, "start"),
        ("start != cache length", lambda: den(blk, t, cache=cache, samples=s2, start=4), ValueError, "start"),
        ("block too long", lambda: den(tokens(4, 5, gen=gen), t, cache=cache, samples=s2, start=8), ValueError,
         "block_length"),
        ("samples missing", lambda: den(blk, t, cache=cache, start=8), TypeError, "samples"),
        ("samples int32", lambda: den(blk, t, cache=cache, samples=s2.int(), start=8), TypeError, "samples"),
        ("samples 2-D", lambda: den(blk, t, cache=cache, samples=s2[None], start=8), ValueError, "samples"),
        ("samples out of range", lambda: den(blk, t, cache=cache, samples=torch.tensor([0, 2]), start=8),
         ValueError, "samples"),
        ("samples negative", lambda: den(blk, t, cache=cache, samples=torch.tensor([-1, 0]), start=8),
         ValueError, "samples"),
        ("rows not W * B'", lambda: den(blk[:3], t[:3], cache=cache, samples=s2, start=8), ValueError, "B'"),
        ("positions out of range", lambda: den(blk, t, positions=torch.tensor([16]), cache=cache, samples=s2,
                                               start=8), ValueError, "positions"),
        ("encode x float", lambda: den.encode(x.double(), 0), TypeError, "x"),
        ("encode start not int", lambda: den.encode(x, "0"), TypeError, "start"),
        ("encode start not multiple", lambda: den.encode(x, 2), ValueError, "start"),
        ("encode start without cache", lambda: den.encode(x, 8), ValueError, "cache"),
        ("encode start != cache length", lambda: den.encode(x, 4, cache), ValueError, "start"),
        ("encode batch mismatch", lambda: den.encode(tokens(3, 4, gen=gen), 8, cache), ValueError, "samples"),
        ("encode cache type", lambda: den.encode(x, 8, cache.keys), TypeError, "cache"),
        ("select cache type", lambda: den.select(None, s2), TypeError, "cache"),
        ("select index list", lambda: den.select(cache, [0]), TypeError, "index"),
        ("select index range", lambda: den.select(cache, torch.tensor([5])), ValueError, "index"),
    ]


def test_errors_name_the_argument():
    den, gen = den_for("llama", "sdpa"), torch.Generator().manual_seed(7)
    x = tokens(2, 8, gen=gen)
    cache = den.encode(x, 0)
    tensors, _ = snapshot(cache)
    for what, call, kind, text in bad_calls(den, cache, x[:, :4], gen):
        try:
            with pytest.raises(kind, match=text):
                call()
        except BaseException as error:  # say which case failed
            raise AssertionError(f"{what}: {error!r}") from error
    assert all(torch.equal(a, b) for a, b in zip(tensors, snapshot(cache)[0]))
    model = den.model
    for kwargs, kind, text in [
        (dict(block_length=0, mask_id=MASK), ValueError, "block_length"),
        (dict(block_length=4.0, mask_id=MASK), TypeError, "block_length"),
        (dict(block_length=True, mask_id=MASK), TypeError, "block_length"),
        (dict(block_length=4), ValueError, "mask_id"),
        (dict(block_length=4, mask_id=V), ValueError, "vocab_size"),
        (dict(block_length=4, mask_id=MASK, suppress_ids=[MASK]), ValueError, "suppress_ids"),
        (dict(block_length=4, mask_id=MASK, head_block=0), ValueError, "head_block"),
    ]:
        with pytest.raises(kind, match=text):
            HFBlockCausalLM(model, **kwargs)
    with pytest.raises(TypeError, match="model"):
        HFBlockCausalLM(lambda x: x, block_length=4, mask_id=MASK)
    with pytest.raises(TypeError, match="output head"):
        HFBlockCausalLM(model.model, block_length=4, mask_id=MASK)  # a base model: no head


def test_refuses_unmasked_attention_and_sliding_windows():
    model = build("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="LlamaForCausalLM.*flash_attention_2"):
        HFBlockCausalLM(model, block_length=4, mask_id=MASK)
    den = HFBlockCausalLM(build("llama"), block_length=4, mask_id=MASK)
    den.model.config._attn_implementation = "flex_attention"  # switched after construction
    with pytest.raises(ValueError, match="flex_attention"):
        den(torch.ones(1, 4, dtype=torch.int64), torch.ones(1))
    odd = build("qwen2")
    odd.config.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(ValueError, match="chunked_attention"):
        HFBlockCausalLM(odd, block_length=4, mask_id=MASK)
    odd.config.layer_types, odd.config.sliding_window = ["full_attention", "sliding_attention"], None
    with pytest.raises(ValueError, match="sliding_window=None"):
        HFBlockCausalLM(odd, block_length=4, mask_id=MASK)
    mistral = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, sliding_window=8))
    with pytest.raises(ValueError, match="sliding"):
        HFBlockCausalLM(mistral, block_length=4, mask_id=MASK)
    capped = build("llama")
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        HFBlockCausalLM(capped, block_length=4, mask_id=MASK)


def make_tokenizer():
    """A word-level tokenizer with 30 ids (so ids 30..36 of the model's 37 are padding) and a mask token."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    words = ["<pad>", "<eos>", "<mask>"] + [f"w{i}" for i in range(27)]
    tk = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                                mask_token="<mask>")


def test_settings_suppression_and_tokenizer():
    model, tok = build("qwen2"), make_tokenizer()
    den = HFBlockCausalLM(model, block_length=4, tokenizer=tok, suppress_ids=[5])
    assert den.mask_id == 2 and den.vocab_size == V and den.block_causal and den.supports_positions
    assert den.sampler_kwargs()["mask_id"] == 2 and den.sampler_kwargs()["vocab_size"] == V
    assert den.suppress_ids == (5, *range(30, V), 0)  # and the pad token <pad> = 0 (not the EOS)
    x = torch.randint(0, 30, (2, 8))
    out = den(x, torch.ones(2))
    assert torch.isinf(out[..., list(den.suppress_ids)]).all() and torch.isfinite(out[..., 1:5]).all()
    cache = den.encode(x[:, :4], 0)
    cached = den(x[:, 4:], torch.ones(2), cache=cache, samples=torch.arange(2), start=4)
    assert torch.isinf(cached[..., 30:]).all() and torch.isfinite(cached[..., 6:30]).all()
    with pytest.raises(ValueError, match="mask_id=3, but the tokenizer"):
        HFBlockCausalLM(model, block_length=4, tokenizer=tok, mask_id=3)
    model.config.mask_token_id = 2  # the config's mask id is read, and must agree
    assert HFBlockCausalLM(model, block_length=4).mask_id == 2
    with pytest.raises(ValueError, match="model.config.mask_token_id"):
        HFBlockCausalLM(model, block_length=4, mask_id=MASK)
    with pytest.raises(ValueError, match="vocab mismatch"):
        HFBlockCausalLM(model, block_length=4, tokenizer=tok, vocab_size=20, mask_id=2)


def test_from_pretrained(tmp_path):
    model, tok = build("qwen2"), make_tokenizer()
    model.config.block_length = 4
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    den = HFBlockCausalLM.from_pretrained(str(tmp_path), dtype=torch.float64, attn_implementation="eager",
                                          local_files_only=True)
    assert den.block_length == 4 and den.mask_id == 2 and not den.model.training
    assert den.model.dtype == torch.float64 and den.model.config._attn_implementation == "eager"
    x = torch.randint(0, 30, (2, 6))
    torch.testing.assert_close(raw(den, x), reference(model, x, 4), atol=1e-6, rtol=0)
    assert HFBlockCausalLM.from_pretrained(str(tmp_path), block_length=2, local_files_only=True).block_length == 2
    del model.config.block_length
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="block_length"):
        HFBlockCausalLM.from_pretrained(str(tmp_path / "plain"), tokenizer=None, mask_id=2, local_files_only=True)


# -- through the samplers (pit_sampler.blocks, pit_sampler.block_cache) ------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_samplers_give_the_same_tokens_with_and_without_the_cache(arch):
    """A block-causal model through the samplers (sdpa, float64): cache=True equals cache=False, and
    exact Picard equals sequential, with a prompt ending inside a block, a ragged batch and EOS stops;
    the cached run processes fewer positions; the model's block length is the default."""
    import pit_sampler as ps

    den = den_for(arch, "sdpa", bl=4)
    g = torch.Generator().manual_seed(3)
    x = torch.full((3, 14), MASK)
    x[0, :6] = tokens(6, gen=g).clamp(max=MASK - 1)
    x[1, :2] = tokens(2, gen=g).clamp(max=MASK - 1)
    x[2, 5:9] = tokens(4, gen=g).clamp(max=MASK - 1)
    kw = dict(num_steps=32, **den.sampler_kwargs())
    free = ps.TauLeapingSampler(den, cache=False, **kw).sample(x, seed=1)
    kw["eos_id"] = int(free.tokens[1, 5])  # drawn in sample 1's block 1: it stops there (or earlier)
    runs = {}
    for cache in (False, True):
        runs["seq", cache] = ps.TauLeapingSampler(den, cache=cache, **kw).sample(x, seed=1)
        runs["seq, sync 4", cache] = ps.TauLeapingSampler(den, cache=cache, sync_every=4, **kw).sample(x, seed=1)
        for window in (3, "auto"):
            runs[window, cache] = ps.PITSampler(den, window=window, cache=cache, **kw).sample(x, seed=1)
    first = runs["seq", False]
    for key, out in runs.items():
        assert torch.equal(out.tokens, first.tokens) and torch.equal(out.lengths, first.lengths), key
    assert int(first.lengths[1]) <= 8 and int(first.lengths.max()) == 14  # a stop, and a sample that runs on
    assert runs["seq", True].positions < first.positions
    assert ps.PITSampler(den, window=3, **kw).blocks.settings.cache  # the default: the model's cache


def test_a_compiled_round_with_the_cache():
    """``compile=`` with the cache (dynamo traces the adapter's cached call: the cache's layer class is
    built with the adapter, not inside the round): the uncached run's tokens."""
    import pit_sampler as ps

    den = den_for("qwen2-local", "sdpa", bl=4)
    x = torch.full((2, 12), MASK)
    kw = dict(num_steps=16, window=2, compile={"backend": "eager"}, **den.sampler_kwargs())
    ref = ps.PITSampler(den, cache=False, **{**kw, "compile": False}).sample(x, seed=0)
    assert torch.equal(ps.PITSampler(den, cache=True, **kw).sample(x, seed=0).tokens, ref.tokens)
