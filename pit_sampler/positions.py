"""The positions protocol: a denoiser computes logits only at the positions a sampler reads.

A round of sampling reads few of the ``R x L`` logits rows a denoiser call could produce (under the
mean parametrization, a position's row only at the step where it unmasks). A denoiser that sets
``supports_positions = True`` is called by the samplers as

    ``denoiser(x, t, positions=index) -> logits [M, V]``

with ``x`` LongTensor ``[R, L]``, ``t`` ``[R]`` and ``index`` LongTensor ``[M]`` of flat indices into
``x.view(-1)`` (entries may repeat, e.g. as padding to a static size; ``M`` may be 0). Row ``i`` is
the logits row of position ``index[i] % L`` of sample row ``index[i] // L``: bit for bit (same
dtype) what ``denoiser(x, t)[index // L, index % L]`` gives. Called without ``positions`` it
returns the full ``[R, L, V]`` as before. A model with a per-position output head runs its body on
all positions and the head only on the gathered hidden states (:func:`take`).

**Bit-identity needs the head evaluated the same way whatever the number of rows.** A library
matmul picks its kernel, and so its rounding, by shape: one row is a matrix-vector product, a few
rows take a small-matrix path, and bfloat16 kernels block the sum over the hidden size by the
matrix shape. So ``head(h[index])`` need not equal ``head(h)[index]`` in the last bit.
:func:`rowwise` evaluates a per-row function in blocks of a fixed number of rows (the last block
zero-padded): every call has the same shape, hence the same kernel, and a row's result depends on
neither ``M`` nor the other rows. The shipped model and :class:`~pit_sampler.adapters.HFMaskedLM`
evaluate their vocabulary projection this way in both forms of the call, which also makes the head
batch-invariant (what exact PIT needs) in every dtype.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import check_index_vector

#: rows per call of a head evaluated by :func:`rowwise` (the default of the shipped model and adapters)
HEAD_BLOCK = 256


def supports_positions(denoiser) -> bool:
    """Whether ``denoiser`` takes ``positions=`` (its ``supports_positions`` attribute; plain callables: no)."""
    return bool(getattr(denoiser, "supports_positions", False))


def check_positions(positions, x: Tensor) -> None:
    """``positions`` must be a LongTensor ``[M]`` on ``x``'s device with values in ``[0, x.numel())``.

    Raises ``TypeError``/``ValueError`` naming ``positions``. The value range is checked in eager mode
    only: under ``torch.compile`` reading it would be data-dependent (a graph break); compiled indexing
    still checks its upper bound, but a negative index wraps around there as in Python.
    """
    check_index_vector("positions", positions, x.numel(), x.device, shape="M", meaning="flat indices into x.view(-1)",
                       owner="x", holds="flat indices ",
                       outside=f"[0, R * L = {x.numel()}) for x of shape {tuple(x.shape)}")


def take(full: Tensor, positions: Tensor) -> Tensor:
    """The rows of ``full [R, L, ...]`` at flat indices ``positions [M]``: ``full[positions // L, positions % L]``
    (``[M, ...]``), as one gather from ``full.flatten(0, 1)``."""
    return full.flatten(0, 1)[positions]


def rowwise(fn: Callable[[Tensor], Tensor], rows: Tensor, block: int) -> Tensor:
    """``fn`` (a per-row function, ``[n, H] -> [n, V]``) of ``rows [n, H]``, evaluated on ``block`` rows
    at a time, the last block padded with zero rows: ``fn`` only ever sees shape ``[block, H]``, so each
    row's result is the same for every ``n`` and every set of other rows (see the module docstring).
    ``n = 0`` calls ``fn`` once on the empty input."""
    n = rows.shape[0]
    if n == 0:
        return fn(rows)
    padded = F.pad(rows, (0, 0, 0, (-n) % block))
    return torch.cat([fn(part) for part in padded.split(block)])[:n]
