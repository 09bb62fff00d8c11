"""pit_sampler.generate and the ``sample`` command: text in, text out with a real BERT (tiny random
config, float64 so that rows are batch-invariant) and a tokenizer built here (no download): the
layout, prompts as text or ids (ragged, padded or grouped), infilling, seeds, EOS trimming,
top-k/top-p, sampler instances, argument errors; the CLI on a saved folder."""

import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_hf import CLS, PAD, SEP, SPECIALS, TMASK, TV, build_tok_model, make_tokenizer  # noqa: E402

import pit_sampler  # noqa: E402
from pit_sampler import PITSampler, TauLeapingSampler  # noqa: E402
from pit_sampler.__main__ import main  # noqa: E402
from pit_sampler.adapters import CallableDenoiser, HFMaskedLM  # noqa: E402
from pit_sampler.generate import GenerateOutput, _encode_text, _template, generate  # noqa: E402

WORD_IDS = range(len(SPECIALS), len(SPECIALS) + 16)
STEPS = 32


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model():
    return build_tok_model("bert")


def words_only(ids):
    return all(i in WORD_IDS for i in ids)


def test_text_in_text_out(model, tok):
    out = generate(model, tok, "the cat", max_new_tokens=5, seed=0, num_steps=STEPS)
    assert isinstance(out, GenerateOutput) and out.sequences.shape == (1, 9)
    row = out.sequences[0].tolist()
    assert row[:3] == [CLS, 5, 7] and row[-1] == SEP and words_only(row[3:8])  # [CLS] the cat _ _ _ _ _ [SEP]
    assert out.generated[0].tolist() == [False] * 3 + [True] * 5 + [False]
    assert out.ids == [row[1:8]] and len(out.completions[0].split()) == 5
    assert out.texts[0] == "the cat " + out.completions[0] == tok.decode(row[1:8])
    assert out.seeds.shape == (1,) and out.rounds == out.results[0].rounds >= 1
    seq = generate(model, tok, "the cat", max_new_tokens=5, seed=0, num_steps=STEPS, sampler="sequential")
    assert torch.equal(seq.sequences, out.sequences)  # PIT == sequential (float64: batch-invariant)
    assert generate(model, tok, "the cat", gen_length=5, seed=0, num_steps=STEPS).ids == out.ids  # LLaDA's name
    # the sampler's own int seed: the same tokens as sampling the layout directly
    den = HFMaskedLM(model, tokenizer=tok)
    x = torch.tensor([[CLS, 5, 7] + [TMASK] * 5 + [SEP]])
    direct = PITSampler(den, num_steps=STEPS, **den.sampler_kwargs()).sample(x, seed=0)
    assert torch.equal(direct.tokens, out.sequences)


def test_seeds(model, tok):
    kw = dict(max_new_tokens=4, num_steps=STEPS, num_return_sequences=3)
    a = generate(model, tok, "a dog", seed=11, **kw)
    assert torch.equal(generate(model, tok, "a dog", seed=11, **kw).sequences, a.sequences)
    assert torch.equal(generate(model, tok, "a dog", seed=a.seeds, **kw).sequences, a.sequences)
    assert len({tuple(r) for r in a.ids}) > 1  # the 3 return sequences differ
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = generate(model, tok, "a dog", seed=g1, **kw)
    assert torch.equal(generate(model, tok, "a dog", seed=g2, **kw).seeds, first.seeds)
    assert not torch.equal(generate(model, tok, "a dog", seed=g1, **kw).seeds, first.seeds)  # the generator moved on
    fresh = [generate(model, tok, "a dog", **kw).seeds for _ in range(2)]
    assert not torch.equal(*fresh)  # no seed: fresh seeds on every call
    torch.manual_seed(123)
    one = generate(model, tok, "a dog", **kw)
    torch.manual_seed(123)
    assert torch.equal(generate(model, tok, "a dog", **kw).sequences, one.sequences)  # from torch's generator


PROMPTS = ["the cat", "a big red dog ran to the", "", "blue"]


def test_ragged_batch_rows_do_not_depend_on_each_other(model, tok):
    out = generate(model, tok, PROMPTS, max_new_tokens=3, seed=2, num_steps=STEPS, num_return_sequences=2)
    assert out.sequences.shape[0] == 8 and len(out.results) == 1  # padded: one batch
    lengths = [len(tok(p)["input_ids"]) + 3 for p in PROMPTS]
    for r in range(8):
        prompt, n = PROMPTS[r // 2], lengths[r // 2]
        assert out.sequences[r, n:].eq(PAD).all()  # padded on the right
        alone = generate(model, tok, prompt, max_new_tokens=3, seed=out.seeds[r : r + 1], num_steps=STEPS)
        assert alone.ids[0] == out.ids[r] and torch.equal(alone.sequences[0], out.sequences[r, :n])
    grouped = generate(model, tok, PROMPTS, max_new_tokens=3, seed=2, num_steps=STEPS, num_return_sequences=2,
                       padding=False)
    assert len(grouped.results) == len(set(lengths)) and grouped.ids == out.ids
    assert out.texts[4] == out.completions[4] and len(out.texts[4].split()) == 3  # the empty prompt


def test_infilling(model, tok):
    out = generate(model, tok, ["a dog <gap:2> the mat", "the [MASK] sat"], seed=0, num_steps=STEPS)
    a, b = out.ids
    assert a[:2] == [6, 8] and words_only(a[2:4]) and a[4:] == tok("the mat", add_special_tokens=False)["input_ids"]
    assert b[0] == 5 and words_only(b[1:2]) and b[2] == 9
    assert out.completions == ["", ""] and out.texts[1].startswith("the ") and out.texts[1].endswith(" sat")
    assert out.generated.sum(1).tolist() == [2, 1]
    ids = generate(model, tok, [5, TMASK, 9], seed=out.seeds[1:], num_steps=STEPS)  # ids prompt: mask_id is a gap
    assert ids.ids[0] == b
    both = generate(model, tok, "the [MASK] sat", max_new_tokens=2, seed=0, num_steps=STEPS)  # infill and continue
    assert len(both.ids[0]) == 5 and len(both.completions[0].split()) == 2


def test_eos_trimming(tok):
    """The model may generate [SEP] (keep_ids) and is pushed towards it: each continuation ends before
    its first [SEP]; the texts hold no special token."""
    model = build_tok_model("bert")
    with torch.no_grad():
        model.get_output_embeddings().bias[SEP] += 2.5
    den = HFMaskedLM(model, tokenizer=tok, keep_ids=[SEP])
    out = generate(den, prompts=["the cat"] * 6, max_new_tokens=8, seed=1, num_steps=STEPS)
    trimmed = 0
    for r in range(6):
        tail = out.sequences[r, 3:11].tolist()
        cut = tail.index(SEP) if SEP in tail else 8
        assert out.ids[r] == [5, 7] + tail[:cut]
        trimmed += cut < 8
        assert out.completions[r] == tok.decode(tail[:cut])
    assert trimmed >= 1
    assert generate(den, prompts=["the cat"] * 6, max_new_tokens=8, seed=1, num_steps=STEPS,
                    eos_token_id=[]).ids[0][2:] == out.sequences[0, 3:11].tolist()  # no stop ids: nothing cut


def test_top_k_top_p_and_temperature(model, tok):
    kw = dict(max_new_tokens=6, seed=4, num_steps=STEPS, num_return_sequences=2)
    top1 = generate(model, tok, "the cat", top_k=1, **kw)
    greedy = generate(model, tok, "the cat", temperature=0.0, **kw)
    assert top1.ids == greedy.ids
    nucleus = generate(model, tok, "the cat", top_p=0.3, temperature=0.7, **kw)
    assert generate(model, tok, "the cat", top_p=0.3, temperature=0.7, sampler="sequential", **kw).ids == nucleus.ids
    assert nucleus.ids != generate(model, tok, "the cat", **kw).ids


def test_sampler_instance_and_bfloat16(tok):
    model = build_tok_model("bert", torch.bfloat16)
    den = HFMaskedLM(model, tokenizer=tok)
    sampler = TauLeapingSampler(den, num_steps=STEPS, **den.sampler_kwargs())
    out = generate(den, prompts=["the cat", "a"], max_new_tokens=4, sampler=sampler, seed=0)
    assert all(words_only(ids) for ids in out.ids) and out.sequences.dtype == torch.int64
    with pytest.raises(ValueError, match="sampler is an instance: configure it with its own arguments, not num_steps, rule"):
        generate(den, prompts="a", max_new_tokens=2, sampler=sampler, num_steps=8, rule="first")
    with pytest.raises(ValueError, match="mask_id=3 was passed to the sampler, but the denoiser"):
        TauLeapingSampler(den, mask_id=3, num_steps=8)  # the sampler checks an adapter's settings itself
    other = TauLeapingSampler(lambda x, t: den(x, t), mask_id=3, num_steps=8)  # a plain callable: no settings
    with pytest.raises(ValueError, match="mask_id=3, but the model's is 4"):
        generate(den, prompts="a", max_new_tokens=2, sampler=other)


def test_bad_arguments(model, tok):
    kw = dict(num_steps=8, seed=0)
    cases = [
        (dict(prompts="the cat"), ValueError, "max_new_tokens \\(or gen_length\\) is needed"),
        (dict(prompts="a", max_new_tokens=2, gen_length=3), ValueError, "disagree"),
        (dict(prompts="a", max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(prompts="a", max_new_tokens=2, num_return_sequences=0), ValueError, "num_return_sequences"),
        (dict(prompts="a", max_new_tokens=2, sampler="parallel"), ValueError, "sampler must be one of"),
        (dict(prompts="a", max_new_tokens=2, seed=torch.zeros(3, dtype=torch.int64)), ValueError, "shape \\[1\\]"),
        (dict(prompts="a", max_new_tokens=0), ValueError, "nothing to generate"),
        (dict(prompts="a <gap:0> b"), ValueError, "at least one token"),
        (dict(prompts="a", max_new_tokens=80), ValueError, "max_position_embeddings=64"),
        (dict(prompts=[1.5, 2.5], max_new_tokens=2), TypeError, "each prompt"),
        (dict(prompts=[], max_new_tokens=2), TypeError, "prompts must be"),
        (dict(prompts="a", max_new_tokens=2, sampler="sequential", window=4), ValueError, "window applies"),
        (dict(prompts="a", max_new_tokens=2, top_p=0.0), ValueError, "top_p"),
        (dict(prompts="a", max_new_tokens=2, padding="left"), ValueError, "padding"),
        (dict(prompts="a", max_new_tokens=2, schedule="linear"), ValueError, "schedule='linear' was passed"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            generate(model, tok, **{**kw, **args})
    bare = HFMaskedLM(model, mask_id=TMASK)
    with pytest.raises(ValueError, match="text prompts need a tokenizer"):
        generate(bare, prompts="a", max_new_tokens=2)
    with pytest.raises(ValueError, match="padding=True needs a pad id"):
        generate(bare, prompts=[[5], [5, 6]], max_new_tokens=2, padding=True)
    out = generate(bare, prompts=[[5], [5, 6]], max_new_tokens=2, seed=0, num_steps=8)  # no tokenizer: ids only
    assert out.texts is None and len(out.results) == 2 and out.sequences[0, -1] == -1
    with pytest.raises(TypeError, match="model must be"):
        generate("bert-base", tok, "a", max_new_tokens=2)


def test_lengths_and_ids_are_checked_before_any_row_is_built(model, tok):
    """A huge gap or max_new_tokens is refused from the numbers alone (never expanded into a list),
    and ids prompts are checked against the model's vocabulary by generate itself: the messages name
    ``prompts`` (generate has no ``x_init``)."""
    kw = dict(num_steps=8, seed=0)
    for args, match in [
        (dict(prompts="a <gap:1000000000000> b"), "^prompts: a gap needs at least one token and at most 64"),
        (dict(prompts="a <gap:1000000000000000000000000> b"), "^prompts: a gap"),  # was an OverflowError
        (dict(prompts="a <gap:60> b <gap:4>"), "^prompts, max_new_tokens: rows of 68 positions"),  # gaps sum
        (dict(prompts=[[5, 99]], max_new_tokens=2), "^prompts hold token id 99, out of range for the model's "
                                                     "vocab_size=24"),
        (dict(prompts=[[5, -3]], max_new_tokens=2), "^prompts hold a negative token id"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate(model, tok, **{**kw, **args})
    bare = CallableDenoiser(lambda x, t: torch.zeros(*x.shape, TV), mask_id=TMASK)  # no max_position_embeddings
    with pytest.raises(ValueError, match=r"exceed pit_sampler.generate.MAX_LENGTH=\d+"):
        generate(bare, prompts=[[5]], max_new_tokens=10**12, **kw)


def test_gap_white_space_with_byte_level_bpe():
    """A byte-level BPE tokenizer (RoBERTa style: the space belongs to the next token, ``<mask>`` takes
    the space before it): a ``<gap:n>`` gives the ids the tokenizer itself gives for its mask string."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the cat sat on the mat", "a dog ran to the big red mat"] * 20, trainer)
    tk.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True, special=True)])  # as RoBERTa's
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    bpe = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                               unk_token="<unk>", mask_token="<mask>")
    m = bpe.mask_token_id
    native = bpe("the cat <mask> on the mat", add_special_tokens=False)["input_ids"]
    assert _encode_text("the cat <mask> on the mat", bpe, m) == native
    gap = _encode_text("the cat <gap:2> on the mat", bpe, m)
    assert gap == bpe("the cat <mask><mask> on the mat", add_special_tokens=False)["input_ids"]
    assert gap.count(m) == 2 and bpe.convert_tokens_to_ids("Ġ") not in gap  # no stray space token
    assert _template(bpe) == ([0], [2])  # <s> ... </s>: generated tokens go before </s>


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("tiny-bert")
    build_tok_model("bert", torch.float32).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_cli_sample(folder, capsys):
    args = ["sample", "--model", folder, "--prompt", "the cat", "--prompt", "a dog", "--max-new-tokens", "4",
            "--steps", "16", "--seed", "3", "--dtype", "float64", "--num-return-sequences", "2"]
    result = main(args)
    printed = capsys.readouterr().out.splitlines()
    den = HFMaskedLM.from_pretrained(folder, dtype=torch.float64, local_files_only=True)
    want = generate(den, prompts=["the cat", "a dog"], max_new_tokens=4, num_steps=16, seed=3, num_return_sequences=2)
    assert printed == want.texts == result["texts"] and len(printed) == 4
    assert main(args[:-4] + ["--sampler", "sequential", "--dtype", "float64", "--num-return-sequences", "2"])["texts"] \
        == want.texts
    capsys.readouterr()
    infill = main(["sample", "--model", folder, "--prompt", "the <gap:2> sat", "--steps", "8", "--top-k", "3"])
    assert len(infill["ids"][0]) == 4 and capsys.readouterr().out.strip().endswith("sat")


def test_cli_errors_and_version(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"pit-sampler {pit_sampler.__version__}"
    for argv, message in [
        (["sample", "--model", str(tmp_path / "missing"), "--prompt", "a"], "not a folder"),
        (["sample", "--model", str(tmp_path), "--prompt", "a"], "cannot load"),
        (["sample", "--model", folder, "--prompt", "a", "--steps", "0"], "--steps must be >= 1"),
        (["sample", "--model", folder, "--prompt", "a", "--top-p", "2"], "top_p"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "pit_sampler", "--version"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"pit-sampler {pit_sampler.__version__}"
