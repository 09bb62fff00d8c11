"""Microbenchmarks of the ops (``sweep``, ``unmask_table``) on every backend that can run on the device.

    pytest bench/ --benchmark-only                                   # CPU, small preset (CI)
    pytest bench/test_bench_ops.py --benchmark-only --bench-preset gpu --benchmark-json=micro.json

Backends: ``ops.available_backends(device)``, except Triton on CPU (its interpreter is a test tool, not a
fast path). Each case is parametrised over the window ``W``, batch ``B``, length ``L``, vocabulary
``V`` and logits dtype, and records in ``extra_info`` the fewest bytes the op must move
(``bytes``: each needed logits row read once, the int64 states read and written once), so that a
report can turn the median into GB/s and a share of the device's copy bandwidth.

Sweep cases (one Picard sweep, as the sampler calls it):

* ``fill``: an all-masked start and a window covering a whole ``N = W - 1`` step run, final fill
  included, so every position unmasks exactly once inside the window: ``B x L`` logits rows of ``V``
  are read, the bandwidth-bound case.
* ``steady``: ``W`` consecutive steps from the middle of a 1024-step geometric grid on a state that
  has unmasked what the noise unmasks before it: few rows are read; the per-sweep cost of a real run.

Every slice of sample ``b`` reads the packed rows of sample ``b`` (``rows[w, b, l] = b L + l``), so the
logits tensor is ``[B L, V]`` rather than ``[W B L, V]``: the same rows are read as with distinct slices
(each position's row once), with ``W`` times less memory.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pit_sampler import ops
from pit_sampler.noise import sample_seeds
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import LogLinear, time_grid

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REJECT = RULES.index("reject")

# Each preset: lists of parameter blocks (the product of each block's values), benchmark rounds, and a
# cap on the reference backend's work (sweep: rows read x V Gumbel draws; unmask_table: B x L x N jump
# draws) beyond which it is not timed (it is the oracle, not a fast path).
PRESETS = {
    "small": dict(
        sweep=[
            dict(case=["fill", "steady"], W=[1, 8], B=[1, 4], L=[256], V=[1024], dtype=["float32", "bfloat16"]),
            dict(case=["fill"], W=[8], B=[1], L=[256], V=[8192], dtype=["float32"]),
        ],
        unmask_table=[dict(B=[1, 4], L=[256, 1024], N=[128, 1024])],
        rounds=3,
        warmup=1,
        reference_cap=1 << 19,
    ),
    "gpu": dict(
        sweep=[
            dict(case=["fill"], W=[1, 8, 32], B=[1, 16], L=[1024], V=[50257], dtype=["float32", "bfloat16"]),
            dict(case=["fill"], W=[8], B=[16], L=[1024], V=[50257], dtype=["float16"]),
            dict(case=["steady"], W=[1, 8, 32, 64], B=[1, 16], L=[256, 1024], V=[50257], dtype=["bfloat16"]),
            dict(case=["fill", "steady"], W=[8, 32], B=[4], L=[256], V=[1024], dtype=["bfloat16"]),
        ],
        unmask_table=[dict(B=[1, 16, 64], L=[1024, 4096], N=[1024])],
        rounds=15,
        warmup=2,
        reference_cap=1 << 25,
    ),
}


def _device(config) -> torch.device:
    name = config.getoption("--bench-device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _backends(device: torch.device) -> list[str]:
    return [b for b in ops.available_backends(device) if not (b == "triton" and device.type == "cpu")]


def _expand(blocks: list[dict]) -> list[dict]:
    cases = []
    for block in blocks:
        keys = list(block)
        cases += [dict(zip(keys, values)) for values in itertools.product(*block.values())]
    return cases


def _case_id(case: dict) -> str:
    return "-".join(f"{k}{v}" if k in ("W", "B", "L", "V", "N") else str(v) for k, v in case.items())


def pytest_generate_tests(metafunc):
    preset = PRESETS[metafunc.config.getoption("--bench-preset")]
    backends = _backends(_device(metafunc.config))
    for op in ("sweep", "unmask_table"):
        if f"{op}_case" in metafunc.fixturenames:
            cases = _expand(preset[op])
            metafunc.parametrize(f"{op}_case", cases, ids=[_case_id(c) for c in cases])
            metafunc.parametrize("backend", backends)


@pytest.fixture
def preset(pytestconfig) -> dict:
    return PRESETS[pytestconfig.getoption("--bench-preset")]


def _tables(num_steps: int, grid: str, device):
    t = step_tables(LogLinear(), time_grid(num_steps, grid), "reject")
    return t.cdf.to(device), t.rate.to(device)


def sweep_inputs(case: str, W: int, B: int, L: int, V: int, dtype: str, device, seed: int = 0):
    """``(args, rows_read, bytes)``: the arguments of ``ops.sweep`` for a benchmark case (see module doc)."""
    g = torch.Generator().manual_seed(seed)
    mask_id = V - 1
    seeds = sample_seeds(seed, B, device)
    if case == "fill":
        N = max(W - 1, 1)
        cdf, rate = _tables(N, "uniform", device)
        steps = torch.arange(N - W + 1, N + 1, device=device).view(W, 1).expand(W, B).contiguous()
        x0 = torch.full((B, L), mask_id, dtype=torch.int64, device=device)
        rows_read = B * L
    else:
        N, j0 = 1024, 512
        cdf, rate = _tables(N, "geometric", device)
        masked = torch.full((B, L), mask_id, dtype=torch.int64, device=device)
        table = ops.unmask_table(masked, seeds, cdf, mask_id, REJECT)
        tokens = torch.randint(0, mask_id, (B, L), generator=g).to(device)
        x0 = torch.where(table < j0, tokens, mask_id)
        steps = torch.arange(j0, j0 + W, device=device).view(W, 1).expand(W, B).contiguous()
        rows_read = int(((table >= j0) & (table < j0 + W)).sum())
    g_dev = torch.Generator(device=device).manual_seed(seed)  # GPU-sized logits are drawn where they live
    logits = torch.randn(B * L, V, generator=g_dev, device=device).to(DTYPES[dtype])
    rows = torch.arange(B * L, device=device).view(1, B, L).expand(W, B, L).contiguous()
    prev = x0.unsqueeze(0).expand(W, B, L).contiguous()
    args = (logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id)
    esize = logits.element_size()
    nbytes = rows_read * V * esize + W * B * L * (8 + 8 + 4) + B * L * 8
    return args, rows_read, nbytes


def _timed(fn, device):
    if device.type == "cuda":

        def run():
            out = fn()
            torch.cuda.synchronize(device)
            return out

        return run
    return fn


def test_sweep(benchmark, bench_device, backend, sweep_case, preset):
    c = sweep_case
    args, rows_read, nbytes = sweep_inputs(c["case"], c["W"], c["B"], c["L"], c["V"], c["dtype"], bench_device)
    if backend == "reference" and rows_read * c["V"] > preset["reference_cap"]:
        pytest.skip("reference backend: too slow at this size")
    benchmark.group = f"sweep {_case_id(c)}"
    benchmark.extra_info.update(op="sweep", backend=backend, device=str(bench_device), rows_read=rows_read, bytes=nbytes, **c)
    with ops.use_backend(backend):
        states = benchmark.pedantic(
            _timed(lambda: ops.sweep(*args), bench_device), rounds=preset["rounds"], warmup_rounds=preset["warmup"]
        )[0]
        assert ops.last_backend("sweep") == backend
    assert not bool((states[-1] == args[8]).any()) or c["case"] == "steady"  # fill: nothing left masked


def test_unmask_table(benchmark, bench_device, backend, unmask_table_case, preset):
    c = unmask_table_case
    if backend == "reference" and c["B"] * c["L"] * c["N"] > preset["reference_cap"]:
        pytest.skip("reference backend: too slow at this size")
    cdf, _ = _tables(c["N"], "geometric", bench_device)
    mask_id = 1023
    x = torch.full((c["B"], c["L"]), mask_id, dtype=torch.int64, device=bench_device)
    seeds = sample_seeds(0, c["B"], bench_device)
    benchmark.group = f"unmask_table {_case_id(c)}"
    benchmark.extra_info.update(op="unmask_table", backend=backend, device=str(bench_device), bytes=16 * c["B"] * c["L"], **c)
    with ops.use_backend(backend):
        benchmark.pedantic(
            _timed(lambda: ops.unmask_table(x, seeds, cdf, mask_id, REJECT), bench_device),
            rounds=preset["rounds"],
            warmup_rounds=preset["warmup"],
        )
        assert ops.last_backend("unmask_table") == backend
