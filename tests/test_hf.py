"""HFMaskedLM on real Hugging Face classes (tiny random configs, no downloads): the output projection
is found, positions give the full rows bit for bit, the projection runs only on the selected rows,
and the adapter traces under torch.compile without graph breaks. Skipped without transformers."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from positions_checks import assert_compiles, assert_positions_match  # noqa: E402

from pit_sampler.adapters import HFMaskedLM, OutputProjection  # noqa: E402

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


def llama():
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=H, num_key_value_heads=1, **SMALL)
    return transformers.LlamaForCausalLM(config)


MODELS = {"bert": bert, "roberta": roberta, "distilbert": distilbert, "modernbert": modernbert, "llama": llama}


def build(name, dtype=torch.float32):
    torch.manual_seed(0)
    return MODELS[name]().to(dtype).eval()


def states(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, MASK, (n, length), generator=g)
    return torch.where(torch.rand(n, length, generator=g) < 0.5, MASK, x), torch.rand(n, generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(MODELS))
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
