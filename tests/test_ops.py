"""The custom ops pass ``torch.library.opcheck`` (a sampler's round compiling whole: tests/test_compile.py).

* opcheck (schema, fake/meta kernel, autograd registration, AOT dispatch with dynamic shapes) for
  ``pit_sampler::sweep`` (both parametrizations) and ``pit_sampler::unmask_table``, on the reference
  backend and, where it can run, on the Triton backend.
"""
import pytest
import torch

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
