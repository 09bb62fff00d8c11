"""The pieces of a sampling round, and the GPU-scale properties of the whole loop.

* :mod:`pit_sampler.engine.plan`: the plan's steps, ``rank`` and draw bounds against brute force.
* :mod:`pit_sampler.engine.rows`: the rows requested through the positions protocol are exactly the
  (slice, position) pairs the sweep reads, and the full map addresses the flat full output.
* :func:`slide` and :func:`record_errors` on hand-made cases.
* The positions path, the full path and sequential give identical tokens: every rule, both
  parametrizations, prompts, every CPU backend.
* Logits materialised per call at B = 1, L = 1024, V = 50257, W = 16 with the positions protocol:
  at most 1% of the full path's ``W B L`` rows.
* Host reads of device data during ``sample()``: counted with a ``TorchDispatchMode``
  (``_local_scalar_dense``, ``nonzero``, ``item``, copies to the CPU) plus ``Tensor.tolist`` calls:
  sequential at most ``C_HOST_READS``, PIT at most ``ceil(rounds / sync_every) + C_HOST_READS``.
"""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pit_sampler as ps
from pit_sampler import noise, ops
from pit_sampler.engine import rows as rowmaps
from pit_sampler.engine.plan import reach_bound
from pit_sampler.steps.tau_leaping import make_plan
from pit_sampler.rules import step_tables
from pit_sampler.engine.accept import record_errors
from pit_sampler.engine.run import C_HOST_READS
from pit_sampler.engine.window import slide
from pit_sampler.schedules import get_schedule, time_grid
from pit_sampler.testing import Gathered, make_oracle
from tiers import tiered

MASK = 5


def _tables(N, rule="reject"):
    return step_tables(get_schedule("loglinear"), time_grid(N, "geometric", 1.0, 1e-3), rule)


def _x(B, L, seed, prompt=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.full((B, L), MASK)
    keep = torch.rand(B, L, generator=g) < prompt
    return torch.where(keep, torch.randint(0, MASK, (B, L), generator=g), x)


@pytest.mark.parametrize("skip_inactive", [True, False])
@pytest.mark.parametrize("B,L,N", [(1, 1, 3), (3, 17, 40), (2, 64, 300)])
def test_plan_against_brute_force(B, L, N, skip_inactive):
    x = _x(B, L, seed=B + L)
    seeds = noise.sample_seeds(7, B)
    tables = _tables(N)
    plan = make_plan(x, seeds, tables, MASK, N, skip_inactive=skip_inactive, need_rank=True)
    table = ops.unmask_table(x, seeds, tables.cdf, MASK, tables.rule)
    for b in range(B):
        steps = sorted(set(table[b][table[b] >= 0].tolist())) if skip_inactive else list(range(N + 1))
        if not (x[b] == MASK).any():
            steps = [] if skip_inactive else steps
        total = len(steps) if (x[b] == MASK).any() else 0
        assert int(plan.total[b]) == total
        assert plan.steps[b, :total].tolist() == steps[:total]
        for l in range(L):
            r = int(plan.rank[b, l])
            assert (r == -1) if x[b, l] != MASK else plan.steps[b, r] == table[b, l]
        for span in (1, 2, 5):
            draws = [int(((plan.rank[b] >= s) & (plan.rank[b] < s + span)).sum()) for s in range(plan.length)]
            assert plan.window_draws(span)[b].tolist() == draws
            windows = plan.window_draws(span)
            for start in range(plan.length + 2):
                pos = torch.full((B,), start)
                for reach in (1, 3, None):
                    end = plan.length if reach is None else start + reach
                    assert int(reach_bound(windows, pos, reach)[b]) == max(draws[start:end], default=0)


@pytest.mark.parametrize("W", [1, 2, 5])
def test_mean_rows_request_exactly_the_draws(W):
    B, L, N = 3, 23, 60
    x = _x(B, L, seed=W)
    seeds = noise.sample_seeds(1, B)
    plan = make_plan(x, seeds, _tables(N), MASK, N, skip_inactive=True, need_rank=True)
    n = 2 * W if W > 1 else 1
    pos = torch.tensor([0, 3, 1]).clamp(max=plan.total)
    budget = int(reach_bound(plan.window_draws(n), pos, None).sum())
    index, rows = rowmaps.mean_rows(plan.rank, pos, n, W, budget)
    assert index.shape == (budget,)
    seen = set()
    for u in range(n):
        for b in range(B):
            for l in range(L):
                r = int(rows[u, b, l])
                drawn = x[b, l] == MASK and 0 <= int(plan.rank[b, l]) - int(pos[b]) == u
                assert (r >= 0) == bool(drawn), (u, b, l)
                if drawn:  # the packed row holds denoiser row min(u, W - 1) * B + b, position l
                    assert int(index[r]) == (min(u, W - 1) * B + b) * L + l
                    seen.add(r)
    assert seen == set(range(len(seen)))  # packed in order, the rest is padding
    # a budget too small drops requests: they become missing rows, never wrong ones
    small_index, small_rows = rowmaps.mean_rows(plan.rank, pos, n, W, max(0, len(seen) - 1))
    assert int((small_rows >= 0).sum()) == max(0, len(seen) - 1)


def test_score_rows_cover_every_masked_position():
    B, L, W = 2, 9, 3
    masked = _x(B, L, seed=4) == MASK
    Q = int(masked.sum())
    index, rows = rowmaps.score_rows(masked, 2 * W, W, Q)
    assert index.shape == (W * Q,)
    for u in range(2 * W):
        for b in range(B):
            for l in range(L):
                r = int(rows[u, b, l])
                assert (r >= 0) == bool(masked[b, l])
                if r >= 0:
                    assert int(index[r]) == (min(u, W - 1) * B + b) * L + l


def test_full_rows_address_the_flat_output():
    n, W, B, L = 6, 3, 2, 5
    rows = rowmaps.full_rows(n, W, B, L, "cpu")
    for u in range(n):
        for b in range(B):
            for l in range(L):
                assert int(rows[u, b, l]) == (min(u, W - 1) * B + b) * L + l


def test_slide_and_record_errors():
    x0 = torch.tensor([[0], [10]])  # B = 2, L = 1
    states = torch.arange(1, 5).view(4, 1, 1) + torch.tensor([0, 10]).view(1, 2, 1)  # [n = 4, B, L]
    out = slide(x0, states, torch.tensor([1, 3]), 2)
    assert out[:, 0, 0].tolist() == [1, 2, 3] and out[:, 1, 0].tolist() == [13, 14, 14]
    invalid = torch.tensor([[0, 0], [2, -1]])
    steps = torch.tensor([[4, 7], [5, 9]])
    accepted = torch.tensor([[True, True], [True, False]])
    err = record_errors(torch.full((2,), -1), invalid, accepted, steps)
    assert err.tolist() == [2 * 5, -1]  # sample 1's flagged slice was discarded
    err = record_errors(err, invalid, torch.ones(2, 2, dtype=torch.bool), steps)
    assert err.tolist() == [2 * 5, 2 * 9 + 1]  # the first error is kept; -1 is an internal error


def _backends():
    out = ["reference"] + [b for b in ("native",) if b in ops.available_backends("cpu")]
    try:
        import triton  # noqa: F401
        out.append("triton")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("backend", tiered(_backends(), default={"reference", "native"}))
@pytest.mark.parametrize("parametrization", ["mean", "score"])
def test_positions_path_equals_full_path_and_sequential(backend, parametrization, monkeypatch):
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        if "triton" not in ops.available_backends("cpu"):
            pytest.skip("the Triton backend does not run on CPU tensors here")
    oracle = make_oracle("hmm", seed=2, num_tokens=5, length=11)
    x = torch.full((3, 11), oracle.mask_id)
    x[0, :3] = torch.tensor([1, 2, 3])
    x[2, 4:9:2] = 0
    rules = ("reject", "first", "tweedie") if backend != "triton" else ("first",)
    with ops.use_backend(backend):
        for rule in rules:
            kw = dict(mask_id=oracle.mask_id, num_steps=20, rule=rule, parametrization=parametrization)
            want = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=5).tokens
            for cls, extra in ((ps.TauLeapingSampler, {}), (ps.PITSampler, dict(window=4)),
                               (ps.PITSampler, dict(window="auto"))):
                gathered = Gathered(oracle)
                got = cls(gathered, **extra, **kw).sample(x, seed=5)
                assert torch.equal(got.tokens, want), (rule, cls.__name__, extra)
                assert gathered.requested  # the positions path ran
                full = cls(oracle, **extra, **kw).sample(x, seed=5)
                assert torch.equal(full.tokens, want)
                if extra.get("window") != "auto":  # auto's windows follow the measured wall time
                    assert full.rounds == got.rounds


class _FlatLogits:
    """A cheap positions-protocol denoiser at GPT-2 shapes: logits ``bias[v] + 0.1 x[l - 1]``-style
    (the token to the left shifts them), computed only for the requested rows."""

    supports_positions = True

    def __init__(self, V, mask_id):
        g = torch.Generator().manual_seed(0)
        self.bias = torch.randn(V, generator=g)
        self.mask_id, self.V = mask_id, V

    def __call__(self, x, t, positions):
        R, L = x.shape
        left = x.reshape(-1)[(positions - 1).clamp(min=0)]
        return self.bias + 0.1 * (left % 7).to(torch.float32).unsqueeze(1)


def test_positions_logits_at_gpt2_shapes_are_under_one_percent():
    """B = 1, L = 1024, V = 50257, W = 16: logits rows per call at most 1% of the full path's."""
    V, L, W = 50257, 1024, 16
    den = _FlatLogits(V, V - 1)
    x = torch.full((1, L), V - 1)
    out = ps.PITSampler(den, mask_id=V - 1, num_steps=L, window=W).sample(x, seed=0)
    assert not (out.tokens == V - 1).any()
    assert out.logits_rows <= 0.01 * W * 1 * L, out.logits_rows


class _CountHostReads(TorchDispatchMode):
    """Counts aten ops that bring device data to the host."""

    READS = {"_local_scalar_dense", "nonzero", "item"}

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        to_cpu = name in ("_to_copy", "copy_") and any(
            isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args
        ) and kwargs.get("device", None) == torch.device("cpu")
        self.reads += name in self.READS or to_cpu
        return func(*args, **(kwargs or {}))


class _Mixing(torch.nn.Module):
    """A small batch-invariant denoiser with no host reads of its own: embeddings mixed over positions."""

    def __init__(self, V=7, H=8, L=12):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.emb = torch.nn.Parameter(torch.randn(V, H, generator=g))
        self.out = torch.nn.Parameter(torch.randn(H, V, generator=g))
        self.V = V

    def forward(self, x, t):
        h = self.emb[x]
        h = h + h.mean(1, keepdim=True) + t.view(-1, 1, 1)
        return h @ self.out


def _reads_during(fn, monkeypatch):
    """``(fn(), host reads during it)``: the aten ops of :class:`_CountHostReads` and ``.tolist()`` calls."""
    calls = [0]
    tolist = torch.Tensor.tolist

    def counted(self):
        calls[0] += 1
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    with _CountHostReads() as mode:
        result = fn()
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return result, mode.reads + calls[0]


def _count_reads(sampler, x, monkeypatch):
    return _reads_during(lambda: sampler.sample(x, seed=3), monkeypatch)


def test_no_value_checks_read_while_a_cuda_graph_is_captured(monkeypatch):
    """The shipped model's token check, the positions protocol's index check and the SEDD adapter's
    check of its time input read device data, which CUDA graph capture forbids: they are skipped while
    a stream is captured (simulated here by patching the capture query) and made otherwise."""
    from pit_sampler.adapters import SEDDScoreModel
    from pit_sampler.models import digits, load_pretrained

    model = load_pretrained("digits")
    sedd = SEDDScoreModel(lambda x, sigma: torch.zeros(*x.shape, 9), mask_id=8, vocab_size=9)
    x, t = torch.full((2, digits.LENGTH), digits.MASK_ID), torch.full((2,), 0.5)

    def calls():
        return model(x, t, positions=torch.arange(5)), sedd(torch.full((2, 6), 8), t)

    assert _reads_during(calls, monkeypatch)[1] >= 3
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _reads_during(calls, monkeypatch)[1] == 0


def _digits_model():
    from pit_sampler.models import digits, load_pretrained

    x = torch.full((4, digits.LENGTH), digits.MASK_ID)
    x[0, :8] = 3  # a prompt
    return load_pretrained("digits"), x, dict(mask_id=digits.MASK_ID)


def _hf_model():
    transformers = pytest.importorskip("transformers")
    from pit_sampler.adapters import HFMaskedLM

    config = transformers.BertConfig(vocab_size=21, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    x = torch.full((3, 24), 20)
    x[1, :5] = 4
    return HFMaskedLM(model, mask_id=20), x, {}


def _sedd_model():
    from pit_sampler.adapters import SEDDScoreModel

    table = torch.randn(9, 9, generator=torch.Generator().manual_seed(2)) - 3
    x = torch.full((3, 16), 8)
    x[2, :4] = 1
    return SEDDScoreModel(lambda x, sigma: table[x] + 0.1 * sigma.view(-1, 1, 1), mask_id=8, vocab_size=9), x, {}


def _mixing_model():
    x = torch.full((4, 48), 6)
    x[0, :2] = 1  # a prompt: the vocabulary probe
    return _Mixing().eval(), x, dict(mask_id=6)


SAMPLERS = {
    "sequential": lambda den, kw: ps.TauLeapingSampler(den, num_steps=96, **kw),
    "pit": lambda den, kw: ps.PITSampler(den, num_steps=96, window=8, **kw),
    "auto": lambda den, kw: ps.PITSampler(den, num_steps=96, **kw),
    "maskgit": lambda den, kw: ps.MaskGITSampler(den, num_steps=8, window=4, **kw),
}


@pytest.mark.skipif("native" not in ops.available_backends("cpu"), reason="the reference backend reads (nonzero)")
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("model,sync_every", [("mixing", 1), ("mixing", 3), ("mixing", 8), ("digits", 8), ("hf", 8),
                                              ("sedd", 8)])
def test_host_reads_are_bounded(model, sync_every, sampler, monkeypatch):
    """Eager sampling reads device data at most ``ceil(rounds / sync_every) + C_HOST_READS`` times:
    one read per poll, a fixed handful per run; the package's own denoisers (the shipped digits
    model, HFMaskedLM on a real transformers class, the SEDD adapter) check values on the run's first
    call only, not on every round."""
    den, x, kw = {"mixing": _mixing_model, "digits": _digits_model, "hf": _hf_model, "sedd": _sedd_model}[model]()
    if sampler == "maskgit" and model == "sedd":
        pytest.skip("MaskGIT reads probabilities, not SEDD log-scores")
    make = SAMPLERS[sampler]
    with ops.use_backend("native"):
        out, reads = _count_reads(make(den, dict(sync_every=sync_every, **kw)), x, monkeypatch)
    assert not bool((out.tokens == x[-1, -1]).any())  # every builder's last position is masked
    assert out.rounds > 2 * C_HOST_READS or sampler != "sequential"  # reads do not grow with rounds
    assert reads <= math.ceil(out.rounds / sync_every) + C_HOST_READS, (reads, out.rounds)
    assert out.polls >= math.ceil(out.iterations / sync_every) - 1  # the count sees the polls
