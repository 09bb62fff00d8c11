"""Shared checks of the positions protocol for the model and adapter tests.

* :func:`index_cases`: index vectors ``[M]`` for an ``[R, L]`` input: empty, one entry, the last
  position, repeats, a random draw, every position in reverse order.
* :func:`assert_positions_match`: ``denoiser(x, t, positions=index)`` equals the full output's rows
  ``[index // L, index % L]`` bit for bit (same dtype and shape), for every case.
* :func:`assert_compiles`: ``torch.compile(fn, fullgraph=True)`` traces with zero graph breaks
  (counted in ``torch._dynamo.utils.counters``) and returns exactly the eager output. The graph
  breaks come from Dynamo's tracing, whatever the backend; the ``"eager"`` backend runs the traced
  graph without Inductor's code generation, which would cost minutes of C++ compilation per test
  on CI.
"""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters


def index_cases(R: int, L: int, seed: int = 0) -> list[torch.Tensor]:
    n = R * L
    g = torch.Generator().manual_seed(seed)
    return [
        torch.zeros(0, dtype=torch.int64),
        torch.tensor([n // 2]),
        torch.tensor([n - 1]),
        torch.tensor([0, n - 1, 0, 0, n - 1]),  # repeats (padding to a static size)
        torch.randint(0, n, (7,), generator=g),
        torch.arange(n - 1, -1, -1),
    ]


def assert_positions_match(denoiser, x: torch.Tensor, t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Every :func:`index_cases` entry against the full output; returns the full output."""
    full = denoiser(x, t)
    R, L = x.shape
    assert full.dim() == 3 and full.shape[:2] == (R, L)
    for index in index_cases(R, L, seed):
        packed = denoiser(x, t, positions=index)
        assert packed.dtype == full.dtype and packed.shape == (index.shape[0], full.shape[2])
        assert torch.equal(packed, full[index // L, index % L]), f"rows differ for positions={index.tolist()}"
    return full


def assert_compiles(fn, *args, **kwargs) -> torch.Tensor:
    """``fn(*args, **kwargs)`` under ``torch.compile(fullgraph=True)``: no graph break, the eager output."""
    torch._dynamo.reset()
    counters.clear()
    out = torch.compile(fn, fullgraph=True, backend="eager")(*args, **kwargs)
    assert not counters["graph_break"], dict(counters["graph_break"])
    expected = fn(*args, **kwargs)
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    return out
