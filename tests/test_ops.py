"""The custom ops pass ``torch.library.opcheck``; a sampler's step compiles whole and once.

* opcheck (schema, fake/meta kernel, autograd registration, AOT dispatch with dynamic shapes) for
  ``pit_sampler::sweep`` (both parametrizations) and ``pit_sampler::unmask_table``, on the reference
  backend and, where it can run, on the Triton backend.
* ``torch.compile(fullgraph=True)`` of ``sampler.step`` (denoiser call + fused sweep): no graph break,
  no recompilation between iterations of the same shapes, and ``PITSampler(..., compile=True)``
  returns exactly the eager tokens.
"""
import pytest
import torch
import torch._dynamo

import pit_sampler as ps
from pit_sampler import noise, ops
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import get_schedule, time_grid

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference"] + (["triton"] if "triton" in ops.available_backends(DEVICE) else [])


def _sweep_args(score: bool, seed: int = 0, with_counts: bool = True):
    g = torch.Generator().manual_seed(seed)
    B, L, V, W, N, mask_id = 2, 3, 7, 2, 5, 6
    tables = step_tables(get_schedule("cosine"), time_grid(N), "first")
    x0 = torch.full((B, L), mask_id)
    x0[0, 0] = 3
    steps = torch.tensor([[2, 5], [3, -1]])
    rows = torch.tensor([[[0, 3, 1], [4, 2, 2]], [[1, -1, 0], [-1, -1, -1]]])  # packed rows, repeats, holes
    logits = torch.randn(5, V, generator=g)
    rate = torch.full((N + 1,), 0.05, dtype=torch.float32)
    prev = x0.expand(W - 1, B, L).clone()  # P = W - 1: the last slice has no previous iterate
    args = (logits, rows, steps, x0, prev, noise.sample_seeds(seed, B), tables.cdf,
            rate if score else tables.rate, mask_id, 1.0, RULES.index("first"), score, False, with_counts)
    return tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", [False, True])
@pytest.mark.parametrize("with_counts", [False, True])
def test_opcheck_sweep(backend, score, with_counts):
    with ops.use_backend(backend):
        torch.library.opcheck(torch.ops.pit_sampler.sweep.default, _sweep_args(score, with_counts=with_counts))
    assert ops.last_backend("sweep") == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_unmask_table(backend):
    N, mask_id = 9, 3
    x = torch.tensor([[3, 3, 1, 3, 3], [0, 3, 3, 3, 2]], device=DEVICE)
    cdf = step_tables(get_schedule("loglinear"), time_grid(N), "reject").cdf.to(DEVICE)
    with ops.use_backend(backend):
        torch.library.opcheck(torch.ops.pit_sampler.unmask_table.default, (x, noise.sample_seeds(1, 2, DEVICE), cdf, mask_id, 0))
    assert ops.last_backend("unmask_table") == backend


class ExactDenoiser:
    """A small batch-invariant denoiser whose float32 arithmetic is exact (small integers scaled by 1/8),
    so compiled and eager code give identical logits in any evaluation order; it depends on ``t``."""

    def __init__(self, vocab: int, length: int, mask_id: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randint(-3, 4, (vocab, 8), generator=g).float().to(DEVICE)
        self.position = torch.randint(-3, 4, (length, 8), generator=g).float().to(DEVICE)
        self.out = torch.randint(-2, 3, (8, vocab), generator=g).float().to(DEVICE)
        self.not_mask = (torch.arange(vocab) != mask_id).to(DEVICE)

    def __call__(self, x, t):
        h = self.embed[x] + self.position
        h = h + h.sum(1, keepdim=True) + (t > 0.5).float()[:, None, None]
        logits = (h @ self.out) * 0.125
        return torch.where(self.not_mask, logits, float("-inf"))


def _sampler(cls=ps.PITSampler, **kwargs):
    V, L, mask_id = 9, 6, 8
    kwargs = dict(mask_id=mask_id, num_steps=16, **kwargs)
    if cls is ps.PITSampler:
        kwargs.setdefault("window", 4)
    x = torch.full((3, L), mask_id, device=DEVICE)
    x[0, :2] = torch.tensor([1, 2])
    return cls(ExactDenoiser(V, L, mask_id), **kwargs), x


class _CountingBackend:
    """A ``torch.compile`` backend that counts (re)compilations and runs the traced graph as is."""

    def __init__(self):
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return gm.forward


def test_compiled_step_has_no_graph_break_and_no_recompilation():
    """Run a whole sample through ``torch.compile(sampler.step, fullgraph=True)``: a call whose inputs
    have the shapes of an earlier call never compiles again."""
    torch._dynamo.reset()
    sampler, x = _sampler(skip_inactive=False)  # every sample runs every step: full windows repeat
    backend = _CountingBackend()
    compiled = torch.compile(sampler.step, fullgraph=True, backend=backend)
    seen, recompiled_on_seen_shapes, calls = set(), [], 0

    def step(*args):
        nonlocal calls
        calls += 1
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        before = backend.compiles
        out = compiled(*args)
        if shapes in seen and backend.compiles != before:
            recompiled_on_seen_shapes.append(shapes)
        seen.add(shapes)
        return out

    sampler._step = step
    with ops.use_backend("reference"):
        tokens = sampler.sample(x, seed=4).tokens
        eager = _sampler(skip_inactive=False)[0].sample(x, seed=4).tokens
    assert torch.equal(tokens, eager)
    assert calls > len(seen) >= 1 and 1 <= backend.compiles <= len(seen)  # shapes did repeat
    assert not recompiled_on_seen_shapes
    # and the strict form: iterations of one shape under error_on_recompile
    torch._dynamo.reset()
    compiled = torch.compile(sampler.step, fullgraph=True, backend="eager")
    g = torch.Generator().manual_seed(0)
    B, L, W = x.shape[0], x.shape[1], sampler.window
    tables = sampler.tables.to(DEVICE)
    with torch._dynamo.config.patch(error_on_recompile=True), ops.use_backend("reference"):
        for it in range(4):
            xs = torch.where(torch.rand(W * B, L, generator=g).to(DEVICE) < 0.5, x.repeat(W, 1), sampler.mask_id)
            steps = torch.randint(0, sampler.num_steps + 1, (W, B), generator=g).to(DEVICE)
            ts = sampler.times.to(DEVICE, torch.float32)[steps.flatten()]
            rows = torch.arange(W * B, device=DEVICE).view(W, B)
            prev = xs.view(W, B, L)
            compiled(xs, ts, rows, steps, x, prev, noise.sample_seeds(it, B, DEVICE), tables.cdf, tables.rate, 2)


@pytest.mark.parametrize("parametrization", ["mean", "score"])
def test_pit_sampler_compile_equals_eager(parametrization):
    """``PITSampler(..., compile=True)`` (default compiler) returns the eager tokens, bit for bit."""
    torch._dynamo.reset()
    kwargs = dict(parametrization="score", schedule="linear", t_max=0.9) if parametrization == "score" else {}
    compiled, x = _sampler(compile=True, **kwargs)
    eager, _ = _sampler(**kwargs)
    with ops.use_backend("reference"):
        got = compiled.sample(x, seed=7)
        want = eager.sample(x, seed=7)
    assert torch.equal(got.tokens, want.tokens)
    assert got.rounds == want.rounds
