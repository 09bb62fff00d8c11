"""Bad input gets a clear ValueError/TypeError naming the argument, never a crash or a wrong answer."""
import pytest
import torch

import pit_sampler as ps
from pit_sampler import ops
from pit_sampler.rules import step_tables
from sweep_inputs import sweep_case

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
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=1e-40), "temperature"),  # float32(1/T) is inf
        (dict(temperature=1e39), "temperature"),  # float32(T) is inf, 1/T is 0
        (dict(parametrization="score", skip_inactive=True), "skip_inactive"),
        (dict(parametrization="score", schedule="linear"), "score rate"),
        (dict(vocab_size=MASK), "vocab_size"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(cls, **kwargs)


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(sync_every=0), ValueError, "sync_every"), (dict(sync_every=2.0), ValueError, "sync_every"),
    (dict(max_rows=0), ValueError, "max_rows"), (dict(compile="yes"), TypeError, "compile"),
    (dict(cuda_graph=1), TypeError, "cuda_graph"), (dict(progress="on"), TypeError, "progress"),
    (dict(skip_inactive=1), TypeError, "skip_inactive"), (dict(config="cfg"), TypeError, "config"),
    (dict(windows=4), TypeError, "windows"),
])
def test_bad_device_and_config_arguments(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make(cls, **kwargs)


def test_a_config_is_shared_checked_once_and_overridden_by_keywords():
    config = ps.TauLeapingConfig(mask_id=MASK, num_steps=8, temperature=0.5)
    seq = ps.TauLeapingSampler(denoiser, config=config)
    pit = ps.PITSampler(denoiser, config=config, window=4)
    assert seq.config == config and pit.config == ps.PITConfig(**vars(config), window=4)
    assert torch.equal(seq.sample(masked(), seed=3).tokens, pit.sample(masked(), seed=3).tokens)
    assert torch.equal(seq.sample(masked(), seed=3).tokens, make(temperature=0.5).sample(masked(), seed=3).tokens)
    hot = ps.TauLeapingSampler(denoiser, config=config, temperature=2.0)
    assert hot.config.temperature == 2.0 and config.temperature == 0.5
    with pytest.raises(AttributeError):
        config.temperature = 1.0  # frozen
    with pytest.raises(ValueError, match="num_steps"):
        ps.TauLeapingSampler(denoiser, config=config, num_steps=0)
    with pytest.raises(TypeError, match="config must be a TauLeapingConfig"):
        ps.TauLeapingSampler(denoiser, config=ps.SamplerConfig(mask_id=MASK, num_steps=8))
    maskgit = ps.MaskGITSampler(denoiser, config=ps.SamplerConfig(mask_id=MASK, num_steps=5))
    assert maskgit.sample(masked(), seed=1).tokens.shape == (2, L)


def test_num_steps_is_bounded_before_any_table_is_built():
    """``num_steps=2**40`` would ask the allocator for 8.8 TB of grid; the bound is checked first."""
    from pit_sampler.config import MAX_STEPS

    for n in (MAX_STEPS + 1, 2**40):
        with pytest.raises(ValueError, match="num_steps must be an int in \\[1, MAX_STEPS="):
            ps.SamplerConfig(mask_id=MASK, num_steps=n)
    with pytest.raises(ValueError, match="num_steps"):
        ps.TauLeapingConfig(mask_id=MASK, num_steps=MAX_STEPS + 1)
    assert ps.SamplerConfig(mask_id=MASK, num_steps=MAX_STEPS).num_steps == MAX_STEPS


@pytest.mark.parametrize("options, exc", [
    ({"mode": "bogus"}, ValueError), ({"backend": "no-such-backend"}, ValueError), ({"backend": 5}, TypeError),
    ({"fullgraph": "yes"}, TypeError), ({"dynamic": 1}, TypeError), ({"fulgraph": True}, ValueError),
    ({"model": print}, ValueError), ({"options": 5}, TypeError), ({"mode": "default", "options": {}}, ValueError),
])
def test_compile_options_are_checked_in_the_config(options, exc):
    """A bad ``torch.compile`` option is refused by the config, not deep inside torch.compile (or never)."""
    with pytest.raises(exc, match="^compile: "):
        ps.SamplerConfig(mask_id=MASK, num_steps=8, compile=options)


def test_good_compile_options_are_accepted():
    for options in ({}, {"backend": "eager", "fullgraph": False, "dynamic": None, "mode": None},
                    {"backend": lambda gm, inputs: gm, "mode": "max-autotune-no-cudagraphs", "dynamic": True},
                    {"options": {"trace.enabled": False}}):
        assert ps.SamplerConfig(mask_id=MASK, num_steps=8, compile=options).compile == options


@pytest.mark.parametrize("kwargs, match", [(dict(window=0), "window"), (dict(window=2.0), "window"),
                                           (dict(tol=-0.1), "tol"), (dict(tol=1.0), "tol"),
                                           (dict(mode="fast"), "mode"), (dict(mode="fixed"), "max_iters"),
                                           (dict(max_iters=3), "max_iters")])
def test_bad_pit_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(ps.PITSampler, **kwargs)


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
def test_bools_are_not_numbers(cls):
    for kwargs in (dict(temperature=True), dict(mask_id=True), dict(num_steps=True)):
        with pytest.raises((TypeError, ValueError), match=next(iter(kwargs))):
            make(cls, **kwargs)


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    a = make(ps.PITSampler, mask_id=np.int64(MASK), num_steps=np.int32(8), temperature=np.float32(0.5),
             window=np.int64(4)).sample(masked(), seed=np.int64(7))
    b = make(ps.PITSampler, temperature=0.5).sample(masked(), seed=7)
    assert torch.equal(a.tokens, b.tokens)


def test_seed_range():
    s = make()
    a = s.sample(masked(), seed=2**64 - 1)  # 64 bits: the same key as -1
    b = s.sample(masked(), seed=-1)
    assert torch.equal(a.tokens, b.tokens)
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="seed"):
            s.sample(masked(), seed=bad)
    with pytest.raises(TypeError, match="seed"):
        s.sample(masked(), seed=True)


def test_meta_and_sparse_inputs_get_clear_errors():
    s = make()
    with pytest.raises(ValueError, match="x_init is on the meta device"):
        s.sample(masked().to("meta"))
    with pytest.raises(TypeError, match="x_init must be a dense"):
        s.sample(masked().to_sparse())
    with pytest.raises(ValueError, match="seed is on the meta device"):
        s.sample(masked(), seed=torch.arange(2).to("meta"))
    with pytest.raises(TypeError, match="seed must be a dense"):
        s.sample(masked(), seed=torch.arange(2).to_sparse())


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler])
def test_vocab_size_change_between_calls_is_an_error(cls):
    sizes = iter([V] + [V + 3] * 100)

    def growing(x, t):  # V = 6 on the first call, 9 after: tokens >= 6 would be out of range
        n = next(sizes)
        return torch.randn(x.shape[0], x.shape[1], n, generator=torch.Generator().manual_seed(x.shape[0]))

    with pytest.raises(ValueError, match="returned V=6 earlier"):
        make(cls, fn=growing, num_steps=64).sample(masked(4))


def test_vocabulary_probe_is_counted():
    calls = []

    def recorded(x, t):
        calls.append(x.shape[0])
        return denoiser(x, t)

    x = masked()
    x[:, 0] = 2  # a prompt: V is learned with one extra row before the model sees prompt ids
    for cls in (ps.TauLeapingSampler, ps.PITSampler):
        calls.clear()
        out = make(cls, fn=recorded).sample(x)
        assert out.rounds == len(calls) and out.nfe * x.shape[0] == sum(calls)
        assert calls[0] == 1


def test_a_mask_left_after_the_final_fill_raises_even_under_python_O(monkeypatch):
    """The guard is a real exception (a bare ``assert`` vanishes under ``python -O``)."""
    real = ops.sweep

    def never_unmasks(logits, rows, steps, x0, prev, *args, **kwargs):
        states, counts, residual, invalid = real(logits, rows, steps, x0, prev, *args, **kwargs)
        return x0.expand_as(states).clone(), counts, (x0.expand_as(states) != prev).sum(-1, dtype=torch.int32), invalid

    monkeypatch.setattr(ops, "sweep", never_unmasks)
    with pytest.raises(RuntimeError, match="a mask survived"):
        make().sample(masked())


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


def _sweep_args(W=2, B=3):
    case = sweep_case(W, B, L, V, 4, rule="reject", mask_id=MASK, packed=False)
    return {**case, "logits": case["logits"][: W * B * L]}  # no spare row


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(logits=torch.randn(6, V).long()), TypeError, "logits"),
        (dict(logits=torch.randn(6, V).double()), TypeError, "logits"),
        (dict(logits=torch.randn(1, 6, V)), ValueError, r"logits must have shape \[M, V\]"),
        (dict(logits=torch.randn(6)), ValueError, r"logits must have shape \[M, V\]"),
        (dict(logits=torch.randn(6, 3)), ValueError, "mask_id"),
        (dict(rows=torch.zeros(2, 3, L, dtype=torch.int32)), TypeError, "rows"),
        (dict(rows=torch.zeros(2, 3, dtype=torch.long)), ValueError, "rows"),
        (dict(rows=torch.zeros(2, 3, L + 1, dtype=torch.long)), ValueError, r"rows must have shape \[2, 3, %d\]" % L),
        (dict(rows=torch.zeros(1, 3, L, dtype=torch.long)), ValueError, "rows must have shape"),
        (dict(steps=torch.zeros(2, 4, dtype=torch.long)), ValueError, "steps"),
        (dict(x0=torch.full((3, L), MASK).float()), TypeError, "x0"),
        (dict(prev=torch.full((2, 3, L + 1), MASK)), ValueError, r"prev must have shape \[P, 3, %d\] with P <= 2" % L),
        (dict(prev=torch.full((3, 3, L), MASK)), ValueError, "prev must have shape"),
        (dict(prev=torch.full((2, 3), MASK)), ValueError, "prev"),
        (dict(seeds=torch.arange(4)), ValueError, "seeds"),
        (dict(rate=torch.zeros(5, dtype=torch.float64)), TypeError, "rate"),
        (dict(mask_id=-2), ValueError, "mask_id"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=1e-40), ValueError, "temperature"),
        (dict(temperature=True), TypeError, "temperature"),
        (dict(rule=3), ValueError, "rule"),
        (dict(rule=True), TypeError, "rule"),
        (dict(mask_id=True), TypeError, "mask_id"),
        (dict(mask_id=2**64), ValueError, r"mask_id must lie in \[0, 2\*\*63\)"),  # int64 bound, before V's
        (dict(rule=2**64), ValueError, "rule"),
        (dict(cdf=torch.zeros(5, 2, dtype=torch.float64)), TypeError, "cdf"),
        (dict(logits=torch.randn(6, V).to_sparse()), TypeError, "logits"),
    ],
)
def test_sweep_op_validates(change, exc, match):
    args = _sweep_args()
    args.update(change)
    with pytest.raises(exc, match=match):
        ops.sweep(**args)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(seeds=torch.arange(2)), ValueError, "seeds"),  # shorter than B: Triton read out of bounds
        (dict(cdf=torch.zeros(5, 2, dtype=torch.float64)), TypeError, "cdf"),
        (dict(rule=9), ValueError, "rule"),
        (dict(mask_id=V), ValueError, "mask_id"),
        (dict(rate=torch.zeros(3)), ValueError, "rate"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(rows=torch.zeros(2, 3, dtype=torch.long)), ValueError, "rows"),
        (dict(prev=torch.full((3, 3, L), MASK)), ValueError, "prev"),
        (dict(logits=torch.randn(2, 3, V)), ValueError, "logits"),
    ],
)
@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_the_raw_op_validates_for_every_backend(change, exc, match, backend):
    """``torch.ops.pit_sampler.sweep`` (what compiled graphs call) checks its arguments itself."""
    args = _sweep_args()
    args.update(change)
    order = ("logits", "rows", "steps", "x0", "prev", "seeds", "cdf", "rate", "mask_id")
    scalars = (args.get("temperature", 1.0), args.get("rule", 0), False, False, False)
    with ops.use_backend(backend), pytest.raises(exc, match=match):
        torch.ops.pit_sampler.sweep(*(args[k] for k in order), *scalars)


def test_the_raw_unmask_table_op_validates():
    tab = step_tables(ps.LogLinear(), ps.time_grid(4), "reject")
    x = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="seeds"):
        torch.ops.pit_sampler.unmask_table(x, torch.arange(1), tab.cdf, MASK, 0)
    with pytest.raises(TypeError, match="cdf"):
        torch.ops.pit_sampler.unmask_table(x, torch.arange(2), tab.cdf.double(), MASK, 0)
    with pytest.raises(ValueError, match="rule"):
        torch.ops.pit_sampler.unmask_table(x, torch.arange(2), tab.cdf, MASK, 9)


def test_unmask_table_validates():
    tab = step_tables(ps.LogLinear(), ps.time_grid(4), "reject")
    with pytest.raises(TypeError, match="x"):
        ops.unmask_table(torch.zeros(2, 3), torch.arange(2), tab.cdf, MASK, 0)
    with pytest.raises(ValueError, match="seeds"):
        ops.unmask_table(torch.zeros(2, 3, dtype=torch.long), torch.arange(3), tab.cdf, MASK, 0)
    x = torch.zeros(2, 3, dtype=torch.long)
    for mask_id in (2**63, 2**64, -(2**64)):  # beyond int64: the schema's RuntimeError unless checked first
        with pytest.raises(ValueError, match="mask_id must lie in"):
            ops.unmask_table(x, torch.arange(2), tab.cdf, mask_id, 0)
    with pytest.raises(ValueError, match="rule must lie in"):
        ops.unmask_table(x, torch.arange(2), tab.cdf, MASK, 2**64)


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="backend"):
        ops.set_backend("fortran")
    with ops.use_backend("reference"):
        assert ops.backend_for("cpu") == "reference"
        make().sample(masked())
        assert ops.last_backend() == "reference"


@pytest.mark.parametrize("cls", [ps.TauLeapingSampler, ps.PITSampler, ps.MaskGITSampler])
def test_sparse_logits_are_a_type_error(cls):
    """A model returning a sparse tensor gets a TypeError naming the denoiser, not a raw reshape error."""
    sparse = lambda x, t: denoiser(x, t).to_sparse()  # noqa: E731
    with pytest.raises(TypeError, match="denoiser must return a dense"):
        make(cls, fn=sparse, vocab_size=V).sample(masked(), seed=0)


def test_a_denoiser_that_reads_the_host_under_compile_names_compile():
    """``compile=True`` traces the whole round with ``fullgraph=True``: a model that branches on
    ``.item()`` cannot be traced, and the error says so and names ``compile=``."""
    def branchy(x, t):
        out = denoiser(x, t)
        return out * 2 if (x == MASK).sum().item() > 3 else out

    with pytest.raises(ValueError, match="compile=.*cannot trace a round"):
        make(ps.PITSampler, fn=branchy, vocab_size=V, compile={"backend": "eager"}).sample(masked(), seed=0)
