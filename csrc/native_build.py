"""How the native extension ``pit_sampler._C`` is built: one definition for ``setup.py`` and the JIT fallback.

Loaded by path (``setup.py`` and ``pit_sampler/backends/native.py``), so it imports nothing from the
package. ``PIT_SAMPLER_BUILD`` selects what is built:

* ``auto`` (default): the CUDA variant when torch has CUDA, nvcc is found and there is a GPU to build
  for (one is visible, or ``TORCH_CUDA_ARCH_LIST`` names the targets), else the CPU kernels; a failed
  build only warns (the package then runs on the PyTorch reference / Triton backends);
* ``cpu``: the CPU kernels only; ``cuda``: CPU and CUDA kernels (a failed build is an error for both);
* ``none``: no native code (also disables the JIT fallback at run time).

nvcc on its own never selects CUDA: build machines often have the toolkit and no GPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("auto", "cpu", "cuda", "none")
CPU_SOURCES = ("ops.cpp", "sweep_cpu.cpp", "unmask_table_cpu.cpp", "maskgit_cpu.cpp")
CUDA_SOURCES = ("sweep_cuda.cu", "ops_cuda.cpp")
# -O3 and no -march: the AVX-512 / AVX2 variants of the hot loop come from function multi-versioning in
# the sources, so one binary runs on any x86-64. No FMA contraction: the float32 noise transforms follow
# the reference operation by operation. OpenMP: at::parallel_for is a header template that is parallel
# only when the extension itself is compiled with OpenMP (it then shares torch's libgomp); Apple's clang
# has no OpenMP, so the macOS build is serial.
if sys.platform == "win32":
    CXX_FLAGS, LD_FLAGS = ["/O2", "/openmp"], []
elif sys.platform == "darwin":
    CXX_FLAGS, LD_FLAGS = ["-O3", "-ffp-contract=off"], []
else:
    CXX_FLAGS, LD_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"], ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--fmad=false"]


def mode() -> str:
    """The requested build mode, from ``PIT_SAMPLER_BUILD`` (default ``auto``)."""
    value = os.environ.get("PIT_SAMPLER_BUILD", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"PIT_SAMPLER_BUILD must be one of {MODES}, got {value!r}")
    return value


def cuda_reason() -> str | None:
    """``None`` if the CUDA variant can be built here, else why not."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None:
        return "nvcc / CUDA_HOME not found"
    if not (torch.cuda.is_available() or os.environ.get("TORCH_CUDA_ARCH_LIST")):
        return "no GPU visible and TORCH_CUDA_ARCH_LIST is not set"
    return None


def with_cuda(requested: str) -> bool:
    """Whether to build the CUDA variant for the mode ``requested`` (``cpu``, ``cuda`` or ``auto``)."""
    if requested == "cpu":
        return False
    reason = cuda_reason()
    if requested == "cuda" and reason is not None:
        raise RuntimeError(f"PIT_SAMPLER_BUILD=cuda, but the CUDA kernels cannot be built: {reason}")
    return reason is None


def sources(cuda: bool) -> list[str]:
    """Absolute paths of the sources to compile."""
    names = CPU_SOURCES + (CUDA_SOURCES if cuda else ())
    return [str(HERE / name) for name in names]


def extra_compile_args(cuda: bool) -> dict[str, list[str]]:
    """``extra_compile_args`` for ``CppExtension`` / ``CUDAExtension``."""
    args = {"cxx": list(CXX_FLAGS)}
    if cuda:
        args["nvcc"] = list(NVCC_FLAGS)
    return args
