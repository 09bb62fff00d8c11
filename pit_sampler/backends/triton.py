"""Triton backend: the fused kernels of :mod:`pit_sampler.triton_kernels` behind :mod:`pit_sampler.ops`.

Registers ``Backend("triton", ...)`` when Triton is importable (and nothing otherwise). It runs CUDA
tensors, and CPU tensors too when the kernels were defined under ``TRITON_INTERPRET=1`` (Triton's
interpreter; that is how the kernels are tested without a GPU: the variable must be set before
:mod:`pit_sampler` is first imported).
"""

from __future__ import annotations

import torch

from .registry import Backend, register_backend

try:
    from triton.runtime.interpreter import InterpretedFunction

    from ..triton_kernels import maskgit as _maskgit
    from ..triton_kernels import sweep as _sweep
    from ..triton_kernels import table as _table
except ImportError:  # no Triton: register nothing
    pass
else:
    INTERPRETED = isinstance(_sweep._mean_kernel, InterpretedFunction)

    def supports(device: torch.device) -> bool:
        """CUDA devices; CPU too under the interpreter."""
        return device.type == "cuda" or (device.type == "cpu" and INTERPRETED)

    register_backend(Backend("triton", {"sweep": _sweep.sweep, "unmask_table": _table.unmask_table,
                                        "maskgit_sweep": _maskgit.maskgit_sweep}, supports))
