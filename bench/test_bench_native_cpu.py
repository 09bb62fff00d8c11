"""CPU benchmark: the C++ sweep (``native``) against the PyTorch reference on the same inputs.

    pytest bench/test_bench_native_cpu.py --benchmark-only --benchmark-group-by=group

One PIT window as the sampler runs it: ``W = 16`` slices, ``B = 4`` samples of ``L = 256`` positions
(a 32-token prompt), ``V = 32000``, fp32 and bf16 logits, a 1024-step geometric log-linear grid with
the reject rule and skip-inactive plans (slice ``w`` of sample ``b`` is that sample's ``w``-th step at
which some position unmasks), so each slice unmasks a few positions and about a hundred logits rows are
read per sweep. Every slice of sample ``b`` reads the packed rows of sample ``b`` (``rows[w, b, l] =
b L + l`` into ``[B L, V]``): the same rows are read as with ``W B L`` distinct rows, in ``W`` times
less memory. The reference runs one round (it
takes seconds); the two outputs are checked equal. Not collected by the test run (bench/ is outside
``testpaths``); no timing assertions.

``test_sweep_cpu_padded_vocab`` (group ``sweep-cpu-vocab-layout``): the native sweep at GPT-2's
``V = 50257`` on contiguous logits and on the padded-vocab view ``logits[..., :50257]`` of a
``[B, L, 50304]`` tensor (what a model with a padded embedding returns); the kernels read through the
strides, so the two should cost about the same (no copy of the logits). Compare the two means.

``test_sweep_cpu_packed_rows`` (group ``sweep-cpu-packed``): the same window with only the rows it reads
(``M`` of them, about a hundred: the row map is -1 everywhere else), as the sampler packs them, against
the ``[B L, V]`` form; the rows read are the same, so the times should be too.
"""

from __future__ import annotations

import pytest
import torch

from pit_sampler import noise, ops, reference
from pit_sampler.backends import native
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import get_schedule, time_grid

W, B, L, V, N, PROMPT = 16, 4, 256, 32000, 1024, 32
MASK = V - 1
RULE = RULES.index("reject")

pytestmark = pytest.mark.skipif(
    native.unavailable is not None or not native.has_kernel("cpu"),
    reason="native extension not built (pip install --no-build-isolation -e .)",
)


@pytest.fixture(scope="module")
def window():
    """The sweep's arguments except the logits (shared by both dtypes)."""
    g = torch.Generator().manual_seed(0)
    tables = step_tables(get_schedule("loglinear"), time_grid(N, "geometric"), "reject")
    seeds = noise.sample_seeds(0, B)
    x0 = torch.full((B, L), MASK)
    x0[:, :PROMPT] = torch.randint(0, MASK, (B, PROMPT), generator=g)
    table = reference.unmask_table(x0, seeds, tables.cdf, MASK, RULE)
    steps = torch.stack([table[b][table[b] >= 0].unique()[:W] for b in range(B)], 1)  # [W, B] active steps
    rows = torch.arange(B * L).view(1, B, L).expand(W, B, L).contiguous()
    prev = x0.expand(W, B, L).clone()
    return dict(rows=rows, steps=steps, x0=x0, prev=prev, seeds=seeds, cdf=tables.cdf, rate=tables.rate)


@pytest.fixture(scope="module")
def logits32():
    return torch.randn(B * L, V, generator=torch.Generator().manual_seed(1)) * 2.0


def _args(logits, window):
    return (logits, *window.values(), MASK, 1.0, RULE, False, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_sweep_cpu(benchmark, backend, dtype, window, logits32):
    args = _args(logits32.to(dtype), window)
    benchmark.group = f"sweep-cpu-{str(dtype).removeprefix('torch.')}"
    with ops.use_backend(backend):
        if backend == "reference":
            out = benchmark.pedantic(ops.sweep, args=args, rounds=1, iterations=1)
        else:
            out = benchmark.pedantic(ops.sweep, args=args, rounds=10, iterations=1, warmup_rounds=1)
        assert ops.last_backend() == backend
    drawn = int(((out[0][-1] != MASK) & (window["x0"] == MASK)).sum())
    benchmark.extra_info["rows_read"] = drawn  # each unmasking position reads its row once
    assert drawn > 0
    if backend == "reference":
        with ops.use_backend("native"):
            assert all(torch.equal(a, b) for a, b in zip(ops.sweep(*args), out))


GPT2_V, GPT2_PADDED = 50257, 50304


@pytest.fixture(scope="module")
def gpt2_window():
    """The window of ``window`` with the mask at GPT-2's last id."""
    g = torch.Generator().manual_seed(2)
    mask = GPT2_V - 1
    tables = step_tables(get_schedule("loglinear"), time_grid(N, "geometric"), "reject")
    seeds = noise.sample_seeds(0, B)
    x0 = torch.full((B, L), mask)
    x0[:, :PROMPT] = torch.randint(0, mask, (B, PROMPT), generator=g)
    table = reference.unmask_table(x0, seeds, tables.cdf, mask, RULE)
    steps = torch.stack([table[b][table[b] >= 0].unique()[:W] for b in range(B)], 1)
    rows = torch.arange(B * L).view(1, B, L).expand(W, B, L).contiguous()
    padded = torch.randn(B * L, GPT2_PADDED, generator=g) * 2.0
    return dict(rows=rows, steps=steps, x0=x0, prev=x0.expand(W, B, L).clone(), seeds=seeds, cdf=tables.cdf,
                rate=tables.rate), padded, mask


@pytest.mark.parametrize("layout", ["contiguous", "padded-view"])
def test_sweep_cpu_padded_vocab(benchmark, layout, gpt2_window):
    window, padded, mask = gpt2_window
    view = padded[:, :GPT2_V]
    logits = view.contiguous() if layout == "contiguous" else view
    args = (logits, *window.values(), mask, 1.0, RULE, False, False)
    benchmark.group = "sweep-cpu-vocab-layout"
    with ops.use_backend("native"):
        out = benchmark.pedantic(ops.sweep, args=args, rounds=20, iterations=1, warmup_rounds=2)
        assert torch.equal(out[0], ops.sweep(view.contiguous(), *args[1:])[0])


@pytest.mark.parametrize("form", ["full", "packed"])
def test_sweep_cpu_packed_rows(benchmark, form, window, logits32):
    """Only the rows the window reads: slice ``w`` of sample ``b`` reads position ``l``'s row iff ``l``
    unmasks at that step (``unmask_table``: nothing is invalid here), packed in map order."""
    table = reference.unmask_table(window["x0"], window["seeds"], window["cdf"], MASK, RULE)
    reads = window["steps"].unsqueeze(-1) == table.unsqueeze(0)  # [W, B, L]
    full = _args(logits32, window)
    if form == "full":
        args = full
    else:
        packed = torch.full((W, B, L), -1, dtype=torch.int64)
        packed[reads] = torch.arange(int(reads.sum()))
        args = (logits32[window["rows"][reads]], packed, *full[2:])
    benchmark.group = "sweep-cpu-packed"
    with ops.use_backend("native"):
        out = benchmark.pedantic(ops.sweep, args=args, rounds=10, iterations=1, warmup_rounds=1)
        benchmark.extra_info["M"] = args[0].shape[0]
        assert all(torch.equal(a, b) for a, b in zip(out, ops.sweep(*full)))
