"""The custom ops pass ``torch.library.opcheck`` (a sampler's round compiling whole: tests/test_compile.py).

* opcheck (schema, fake/meta kernel, autograd registration, AOT dispatch with dynamic shapes) for
  ``pit_sampler::sweep`` (both parametrizations) and ``pit_sampler::unmask_table``, on the reference
  backend and, where it can run, on the Triton backend.
"""
import pytest
import torch

from pit_sampler import noise, ops
from pit_sampler.rules import step_tables
from pit_sampler.schedules import get_schedule, time_grid
from sweep_inputs import positional, sweep_case

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference"] + (["triton"] if "triton" in ops.available_backends(DEVICE) else [])


def _sweep_args(score: bool, seed: int = 0, with_counts: bool = True):
    """Packed rows with holes, a prompt, pass-through slices; ``P = W - 1`` (the last slice has no
    previous iterate)."""
    case = sweep_case(3, 2, 3, 7, 5, rule="first", score=score, seed=seed, mask_id=6, device=DEVICE)
    case["prev"] = case["prev"][:2].contiguous()
    return positional(case, 1.0, "first", score, False, with_counts)


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
