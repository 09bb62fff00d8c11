"""The masked-diffusion transformer: output contract, batch invariance, the positions protocol,
torch.compile, loss, weight I/O, shipped weights."""

import math

import pytest
import torch

from positions_checks import assert_compiles, assert_positions_match
from tiers import tiered

from pit_sampler import PITSampler, TauLeapingSampler
from pit_sampler.adapters import check_batch_invariance
from pit_sampler.models.transformer import (
    PRETRAINED,
    WEIGHTS_DIR,
    DepthwiseConv3x3,
    MaskedDiffusionTransformer,
    load_model,
    load_pretrained,
    masked_diffusion_loss,
    save_model,
    weights_metadata,
)

V, L, MASK = 7, 12, 6
GRID = (4, 3)


def tiny(time_conditioned=False, dtype=torch.float64, seed=0, length=L, grid=GRID):
    torch.manual_seed(seed)
    model = MaskedDiffusionTransformer(
        V, length, d_model=16, n_heads=2, n_layers=2, d_ff=24, time_conditioned=time_conditioned, grid=grid
    )
    if time_conditioned:  # adaLN starts at zero; make t matter
        for block in model.blocks:
            torch.nn.init.normal_(block.mod.weight, std=0.3)
    return model.to(dtype).eval().requires_grad_(False)


def random_states(n, seed=1, length=L):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V - 1, (n, length), generator=g)
    masked = torch.rand(n, length, generator=g) < torch.rand(n, 1, generator=g)
    return torch.where(masked, MASK, x), torch.rand(n, generator=g)


@pytest.mark.parametrize("time_conditioned", [False, True])
def test_output_contract(time_conditioned):
    model = tiny(time_conditioned)
    x, t = random_states(9)
    logits = model(x, t)
    assert logits.dtype == torch.float32 and logits.shape == (9, L, V)
    assert torch.isneginf(logits[..., MASK]).all()
    clean = x != MASK
    # clean positions carry their token over: logit 0 on it, -inf elsewhere
    carried = logits[clean]
    assert torch.equal(carried.argmax(-1), x[clean])
    assert (carried.max(-1).values == 0).all() and (torch.isneginf(carried).sum(-1) == V - 1).all()
    assert torch.isfinite(logits[~clean][:, :MASK]).all()
    other = model(x, torch.rand(9, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(other, logits) != time_conditioned  # only the time-conditioned model reads t


@pytest.mark.parametrize("time_conditioned", [False, True])
def test_float64_model_is_batch_invariant(time_conditioned):
    """Rows at different t, alone and in batches of other sizes: bitwise-identical logits."""
    model = tiny(time_conditioned)
    x, t = random_states(40)
    assert check_batch_invariance(model, x, t)
    full = model(x, t)
    for n in (3, 17):
        assert torch.equal(model(x[-n:], t[-n:]), full[-n:])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("time_conditioned", [False, True])
def test_positions_are_the_full_rows(time_conditioned, dtype):
    """positions=index gives the full output's rows [index // L, index % L] bit for bit: M = 0 and 1,
    repeats, every position; one row, and more rows than one eval chunk (V = 7: not a power of two)."""
    model = tiny(time_conditioned, dtype)
    for n, seed in ((1, 2), (model.eval_chunk + 5, 3)):
        x, t = random_states(n, seed)
        assert_positions_match(model, x, t, seed)


def test_positions_with_one_position_per_row():
    model = tiny(True, length=1, grid=None)
    x, t = random_states(3, length=1)
    assert_positions_match(model, x, t)


def test_positions_head_runs_on_the_selected_rows_only():
    """The head sees head_block rows per call and only enough blocks for M rows, not N * L."""
    model = tiny(True)
    model.head_block = 4
    seen = []
    model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    x, t = random_states(5)
    model(x, t, positions=torch.tensor([3, 59, 3, 17, 40]))
    assert seen == [4, 4]
    seen.clear()
    model(x, t)
    assert seen == [4] * (5 * L // 4)


def test_model_compiles_without_graph_breaks():
    """The time-conditioned path, eval-chunked (the time-agnostic one: the shipped "digits" model)."""
    model = tiny(True)
    x, t = random_states(model.eval_chunk + 2)  # the eval-chunked path
    assert_compiles(model, x, t)
    assert_compiles(model, x, t, positions=torch.tensor([0, 5, 5, x.numel() - 1]))


def test_positions_errors():
    model = tiny(True)
    x, t = random_states(2)
    with pytest.raises(TypeError, match="positions must be a LongTensor"):
        model(x, t, positions=torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(TypeError, match="positions must be a LongTensor"):
        model(x, t, positions=[0, 1])
    with pytest.raises(ValueError, match="positions must be a 1-D"):
        model(x, t, positions=torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"positions holds flat indices 0\.\.24, outside \[0, R \* L = 24\)"):
        model(x, t, positions=torch.tensor([0, 24]))
    with pytest.raises(ValueError, match="outside"):
        model(x, t, positions=torch.tensor([-1]))
    with pytest.raises(ValueError, match="positions is on meta, but x is on cpu"):
        model(x, t, positions=torch.zeros(1, dtype=torch.int64, device="meta"))


def test_conv_float64_path_equals_library_conv():
    """The fixed-order float64 evaluation of the 3x3 depthwise convolution is F.conv2d's function."""
    conv = DepthwiseConv3x3(5, GRID).double()
    torch.nn.init.normal_(conv.bias)
    z = torch.randn(3, L, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    image = z.transpose(1, 2).reshape(3, 5, *GRID)
    ref = torch.nn.functional.conv2d(image, conv.weight, conv.bias, padding=1, groups=5).flatten(2).transpose(1, 2)
    assert torch.allclose(conv(z), ref, rtol=0, atol=1e-12)
    assert torch.allclose(conv.float()(z.float()), ref.float(), atol=1e-5)


def test_model_input_errors():
    model = tiny(True)
    x, t = random_states(2)
    with pytest.raises(ValueError, match="length=12"):
        model(x[:, :5], t)
    with pytest.raises(ValueError, match="token ids outside"):
        model(x + V, t)
    with pytest.raises(TypeError, match="integer tensor"):
        model(x.float(), t)
    with pytest.raises(ValueError, match="needs t of shape"):
        model(x)
    with pytest.raises(ValueError, match="mask_id"):
        MaskedDiffusionTransformer(V, L, mask_id=V)
    with pytest.raises(ValueError, match="multiple of 2 \\* n_heads"):
        MaskedDiffusionTransformer(V, L, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="H \\* W = length=12"):
        MaskedDiffusionTransformer(V, L, grid=(3, 3))


class UniformDenoiser:
    """Equal logits on the clean tokens: its NELBO per position is exactly (1 - eps) log(V - 1)."""

    mask_id = MASK

    def __call__(self, x, t):
        logits = torch.zeros(*x.shape, V)
        logits[..., MASK] = -math.inf
        return logits


def test_loss_weighting_matches_the_nelbo():
    """E[(1/t) * #masked * log(V-1) / L] with P(masked) = (1 - eps) t is (1 - eps) log(V - 1)."""
    x0 = torch.randint(0, V - 1, (4096, L), generator=torch.Generator().manual_seed(0))
    loss = masked_diffusion_loss(UniformDenoiser(), x0, generator=torch.Generator().manual_seed(1), eps=1e-3)
    assert loss == pytest.approx((1 - 1e-3) * math.log(V - 1), rel=0.02)


def test_loss_trains():
    model = MaskedDiffusionTransformer(V, L, d_model=16, n_heads=2, n_layers=1)
    x0 = torch.randint(0, V - 1, (32, L), generator=torch.Generator().manual_seed(0))
    loss = masked_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_save_load_roundtrip(tmp_path):
    model = tiny(True, dtype=torch.float32)
    path = tmp_path / "m.safetensors"
    save_model(model, path, metadata={"note": "x"})
    loaded = load_model(path)
    assert loaded.head.weight.dtype == torch.float64 and not loaded.training
    assert loaded.config == model.config and weights_metadata(path)["note"] == "x"
    x, t = random_states(3)
    assert torch.allclose(loaded(x, t), model(x, t), atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a pit-sampler"):
        load_model(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="unknown pretrained"):
        load_pretrained("gpt2")


def test_training_loop_smoke(tmp_path):
    pytest.importorskip("sklearn")
    from pit_sampler.models.train_digits import train

    out = tmp_path / "d.safetensors"
    arch = dict(d_model=16, n_heads=2, n_layers=1, grid=(8, 8))
    model, report = train(steps=2, batch_size=8, arch=arch, log_every=0, out=out, time_conditioned=True)
    assert math.isfinite(report["final_train_loss"]) and math.isfinite(report["heldout_nelbo"])
    assert load_model(out).config["vocab_size"] == 18
    again, _ = train(steps=2, batch_size=8, arch=arch, log_every=0, time_conditioned=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))  # fixed seed


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_weights_positions_and_compile(name):
    """The shipped models (float64) follow the positions protocol and trace whole under torch.compile
    (the input checks used to read x.min() there: a graph break)."""
    if not (WEIGHTS_DIR / PRETRAINED[name]).is_file():
        pytest.skip(f"{PRETRAINED[name]} not shipped")
    model = load_pretrained(name)
    g = torch.Generator().manual_seed(4)
    x = torch.where(torch.rand(3, 64, generator=g) < 0.6, 17, torch.randint(0, 17, (3, 64), generator=g))
    t = torch.rand(3, generator=g)
    assert_positions_match(model, x, t)
    assert_compiles(model, x, t)
    assert_compiles(model, x, t, positions=torch.tensor([0, 100, 100, 191]))


@pytest.mark.parametrize("name", tiered(sorted(PRETRAINED), default={"digits"}))
def test_shipped_weights_pit_equals_sequential(name):
    path = WEIGHTS_DIR / PRETRAINED[name]
    if not path.is_file():
        pytest.skip(f"{path.name} not shipped")
    model = load_pretrained(name)
    assert (model.vocab_size, model.length, model.mask_id) == (18, 64, 17)
    assert model.time_conditioned == (name == "digits-time")
    meta = weights_metadata(path)
    assert float(meta["final_train_loss"]) > 0 and "train_digits" in meta["command"]
    # batch invariance on the real weights: rows at different t, alone and in a batch
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(6, 64, generator=g) < 0.6, 17, torch.randint(0, 17, (6, 64), generator=g))
    assert check_batch_invariance(model, x, torch.rand(6, generator=g))
    x_init = torch.full((4, 64), 17)
    kw = dict(mask_id=17, vocab_size=18, num_steps=64)
    seq = TauLeapingSampler(model, **kw).sample(x_init, seed=3)
    pit = PITSampler(model, window=8, **kw).sample(x_init, seed=3)
    assert torch.equal(seq.tokens, pit.tokens) and pit.exact
    assert seq.tokens.min() >= 0 and seq.tokens.max() <= 16
    assert pit.rounds < seq.rounds
