"""``bench.blocks --quick`` runs on a tiny random block-causal model and writes every part."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pit_sampler.models import text

if not (text.MODEL_DIR / "tokenizer.json").is_file():
    pytest.skip("the shipped tokenizer is not here", allow_module_level=True)


def tiny_block_model(folder):
    """A random 1-layer LlamaForCausalLM over the shipped tokenizer, saved as the block model is
    (config.block_length, mask_token_id, the tokenizer next to it)."""
    tok = text.load_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id, mask_token_id=tok.mask_token_id,
        block_length=16)
    transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa").save_pretrained(folder)
    tok.save_pretrained(folder)


def test_the_block_bench_runs_its_quick_subset(tmp_path):
    from bench import blocks

    tiny_block_model(tmp_path / "model")
    result = blocks.main(["--quick", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "x"), "--threads", "1"])
    saved = json.loads((tmp_path / "x.json").read_text())
    assert saved["identical"] and result["identical"]
    assert {"rounds", "positions", "timing", "estimate"} <= saved.keys()
    seq, pit = saved["rounds"]
    assert pit["identical"] and pit["cached_equals_uncached"] and seq["cached_equals_uncached"]
    assert pit["per_sample"]["identical"] and pit["cached"]["rounds"] <= seq["cached"]["rounds"]
    assert all(p["uncached"] > p["cached"] for p in saved["positions"])
    assert [t["B"] for t in saved["timing"]] == [2] and all(t["identical"] for t in saved["timing"])
    assert "ESTIMATE" in saved["estimate"]["label"] and len(saved["estimate"]["rows"]) == 2 * 2 * 2  # shapes x B x samplers
    md = (tmp_path / "x.md").read_text()
    assert "ESTIMATE" in md and "## C." in md
