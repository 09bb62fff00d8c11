"""Every backend equals the reference, integer for integer: one input builder
(:func:`sweep_inputs.sweep_case`), one parametrized suite.

For each backend that runs here (``native`` C++ on the CPU; ``triton`` in Triton's interpreter on
the CPU, compiled on a GPU; the CUDA C++ kernels on a GPU) and each rule, parametrization and logits
dtype, fresh random windows (prompts, pass-through slices, the final fill, odd ``V``, ``B = 1``,
``L = 1``) go through the backend's kernel and :func:`pit_sampler.reference.sweep`; ``states``,
``counts``, ``residual`` and ``invalid`` must be identical, and so must the unmask tables. The
differential fuzz (tests/test_fuzz.py) covers the rest of the input space (layouts, missing rows,
NaN patterns, ``P < W``).
"""
import pytest
import torch

from pit_sampler import ops, reference
from pit_sampler.backends import registry
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import get_schedule, time_grid
from sweep_inputs import assert_same, positional, sweep_case
from tiers import tiered

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = [  # (W, B, L, V, N)
    (1, 1, 1, 2, 1),
    (1, 3, 17, 37, 9),
    (5, 2, 9, 131, 12),
    (7, 1, 33, 64, 30),
    (4, 4, 5, 1001, 6),
]
SMALL = [(1, 1, 1, 2, 1), (5, 3, 9, 37, 7), (3, 2, 5, 23, 5)]  # the interpreter is slow: one temperature each
LARGE_V = [(3, 2, 4, 32003, 3)]


def _targets():
    """``(backend, device)`` pairs to test: every non-reference backend on every device it runs on."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(name, d) for d in devices for name in ops.available_backends(d) if name != "reference"]


TARGETS = _targets()
pytestmark = [
    pytest.mark.skipif(not TARGETS, reason="no backend besides the reference here"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),  # interpreter's masked lanes
]


def _shapes(backend: str, device: str):
    if backend == "triton" and device == "cpu":
        return SMALL
    return SHAPES + (LARGE_V if device == "cuda" else [])


def _run(backend: str, op: str, device: str, *args):
    return registry.implementation(backend, op)(*(a.to(device) if isinstance(a, torch.Tensor) else a for a in args))


SWEEP_CASES = [(b, d, rule, score, dtype) for b, d in TARGETS for rule in RULES for score in (False, True)
               for dtype in DTYPES]
# the Triton interpreter's default cases: every rule, parametrization and dtype, each pair at least once
INTERPRETED = {("reject", False, torch.float32), ("reject", True, torch.bfloat16), ("first", False, torch.float16),
               ("first", True, torch.float32), ("tweedie", False, torch.bfloat16), ("tweedie", True, torch.float16)}


@pytest.mark.parametrize("backend, device, rule, score, dtype", tiered(
    SWEEP_CASES, default={c for c in SWEEP_CASES if not (c[0] == "triton" and c[1] == "cpu") or c[2:] in INTERPRETED}),
    ids=lambda v: str(v))
def test_sweep_equals_reference(backend, device, rule, score, dtype):
    drawn = 0
    for i, (W, B, L, V, N) in enumerate(_shapes(backend, device)):
        mask_id = (0, V // 2, V - 1)[i % 3]
        case = sweep_case(W, B, L, V, N, rule=rule, score=score, dtype=dtype, seed=100 * i + len(rule),
                          mask_id=mask_id, bad=0.05, packed=i % 2 == 0)
        options = ((1.0, False), (0.7, True), (0.0, False))
        if backend == "triton" and device == "cpu":
            options = options[i % 3 : i % 3 + 1]
        for temperature, argmax_final in options:
            args = positional(case, temperature, rule, score, argmax_final)
            want = reference.sweep(*args)
            assert_same(_run(backend, "sweep", device, *args), want, (backend, W, B, L, V, N, temperature))
            drawn += int((want[0] != case["x0"]).sum())
    assert drawn > 0  # the windows drew tokens


@pytest.mark.parametrize("backend, device", TARGETS, ids=[f"{b}-{d}" for b, d in TARGETS])
@pytest.mark.parametrize("rule", RULES)
def test_unmask_table_equals_reference(backend, device, rule):
    for seed, (B, L, N) in enumerate([(1, 1, 1), (3, 29, 17), (2, 100, 257)]):
        g = torch.Generator().manual_seed(seed)
        cdf = step_tables(get_schedule("cosine"), time_grid(N, "uniform"), rule).cdf
        x = torch.where(torch.rand(B, L, generator=g) < 0.7, 4, torch.randint(0, 9, (B, L), generator=g))
        seeds = torch.randint(-(2**62), 2**62, (B,), generator=g)
        args = (x, seeds, cdf, 4, RULES.index(rule))
        want = reference.unmask_table(*args)
        assert torch.equal(_run(backend, "unmask_table", device, *args).cpu(), want) and bool((want >= 0).any())
