"""The native backend (csrc/: C++ CPU kernels, CUDA C++ kernels) against the PyTorch reference.

Integers (tokens, jump counts, residuals, invalid rows) must be equal; the kernels' float32 noise
transforms follow the reference operation by operation, so on these random inputs tokens are equal too.
The CUDA sources are compiled (not run) whenever nvcc is present; GPU runs are marked ``gpu``.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pit_sampler as ps
from pit_sampler import ops, reference
from pit_sampler.backends import native
from pit_sampler.rules import RULES
from pit_sampler.testing import make_oracle
from sweep_inputs import assert_same, describe, positional, random_case, sweep_case

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

needs_native = pytest.mark.skipif(
    native.unavailable is not None or not native.has_kernel("cpu"),
    reason=f"native extension not built ({native.unavailable or 'the build failed, see the log'}); "
    "install with `pip install --no-build-isolation -e .`",
)
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.unavailable is None and native.has_kernel("cuda")),
    reason="needs a GPU and a CUDA build of the native extension",
)


@needs_native
def test_schemas_match_the_python_ops():
    for op in ("sweep", "unmask_table"):
        public = getattr(torch.ops.pit_sampler, op).default._schema
        kernel = getattr(torch.ops.pit_sampler_native, op).default._schema
        assert [(a.name, str(a.type)) for a in kernel.arguments] == [(a.name, str(a.type)) for a in public.arguments]
        assert [str(r.type) for r in kernel.returns] == [str(r.type) for r in public.returns]
        assert str(kernel).replace("pit_sampler_native::", "pit_sampler::") == str(public)


@needs_native
@pytest.mark.parametrize("score", [False, True], ids=["mean", "score"])
def test_bad_rows_are_counted_and_stay_masked(score):
    case = sweep_case(W=6, B=3, L=40, V=29, N=8, seed=7, mask_id=5, prompt=0.1, bad=0.3, final=0.4, packed=False)
    case["logits"] = case["logits"].t().contiguous().t()  # strided input (vocab stride M)
    args = positional(case, 1.0, "first", score, False)
    got = torch.ops.pit_sampler_native.sweep(*args)
    assert_same(got, reference.sweep(*args), "bad rows")
    assert got[3].sum() > 0
    assert int(got[0].max()) < 29 and int(got[0].min()) >= 0


@needs_native
def test_large_vocab_uses_every_philox_word():
    """V = 32000 rows (the shortcuts skip most tokens), fp32 and bf16, against the reference."""
    for dtype in (torch.float32, torch.bfloat16):
        case = sweep_case(W=2, B=2, L=3, V=32003, N=3, rule="first", dtype=dtype, seed=3, mask_id=17, prompt=0.0,
                          passthrough=0.0, final=0.5, packed=False)
        args = positional(case, 1.0, "first", False, False)
        assert_same(torch.ops.pit_sampler_native.sweep(*args), reference.sweep(*args), dtype)


@needs_native
def test_temperature_is_a_float32_multiply_by_its_inverse():
    """Scores are ``logits * (float32(1) / float32(T))``: two logits one ulp apart that this maps to the same
    float (a division would not) tie, and the tie goes to the first index."""
    T = 0.7
    inv_t = torch.tensor(1.0) / torch.tensor(T)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(100000, generator=g) * 3 + 1
    b = torch.nextafter(a, torch.tensor(-float("inf")))
    i = int(((a * inv_t == b * inv_t) & (a / T != b / T)).nonzero()[0])
    logits = torch.full((1, 5), -float("inf"))
    logits[0, 1], logits[0, 2] = b[i], a[i]  # b < a, but b * inv_t == a * inv_t
    case = sweep_case(W=1, B=1, L=1, V=5, N=2, seed=0, mask_id=0, prompt=0.0, passthrough=0.0, final=1.0, packed=False)
    args = positional({**case, "logits": logits, "rows": torch.zeros(1, 1, 1, dtype=torch.int64)}, T, "first", False, True)
    got = torch.ops.pit_sampler_native.sweep(*args)
    assert_same(got, reference.sweep(*args), "temperature")
    assert int(got[0][0, 0, 0]) == 1


@needs_native
def test_the_ops_pick_native_on_cpu_and_can_be_forced():
    case = sweep_case(W=2, B=2, L=6, V=11, N=4, rule="reject", seed=1, mask_id=10, packed=False)
    args = positional(case, 1.0, "reject", False, False)
    with ops.use_backend("auto"):
        ops.sweep(*args)
        assert ops.last_backend() == "native"
    with ops.use_backend("reference"):
        ops.sweep(*args)
        assert ops.last_backend() == "reference"
    assert "native" in ops.available_backends("cpu")


@needs_native
def test_out_of_range_steps_and_rows_are_flagged():
    """A slice with steps > N (bad slice) and one whose positions read rows outside [0, M) (missing rows)
    are flagged (invalid = -1), not raised on or read; a bad argument raises naming it."""
    case = sweep_case(W=2, B=2, L=6, V=11, N=4, seed=2, mask_id=10, prompt=0.0, passthrough=0.0, final=1.0,
                      packed=False)
    steps, rows = torch.full_like(case["steps"], 4), case["rows"].clone()  # every slice the final fill
    steps[1, 0] = 99
    rows[0, 1] = torch.tensor([-1, 1000, 2**40, -(2**40), 0, 1])
    args = positional({**case, "steps": steps, "rows": rows}, 1.0, "first", False, False)
    got = torch.ops.pit_sampler_native.sweep(*args)
    assert_same(got, reference.sweep(*args), "flags")
    assert got[3][1, 0] == -1 and got[3][0, 1] == -1
    assert bool((got[0][0, 1, :4] == 10).all()) and bool((got[0][0, 1, 4:] != 10).all())
    for change, name in (({"logits": case["logits"].double()}, "logits"), ({"logits": case["logits"][None]}, "logits"),
                         ({"rows": case["rows"][:, :, :-1]}, "rows"), ({"prev": case["prev"][:, :1]}, "prev"),
                         ({"prev": torch.cat([case["prev"], case["prev"]])}, "prev")):
        with pytest.raises(RuntimeError, match=name):
            torch.ops.pit_sampler_native.sweep(*positional({**case, **change}, 1.0, "first", False, False))


@needs_native
@pytest.mark.parametrize("score", [False, True], ids=["mean", "score"])
def test_strided_logits_equal_contiguous(score):
    """Packed logits read in place through their strides give the contiguous result: padded-vocab views
    (rows start anywhere), a transposed one (vocab stride M), an odd storage offset, and rows repeated
    by a zero row stride."""
    case = sweep_case(W=3, B=2, L=5, V=131, N=6, seed=11, mask_id=65, prompt=0.2, bad=0.1, packed=False)
    M, V = case["logits"].shape
    want = torch.ops.pit_sampler_native.sweep(*positional(case, 0.7, "first", score, False))
    padded = torch.randn(M, V + 61)
    transposed = torch.empty(V, M).t()
    offset = torch.empty(3 + M * V)[3:].view(M, V)
    for view in (padded[:, 5 : 5 + V], padded[:, :V], transposed, offset):
        view.copy_(case["logits"])
        got = torch.ops.pit_sampler_native.sweep(*positional({**case, "logits": view}, 0.7, "first", score, False))
        assert_same(got, want, view.stride())
    one = case["logits"][3:4]
    got = torch.ops.pit_sampler_native.sweep(*positional({**case, "logits": one.expand(M, V)}, 0.7, "first", score, False))
    assert_same(got, torch.ops.pit_sampler_native.sweep(*positional({**case, "logits": one.repeat(M, 1)}, 0.7, "first",
                                                                 score, False)), "stride 0")


def _sampler_kwargs(oracle, rule, parametrization="mean"):
    return dict(mask_id=oracle.mask_id, num_steps=20, rule=rule, parametrization=parametrization)


@needs_native
@pytest.mark.parametrize("rule", RULES)
def test_pit_equals_tau_leaping_through_native(rule):
    oracle = make_oracle("hmm", seed=5, num_tokens=6, length=12)
    x = torch.full((3, oracle.length), oracle.mask_id)
    x[1, :4] = torch.tensor([0, 1, 2, 3])  # a prompt
    with ops.use_backend("native"):
        seq = ps.TauLeapingSampler(oracle, **_sampler_kwargs(oracle, rule)).sample(x, seed=11)
        assert ops.last_backend() == "native" and ops.last_backend("unmask_table") == "native"
        for window in (1, 4, 25):
            pit = ps.PITSampler(oracle, window=window, **_sampler_kwargs(oracle, rule)).sample(x, seed=11)
            assert torch.equal(pit.tokens, seq.tokens), window
        again = ps.PITSampler(oracle, window=4, **_sampler_kwargs(oracle, rule)).sample(x, seed=11)
        assert torch.equal(again.tokens, seq.tokens)
    with ops.use_backend("reference"):
        ref = ps.TauLeapingSampler(oracle, **_sampler_kwargs(oracle, rule)).sample(x, seed=11)
    assert torch.equal(ref.tokens, seq.tokens)
    assert torch.equal(seq.tokens[1, :4], x[1, :4])


@needs_native
def test_score_parametrization_through_native():
    oracle = make_oracle("mixture", seed=2, num_tokens=5, length=9)
    kw = _sampler_kwargs(oracle, "first", "score")
    x = torch.full((2, oracle.length), oracle.mask_id)
    with ops.use_backend("native"):
        seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=4)
        pit = ps.PITSampler(oracle, window=6, **kw).sample(x, seed=4)
    with ops.use_backend("reference"):
        ref = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=4)
    assert torch.equal(seq.tokens, pit.tokens) and torch.equal(seq.tokens, ref.tokens)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_logits_raise_through_the_sampler(dtype):
    oracle = make_oracle("independent", seed=0, num_tokens=7, length=5)

    def broken(x, t):
        logits = oracle(x, t)
        logits[:, 2, 3] = float("nan")  # position 2 is drawn at some step (at the latest, the final fill)
        return logits.to(dtype)

    with ops.use_backend("native"), pytest.raises(ValueError, match="NaN"):
        ps.PITSampler(broken, mask_id=oracle.mask_id, num_steps=10, window=3).sample(
            torch.full((2, oracle.length), oracle.mask_id), seed=0
        )


# --- build configuration and the CUDA sources -----------------------------------------------------------


def test_build_modes(monkeypatch):
    build = runpy.run_path(str(CSRC / "native_build.py"))
    monkeypatch.setenv("PIT_SAMPLER_BUILD", "CPU")
    assert build["mode"]() == "cpu" and build["with_cuda"]("cpu") is False
    monkeypatch.setenv("PIT_SAMPLER_BUILD", "fast")
    with pytest.raises(ValueError, match="PIT_SAMPLER_BUILD"):
        build["mode"]()
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        assert build["with_cuda"]("auto") is False  # nvcc alone never selects CUDA
        with pytest.raises(RuntimeError, match="PIT_SAMPLER_BUILD=cuda"):
            build["with_cuda"]("cuda")
    assert all(Path(s).is_file() for s in build["sources"](True))


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    found = shutil.which("nvcc")
    if found is None and CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        found = str(Path(CUDA_HOME) / "bin" / "nvcc")
    return found


@pytest.mark.parametrize("arch", ["80", "90"])
def test_cuda_kernels_compile(tmp_path, arch):
    """nvcc -c of the CUDA kernels for sm_80 and sm_90: a syntax and template check (nothing runs). Needs
    only the toolkit."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH to compile-check csrc/sweep_cuda.cu)")
    cmd = [
        nvcc,
        "-c",
        str(CSRC / "sweep_cuda.cu"),
        "-o",
        str(tmp_path / "sweep_cuda.o"),
        "-std=c++17",
        "-O1",
        "--fmad=false",
        f"-arch=sm_{arch}",
        "-Werror",
        "all-warnings",
    ]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cuda_binding_compiles(tmp_path):
    """ops_cuda.cpp compiled as host C++ by nvcc (which adds the toolkit's headers) against torch's headers.
    CPU wheels of torch ship c10/cuda but not its generated c10/cuda/impl/cuda_cmake_macros.h: stubbed here."""
    nvcc = _nvcc()
    if nvcc is None or sys.platform == "win32":
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH to compile-check csrc/ops_cuda.cpp)")
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [
        nvcc,
        "-c",
        "-x",
        "c++",
        "-std=c++20",
        str(CSRC / "ops_cuda.cpp"),
        "-o",
        str(tmp_path / "ops_cuda.o"),
        f"-I{tmp_path}",
    ] + [f"-I{p}" for p in include_paths()]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
@needs_cuda
def test_cuda_fuzz_against_reference():
    """The differential fuzz of tests/test_fuzz.py (packed rows, missing rows, P <= W, bad slices, every
    layout) on the CUDA kernels; W up to 128 slices."""
    import random

    rng = random.Random(20261201)
    for i in range(300):
        args = random_case(rng, max_w=128 if i % 10 == 0 else 9)
        cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        assert_same(torch.ops.pit_sampler_native.sweep(*cuda_args), reference.sweep(*args), f"case {i}: {describe(args)}")
