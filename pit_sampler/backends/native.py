"""The ``native`` backend: C++ CPU kernels and CUDA C++ kernels from the extension ``pit_sampler._C``.

Design. The public ops ``pit_sampler::sweep`` / ``pit_sampler::unmask_table`` are Python custom ops
(:mod:`pit_sampler.ops`) that own the schema, the fake kernels and the run-time backend choice. The
extension registers its kernels with ``TORCH_LIBRARY`` under its own namespace,
``pit_sampler_native``, with the same op names and argument lists (``TORCH_LIBRARY_IMPL`` for CPU and,
on GPU builds, CUDA). This module registers ``Backend("native")``, which calls
``torch.ops.pit_sampler_native.*``. So there is one schema owner, the native kernels are one backend
among others, and ``PIT_SAMPLER_BACKEND`` / :func:`pit_sampler.ops.use_backend` can force any backend,
even inside ``torch.compile``'d graphs (the choice is made inside the op body at run time).

Loading, in order:

1. the prebuilt module ``pit_sampler._C`` (built by ``pip install --no-build-isolation``, see setup.py);
2. else, in a source checkout (``csrc/`` next to the package), a JIT build of the same sources with
   ``torch.utils.cpp_extension.load`` (cached by torch, so only the first use compiles), made at the
   first use of the backend, when ninja and a C++ compiler are present; ``PIT_SAMPLER_JIT=0`` or
   ``PIT_SAMPLER_BUILD=none`` disables it;
3. else the backend is not registered, and the ops run on the reference (or Triton) backend.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
from pathlib import Path

import torch

from .registry import Backend, register_backend

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parents[2] / "csrc"
_JIT_NAME = "pit_sampler_native_jit"


def _prebuilt() -> bool:
    try:
        importlib.import_module("pit_sampler._C")
    except ImportError:
        return False
    return True


def _jit_possible() -> str | None:
    """``None`` if a JIT build can be attempted, else why not."""
    if os.environ.get("PIT_SAMPLER_JIT", "1").strip() == "0":
        return "PIT_SAMPLER_JIT=0"
    if os.environ.get("PIT_SAMPLER_BUILD", "").strip().lower() == "none":
        return "PIT_SAMPLER_BUILD=none"
    if not (CSRC / "native_build.py").is_file():
        return "no csrc/ sources next to the package (not a source checkout)"
    from torch.utils.cpp_extension import get_cxx_compiler, is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed"
    if shutil.which(get_cxx_compiler()) is None:
        return f"no C++ compiler ({get_cxx_compiler()}) on PATH"
    return None


def _jit_build() -> None:
    """Compile csrc/ with torch.utils.cpp_extension.load (cached) and load it into torch.ops."""
    import runpy

    from torch.utils.cpp_extension import get_default_build_root, load

    build = runpy.run_path(str(CSRC / "native_build.py"))
    cuda = build["with_cuda"]("auto")
    name = _JIT_NAME + ("_cuda" if cuda else "")
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    if not any(root.glob(f"**/{name}/{name}*.so")):
        log.warning(
            "pit_sampler: compiling the native kernels (%s), once; torch caches the build in %s",
            "CPU + CUDA" if cuda else "CPU",
            root,
        )
    args = build["extra_compile_args"](cuda)
    load(
        name=name,
        sources=build["sources"](cuda),
        extra_cflags=args["cxx"],
        extra_cuda_cflags=args.get("nvcc"),
        extra_ldflags=list(build["LD_FLAGS"]),
        with_cuda=cuda,
        is_python_module=False,
    )


@functools.cache
def loaded() -> bool:
    """Whether ``torch.ops.pit_sampler_native`` is available (loads or JIT-builds the extension once)."""
    if _prebuilt():
        return True
    try:
        _jit_build()
    except Exception as err:  # compiler or toolchain failures of any kind
        log.warning("pit_sampler: the native kernels could not be built (%s); using the other backends", err)
        return False
    return True


def has_kernel(device_type: str, op: str = "sweep") -> bool:
    """Whether the loaded extension has the kernel of ``op`` for ``device_type`` (``cpu`` or ``cuda``)."""
    if not loaded():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    try:
        return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"pit_sampler_native::{op}", key)
    except RuntimeError:  # the operator itself is missing (an extension built before it existed)
        return False


@functools.cache
def _has(op: str, device_type: str) -> bool:
    has = has_kernel(device_type, op)
    if not has and has_kernel(device_type):
        log.warning("pit_sampler: the native extension has no %s kernel for %s (rebuild it); using the reference",
                    op, device_type)
    return has


def _kernel(op: str):
    def run(*args):
        return getattr(torch.ops.pit_sampler_native, op)(*args)

    run.__name__ = f"native_{op}"
    return run


unavailable = None if _prebuilt() else _jit_possible()
if unavailable is None:
    register_backend(Backend("native", {op: _kernel(op) for op in ("sweep", "unmask_table", "maskgit_sweep")},
                             lambda device: has_kernel(device.type), lambda op, device: _has(op, device.type)))
else:
    log.debug("pit_sampler: native backend unavailable: %s", unavailable)
