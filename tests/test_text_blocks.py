"""The BD3-LM objective of the block-causal text model (pit_sampler/models/text_blocks.py) on a tiny
random Llama in float64: the training pass computes the conditionals the samplers use, the mask is
the one the module docstring states, and the two NELBO estimators agree."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pit_sampler.block_causal import HFBlockCausalLM  # noqa: E402
from pit_sampler.models import text_blocks  # noqa: E402

V, MASK, PAD, L, BL = 37, 36, 0, 12, 4


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
    return transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float64).eval()


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
