"""Bad input gets a clear ValueError/TypeError naming the argument, never a crash or a wrong answer."""
import pytest
import torch

import pit_sampler as ps
from pit_sampler import ops
from pit_sampler.rules import step_tables

V, L, MASK = 6, 5, 5


def denoiser(x, t):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(V, L, V, generator=g)
    return table[x, torch.arange(x.shape[1])]


def masked(b=2):
    return torch.full((b, L), MASK)


def make(cls=ps.TauLeapingSampler, fn=denoiser, **kw):
    kw = {"mask_id": MASK, "num_steps": 8, **kw}
    if cls is ps.PITSampler:
        kw.setdefault("window", 4)
    return cls(fn, **kw)


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=-3), "num_steps"),
        (dict(num_steps=3.0), "num_steps"),
        (dict(t_min=0.0), "t_min"),
        (dict(t_min=1.0), "t_min"),
        (dict(t_min=2.0), "t_min"),
        (dict(t_max=0.5, t_min=0.6), "t_min"),
        (dict(mask_id=-1), "mask_id"),
        (dict(rule="metropolis"), "rule"),
        (dict(grid="log"), "grid"),
        (dict(schedule="sqrt"), "schedule"),
        (dict(final="mode"), "final"),
        (dict(parametrization="velocity"), "parametrization"),
        (dict(temperature=0.0), "temperature"),
        (dict(parametrization="score", skip_inactive=True), "skip_inactive"),
        (dict(parametrization="score", schedule="linear"), "score rate"),
        (dict(vocab_size=MASK), "vocab_size"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(cls, **kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(window=0), "window"), (dict(window=2.0), "window"),
                                           (dict(tol=-0.1), "tol"), (dict(tol=1.0), "tol"),
                                           (dict(mode="fast"), "mode"), (dict(mode="fixed"), "max_iters"),
                                           (dict(max_iters=3), "max_iters")])
def test_bad_pit_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(ps.PITSampler, **kwargs)


def test_denoiser_must_be_callable():
    with pytest.raises(TypeError, match="denoiser"):
        ps.TauLeapingSampler(None, mask_id=MASK, num_steps=4)


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
def test_bad_x_init(cls):
    s = make(cls)
    with pytest.raises(TypeError, match="x_init"):
        s.sample(masked().float())
    with pytest.raises(TypeError, match="x_init"):
        s.sample(masked().tolist())
    with pytest.raises(TypeError, match="x_init"):
        s.sample(masked() == MASK)
    with pytest.raises(ValueError, match="x_init"):
        s.sample(torch.full((L,), MASK))
    with pytest.raises(ValueError, match="empty batch"):
        s.sample(masked(0))
    with pytest.raises(ValueError, match="negative"):
        s.sample(torch.tensor([[MASK, -1, MASK, 0, 1]]))
    with pytest.raises(ValueError, match="token id 9"):
        s.sample(torch.tensor([[MASK, 9, MASK, 0, 1]]))
    with pytest.raises(TypeError, match="seed"):
        s.sample(masked(), seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        s.sample(masked(), seed=torch.tensor([1, 2, 3]))


def test_mask_id_out_of_vocab_range():
    def vocab_v(x, t):  # a model with V outputs that never looks at the ids it is given
        return torch.linspace(-1, 1, V).expand(x.shape[0], x.shape[1], V).clone()

    with pytest.raises(ValueError, match="mask_id"):
        ps.TauLeapingSampler(vocab_v, mask_id=V, num_steps=4).sample(torch.full((1, L), V))


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
def test_bad_denoiser_outputs(cls):
    with pytest.raises(ValueError, match="vocab size"):
        make(cls, vocab_size=V + 1).sample(masked())
    with pytest.raises(ValueError, match="shape"):
        make(cls, fn=lambda x, t: denoiser(x, t)[:, :-1]).sample(masked())
    with pytest.raises(ValueError, match="shape"):
        make(cls, fn=lambda x, t: denoiser(x, t).flatten(1)).sample(masked())
    with pytest.raises(TypeError, match="logits"):
        make(cls, fn=lambda x, t: denoiser(x, t).long()).sample(masked())
    with pytest.raises(TypeError, match="torch.Tensor"):
        make(cls, fn=lambda x, t: denoiser(x, t).numpy()).sample(masked())


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_logits_on_sampled_rows_raise(cls, bad):
    def poisoned(x, t):
        logits = denoiser(x, t)
        logits[:, 2, 1] = bad  # position 2 is sampled in every sample
        return logits

    with pytest.raises(ValueError, match="NaN/inf"):
        make(cls, fn=poisoned).sample(masked())

    def all_neg_inf(x, t):
        logits = denoiser(x, t)
        logits[:, 3, :] = float("-inf")
        return logits

    with pytest.raises(ValueError, match="NaN/inf"):
        make(cls, fn=all_neg_inf).sample(masked())


def test_nonfinite_logits_on_rows_not_sampled_are_fine():
    def poisoned(x, t):
        logits = denoiser(x, t)
        logits[:, 0] = float("nan")  # position 0 is a prompt: never sampled
        logits[:, :, MASK] = float("inf")  # the mask column is never drawn
        return logits

    x = masked()
    x[:, 0] = 2
    out = make(ps.PITSampler, fn=poisoned).sample(x, seed=3)
    assert (out.tokens[:, 0] == 2).all() and not (out.tokens == MASK).any()


def test_float64_denoiser_is_accepted_as_float32():
    a = make(fn=lambda x, t: denoiser(x, t).double()).sample(masked(), seed=1)
    b = make().sample(masked(), seed=1)
    assert torch.equal(a.tokens, b.tokens)


def _sweep_args(W=2, B=3, R=None, Vv=V):
    tab = step_tables(ps.LogLinear(), ps.time_grid(4), "reject")
    R = W * B if R is None else R
    return dict(
        logits=torch.randn(R, L, Vv), rows=torch.arange(W * B).view(W, B), steps=torch.zeros(W, B, dtype=torch.long),
        x0=torch.full((B, L), MASK), prev=torch.full((W, B, L), MASK), seeds=torch.arange(B), cdf=tab.cdf,
        rate=tab.rate, mask_id=MASK,
    )


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(logits=torch.randn(6, L, V).long()), TypeError, "logits"),
        (dict(logits=torch.randn(6, L, V).double()), TypeError, "logits"),
        (dict(logits=torch.randn(6, L + 1, V)), ValueError, "logits"),
        (dict(logits=torch.randn(6, L, 3)), ValueError, "mask_id"),
        (dict(rows=torch.zeros(2, 3, dtype=torch.int32)), TypeError, "rows"),
        (dict(steps=torch.zeros(2, 4, dtype=torch.long)), ValueError, "steps"),
        (dict(x0=torch.full((3, L), MASK).float()), TypeError, "x0"),
        (dict(prev=torch.full((2, 3, L + 1), MASK)), ValueError, "prev"),
        (dict(seeds=torch.arange(4)), ValueError, "seeds"),
        (dict(rate=torch.zeros(5, dtype=torch.float64)), TypeError, "rate"),
        (dict(mask_id=-2), ValueError, "mask_id"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(rule=3), ValueError, "rule"),
    ],
)
def test_sweep_op_validates(change, exc, match):
    args = _sweep_args()
    args.update(change)
    with pytest.raises(exc, match=match):
        ops.sweep(**args)


def test_unmask_table_validates():
    tab = step_tables(ps.LogLinear(), ps.time_grid(4), "reject")
    with pytest.raises(TypeError, match="x"):
        ops.unmask_table(torch.zeros(2, 3), torch.arange(2), tab.cdf, MASK, 0)
    with pytest.raises(ValueError, match="seeds"):
        ops.unmask_table(torch.zeros(2, 3, dtype=torch.long), torch.arange(3), tab.cdf, MASK, 0)


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="backend"):
        ops.set_backend("fortran")
    with ops.use_backend("reference"):
        assert ops.backend_for("cpu") == "reference"
        make().sample(masked())
        assert ops.last_backend() == "reference"
