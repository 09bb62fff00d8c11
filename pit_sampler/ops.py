"""``pit_sampler.ops``: the sampling ops as PyTorch custom ops, with backend dispatch.

Two ops, ``torch.ops.pit_sampler.sweep`` and ``torch.ops.pit_sampler.unmask_table`` (contracts in
:mod:`pit_sampler.reference`). Each is a ``torch.library.custom_op`` with a fake (meta) kernel, so
samplers trace under ``torch.compile(fullgraph=True)`` as one opaque node per op. All per-call
values that change between calls (seeds, step indices, thresholds) are tensors, so one compiled
graph serves every call.

Backends (:mod:`pit_sampler.backends`): ``reference`` (pure PyTorch, any device) always; ``native``
(C++ CPU, CUDA C++ on GPU) when the extension ``pit_sampler._C`` is built; ``triton`` on CUDA when
Triton is importable (``TRITON_INTERPRET=1`` also lets it run on CPU tensors, for tests). The
backend is chosen inside the op at run time (:mod:`pit_sampler.backends.registry`: ``use_backend``
or ``set_backend``, else ``PIT_SAMPLER_BACKEND``, else automatic), so the choice also applies inside
compiled graphs. :func:`last_backend` tells which backend ran an op last; :func:`available_backends`
what can run. These registry functions are re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from .backends.registry import (
    Backend,
    available_backends,
    backend_for,
    kernel,
    last_backend,
    register_backend,
    set_backend,
    use_backend,
)
from .rules import RULES
from .validation import check_int, check_temperature

LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
__all__ = [  # the ops, their spec, and the registry's public face
    "sweep", "unmask_table", "SweepSpec", "LOGITS_DTYPES", "Backend", "register_backend", "available_backends",
    "backend_for", "kernel", "last_backend", "set_backend", "use_backend",
]


def _check_tensor(name: str, t, dtype: torch.dtype, ndim: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def _check_same_device(ref: str, x: Tensor, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but {ref} is on {x.device}")


def _check_common(x: Tensor, seeds: Tensor, cdf: Tensor, mask_id, rule) -> None:
    """The arguments both ops share (``x`` is ``unmask_table``'s ``x`` or ``sweep``'s ``x0``)."""
    _check_tensor("seeds", seeds, torch.int64, 1)
    _check_tensor("cdf", cdf, torch.int64, 2)
    if seeds.shape[0] != x.shape[0]:
        raise ValueError(f"seeds must have shape [{x.shape[0]}], got {tuple(seeds.shape)}")
    if not (cdf.shape[0] >= 1 and cdf.shape[1] >= 1):
        raise ValueError(f"cdf must be [N + 1, K] with K >= 1, got {tuple(cdf.shape)}")
    check_int("mask_id", mask_id, lo=0)
    check_int("rule", rule, lo=0, hi=len(RULES))
    _check_same_device("x", x, seeds=seeds, cdf=cdf)


def _check_unmask_table(x, seeds, cdf, mask_id, rule) -> None:
    _check_tensor("x", x, torch.int64, 2)
    _check_common(x, seeds, cdf, mask_id, rule)


def _check_sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule) -> None:
    """Shapes, dtypes, layouts, devices and scalars of a sweep: no data-dependent check, so this runs in
    the op body *and* its fake kernel (compiled graphs are checked at trace time). Index values are
    the kernels' business: a live slice whose step or row is out of range is flagged, never read."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in LOGITS_DTYPES:
        raise TypeError(f"logits must be one of {LOGITS_DTYPES}, got {logits.dtype}")
    if logits.layout != torch.strided:
        raise TypeError(f"logits must be a dense (strided) tensor, got layout {logits.layout}")
    for name, t, ndim in (("rows", rows, 3), ("steps", steps, 2), ("x0", x0, 2), ("prev", prev, 3)):
        _check_tensor(name, t, torch.int64, ndim)
    _check_common(x0, seeds, cdf, mask_id, rule)
    B, L = x0.shape
    W = steps.shape[0]
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [M, V] (packed rows), got {tuple(logits.shape)}")
    if mask_id >= logits.shape[1]:
        raise ValueError(f"mask_id={mask_id} is out of range for vocab size V={logits.shape[1]}")
    if tuple(steps.shape) != (W, B):
        raise ValueError(f"steps must have shape [W, {B}], got {tuple(steps.shape)}")
    if tuple(rows.shape) != (W, B, L):
        raise ValueError(f"rows must have shape [{W}, {B}, {L}], got {tuple(rows.shape)}")
    if not (prev.shape[0] <= W and tuple(prev.shape[1:]) == (B, L)):
        raise ValueError(f"prev must have shape [P, {B}, {L}] with P <= {W}, got {tuple(prev.shape)}")
    _check_tensor("rate", rate, torch.float32, 1)
    if rate.shape[0] != cdf.shape[0]:
        raise ValueError(f"rate must have shape [{cdf.shape[0]}] (one per cdf row), got {tuple(rate.shape)}")
    check_temperature(temperature)
    _check_same_device("x0", x0, logits=logits, rows=rows, steps=steps, prev=prev, rate=rate)


@torch.library.custom_op("pit_sampler::unmask_table", mutates_args=())
def _unmask_table(x: Tensor, seeds: Tensor, cdf: Tensor, mask_id: int, rule: int) -> Tensor:
    _check_unmask_table(x, seeds, cdf, mask_id, rule)
    return kernel("unmask_table", x.device)(x, seeds, cdf, mask_id, rule)


@_unmask_table.register_fake
def _(x, seeds, cdf, mask_id, rule):
    _check_unmask_table(x, seeds, cdf, mask_id, rule)
    return torch.empty_like(x, dtype=torch.int64)


@torch.library.custom_op("pit_sampler::sweep", mutates_args=())
def _sweep(logits: Tensor, rows: Tensor, steps: Tensor, x0: Tensor, prev: Tensor, seeds: Tensor, cdf: Tensor,
           rate: Tensor, mask_id: int, temperature: float, rule: int, score: bool, argmax_final: bool,
           with_counts: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule)
    return kernel("sweep", x0.device)(
        logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score, argmax_final, with_counts
    )


@_sweep.register_fake
def _(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score, argmax_final, with_counts):
    _check_sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule)
    W, B = steps.shape
    L = x0.shape[1]
    return (
        x0.new_empty((W, B, L)),
        x0.new_empty((W, B, L) if with_counts else (0,), dtype=torch.int32),
        x0.new_empty((prev.shape[0], B), dtype=torch.int32),
        x0.new_empty((W, B), dtype=torch.int32),
    )


def unmask_table(x: Tensor, seeds: Tensor, cdf: Tensor, mask_id: int, rule: int) -> Tensor:
    """int64 ``[B, L]``: the step at which each masked position of ``x`` unmasks (``-1`` if not masked)."""
    _check_unmask_table(x, seeds, cdf, mask_id, rule)
    return torch.ops.pit_sampler.unmask_table(x, seeds, cdf, int(mask_id), int(rule))


def sweep(logits: Tensor, rows: Tensor, steps: Tensor, x0: Tensor, prev: Tensor, seeds: Tensor, cdf: Tensor,
          rate: Tensor, mask_id: int, temperature: float = 1.0, rule: int = 0, score: bool = False,
          argmax_final: bool = False, with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One fused Picard sweep over ``W`` slices: ``(states, counts, residual, invalid)``.

    Shapes: ``logits [M, V]`` packed rows (fp32/bf16/fp16, any strides), ``rows`` int64 ``[W, B, L]``
    (the row each slice's position reads; a full ``[R, L, V]`` output is ``logits.view(R * L, V)``
    with ``rows = r * L + l``), ``steps`` int64 ``[W, B]``, ``x0`` int64 ``[B, L]``, ``prev`` int64
    ``[P, B, L]`` (``P <= W``), ``seeds`` int64 ``[B]``, ``cdf`` int64 ``[N + 1, K]``, ``rate``
    float32 ``[N + 1]``. ``temperature = 0`` is greedy. ``counts`` is ``int32 [W, B, L]`` with
    ``with_counts``, else empty (``[0]``: nothing written). ``residual`` is ``int32 [P, B]``.
    ``invalid[w, b]`` counts rows that hold NaN/+inf (or only -inf) after the ``1/T`` scaling, and is
    ``-1`` for a slice whose step is past ``N`` or that needed a row outside ``[0, M)`` (nothing read
    there). See :mod:`pit_sampler.reference`.
    Only shapes, dtypes, devices and scalars are checked (nothing data-dependent: traces without breaks).
    """
    _check_sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule)
    return torch.ops.pit_sampler.sweep(
        logits, rows, steps, x0, prev, seeds, cdf, rate, int(mask_id), check_temperature(temperature), int(rule),
        bool(score), bool(argmax_final), bool(with_counts),
    )


@dataclass(frozen=True)
class SweepSpec:
    """A sampler's constants of every sweep it runs (flattened into loose arguments only at the
    custom-op boundary): the integer jump tables ``cdf [N + 1, K]`` and score rates ``rate [N + 1]``
    (:func:`pit_sampler.rules.step_tables`), ``mask_id``, ``temperature`` (0: greedy), the rule's id,
    the parametrization (``score``) and ``argmax_final``. Calling it runs :func:`sweep`."""

    cdf: Tensor
    rate: Tensor
    mask_id: int
    temperature: float
    rule: int
    score: bool
    argmax_final: bool

    def to(self, device: torch.device) -> "SweepSpec":
        """The same spec with its tables on ``device``."""
        return dataclasses.replace(self, cdf=self.cdf.to(device), rate=self.rate.to(device))

    def __call__(self, logits: Tensor, rows: Tensor, steps: Tensor, x0: Tensor, prev: Tensor, seeds: Tensor,
                 with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return sweep(logits, rows, steps, x0, prev, seeds, self.cdf, self.rate, self.mask_id, self.temperature,
                     self.rule, self.score, self.argmax_final, with_counts)

