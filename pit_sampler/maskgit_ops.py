"""``torch.ops.pit_sampler.maskgit_sweep``: the fused k-per-step sweep as a custom op, with dispatch.

Semantics (the contract every backend implements): :mod:`pit_sampler.maskgit_reference`.
The op is a ``torch.library.custom_op`` with a fake kernel, so a sampler step traces under
``torch.compile(fullgraph=True)`` as one opaque node. The backend is chosen inside the op at run
time by :func:`pit_sampler.backends.registry.kernel` (``PIT_SAMPLER_BACKEND``, ``ops.use_backend``), among

* ``reference``: :func:`pit_sampler.maskgit_reference.maskgit_sweep` (PyTorch, any device);
* ``native``: ``torch.ops.pit_sampler_native.maskgit_sweep`` (``csrc/maskgit_cpu.cpp``, CPU);
* ``triton``: :func:`pit_sampler.triton_kernels.maskgit.maskgit_sweep` (CUDA; CPU under ``TRITON_INTERPRET=1``).

An extension built before ``csrc/maskgit_cpu.cpp`` existed has the tau-leaping kernels but not this
one: the ``native`` choice then runs the reference, with a warning once (rebuild to get the kernel).
:func:`last_backend` says what ran.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import maskgit_reference as reference
from . import ops
from .validation import check_int, check_temperature


def last_backend() -> str | None:
    """The backend that ran :func:`maskgit_sweep` most recently."""
    return ops.last_backend("maskgit_sweep")


def _check(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order):
    """Shapes, dtypes, layouts, devices and scalars: nothing data-dependent, so this runs in the wrapper,
    the op body *and* its fake kernel (raw ``torch.ops.pit_sampler.maskgit_sweep`` calls, what compiled
    graphs make, are checked too; the fake kernel checks them at trace time), as ``ops.sweep`` does.
    Index values are the kernels' business (:mod:`pit_sampler.maskgit_reference`: a missing row is
    flagged, never read)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in ops.LOGITS_DTYPES:
        raise TypeError(f"logits must be one of {ops.LOGITS_DTYPES}, got {logits.dtype}")
    if logits.layout != torch.strided:
        raise TypeError(f"logits must be a dense (strided) tensor, got layout {logits.layout}")
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    for name, t, ndim in (("rows", rows, 2), ("steps", steps, 2), ("x0", x0, 2), ("prev", prev, 3),
                          ("seeds", seeds, 1), ("kcount", kcount, 2), ("slice_block", slice_block, 2),
                          ("pos_block", pos_block, 2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {t.dtype}")
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
        if t.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
        if t.device != x0.device:
            raise ValueError(f"{name} is on {t.device} but x0 is on {x0.device}")
    B, L = x0.shape
    W = steps.shape[0]
    if not (logits.dim() == 3 and logits.shape[1] == L and 2 <= logits.shape[2] <= reference.MAX_VOCAB):
        raise ValueError(f"logits must have shape [R, {L}, V] with 2 <= V <= 2**20, got {tuple(logits.shape)}")
    if logits.device != x0.device:
        raise ValueError(f"logits is on {logits.device} but x0 is on {x0.device}")
    for name, t in (("rows", rows), ("kcount", kcount), ("slice_block", slice_block)):
        if tuple(t.shape) != (W, B):
            raise ValueError(f"{name} must have shape [W, {B}] like steps, got {tuple(t.shape)}")
    if tuple(prev.shape) != (W, B, L):
        raise ValueError(f"prev must have shape [{W}, {B}, {L}], got {tuple(prev.shape)}")
    if tuple(pos_block.shape) != (B, L):
        raise ValueError(f"pos_block must have shape [{B}, {L}], got {tuple(pos_block.shape)}")
    if tuple(seeds.shape) != (B,):
        raise ValueError(f"seeds must have shape [{B}], got {tuple(seeds.shape)}")
    _check_scalar_int("mask_id", mask_id, lo=0, hi=logits.shape[2])
    check_temperature(temperature)
    _check_scalar_int("order", order, lo=0, hi=len(reference.ORDERS))


def _check_scalar_int(name, v, lo, hi):
    """:func:`check_int`, except for a symbolic int (the fake kernel under ``torch.compile(dynamic=True)``):
    its value is checked by the op body when the graph runs."""
    if not isinstance(v, torch.SymInt):
        check_int(name, v, lo=lo, hi=hi)


@torch.library.custom_op("pit_sampler::maskgit_sweep", mutates_args=())
def _maskgit_sweep(logits: Tensor, rows: Tensor, steps: Tensor, x0: Tensor, prev: Tensor, seeds: Tensor, kcount: Tensor,
                   slice_block: Tensor, pos_block: Tensor, mask_id: int, temperature: float,
                   order: int) -> tuple[Tensor, Tensor, Tensor]:
    _check(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order)
    return ops.kernel("maskgit_sweep", x0.device)(
        logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order
    )


@_maskgit_sweep.register_fake
def _(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order):
    _check(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order)
    W, B = steps.shape
    return x0.new_empty((W, B, x0.shape[1])), x0.new_empty((W, B), dtype=torch.int32), x0.new_empty(
        (W, B), dtype=torch.int32
    )


def maskgit_sweep(logits: Tensor, rows: Tensor, steps: Tensor, x0: Tensor, prev: Tensor, seeds: Tensor, kcount: Tensor,
                  slice_block: Tensor, pos_block: Tensor, mask_id: int, temperature: float = 1.0,
                  order: int = reference.CONFIDENCE) -> tuple[Tensor, Tensor, Tensor]:
    """One fused k-per-step sweep over ``W`` slices: ``(states [W, B, L], residual [W, B], invalid [W, B])``.

    ``logits [R, L, V]`` (fp32/bf16/fp16, ``2 <= V <= 2**20``); int64 ``rows``, ``steps``, ``kcount``,
    ``slice_block`` ``[W, B]``; ``x0``, ``pos_block`` ``[B, L]``; ``prev [W, B, L]``; ``seeds [B]``;
    ``order`` an index into :data:`pit_sampler.maskgit_reference.ORDERS`; ``temperature = 0`` is greedy.
    Semantics, including what every value of the index tensors means (a live slice whose row is outside
    ``[0, R)`` reports ``invalid = -1``): :mod:`pit_sampler.maskgit_reference`. Only shapes, dtypes,
    devices and scalars are checked (``bool`` is not an int here): nothing data-dependent.
    """
    _check(logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, mask_id, temperature, order)
    return torch.ops.pit_sampler.maskgit_sweep(
        logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, int(mask_id),
        check_temperature(temperature), int(order),
    )
