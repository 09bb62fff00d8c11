"""The one place the engine calls the model, and the one check of what it returns.

A denoiser is ``denoiser(x [R, L], t [R]) -> logits [R, L, V]``; with ``supports_positions = True``
it may also be called as ``denoiser(x, t, positions=index)`` and return only the rows ``index``
(flat ``r L + l``) asks for, ``[M, V]`` (the positions protocol, :mod:`pit_sampler.positions`).
With ``takes_samples = True`` it is also given ``samples=`` (int64 ``[B]``): row ``u B + b`` of the
call belongs to row ``samples[b]`` of the engine's input (the batch shrinks as samples finish; the
block sampler's cached path needs to know whose prefix a row continues: :mod:`pit_sampler.block_cache`).

:class:`DenoiserCall` gives every step rule packed float rows ``[M, V]``:

* ``index is None``: the full output, viewed flat (``M = R L``);
* ``index`` given: those rows, through the positions protocol when the model offers it, else picked
  from the full output (so a rule that reads few rows, e.g. to truncate them, never touches the
  others).

The model gets a copy of the window's states (a model that writes into its input cannot corrupt the
chain). Its output is checked with static facts only (type, dtype, layout, shape, device), so the
check traces inside a compiled round; float64 is cast to float32, the kernels' precision. The
vocabulary size ``V`` is returned as a shape; the engine compares it with earlier calls on the host.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..ops import LOGITS_DTYPES


class DenoiserCall:
    """``DenoiserCall(denoiser, mask_id, vocab_size)``: see the module docstring."""

    def __init__(self, denoiser: Callable[..., Tensor], mask_id: int, vocab_size: int | None):
        self.denoiser, self.mask_id, self.vocab_size = denoiser, mask_id, vocab_size
        self.positions = bool(getattr(denoiser, "supports_positions", False))
        self.takes_samples = bool(getattr(denoiser, "takes_samples", False))

    def __call__(self, x: Tensor, t: Tensor, index: Tensor | None = None, samples: Tensor | None = None) -> Tensor:
        """Packed float rows ``[M, V]`` of the model at states ``x [R, L]``, times ``t [R]``, the rows of
        the engine input's rows ``samples`` (module docstring)."""
        x = x.clone()
        kwargs = {"samples": samples} if self.takes_samples else {}
        if index is not None and self.positions:
            logits = self.check(self.denoiser(x, t, positions=index, **kwargs), (index.shape[0],), x.device)
        else:
            logits = self.check(self.denoiser(x, t, **kwargs), tuple(x.shape), x.device)
            logits = logits.reshape(-1, logits.shape[-1])
            if index is not None:
                logits = logits[index]
        return logits

    def check(self, logits, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """The model's output checked: a dense float tensor ``[*shape, V]`` on ``device``, ``V`` above
        ``mask_id`` and equal to ``vocab_size`` if given; float64 comes back as float32."""
        if not isinstance(logits, Tensor):
            raise TypeError(f"denoiser must return a torch.Tensor, got {type(logits).__name__}")
        if logits.layout != torch.strided:
            raise TypeError(f"denoiser must return a dense (strided) tensor, got layout {logits.layout}")
        if logits.dtype == torch.float64:
            logits = logits.float()  # the kernels' precision; float64 models (e.g. exact oracles) are welcome
        if logits.dtype not in LOGITS_DTYPES:
            raise TypeError(f"denoiser must return float logits (float64/32, bfloat16, float16), got {logits.dtype}")
        if not (logits.dim() == len(shape) + 1 and tuple(logits.shape[:-1]) == shape):
            want = ", ".join(map(str, shape))
            raise ValueError(f"denoiser returned logits of shape {tuple(logits.shape)}, expected [{want}, V]")
        V = logits.shape[-1]
        if not (self.vocab_size is None or V == self.vocab_size):
            raise ValueError(f"denoiser returned vocab size V={V}, but vocab_size={self.vocab_size}")
        if self.mask_id >= V:
            raise ValueError(f"mask_id={self.mask_id} is out of range for the denoiser's vocab size V={V}")
        if logits.device != device:
            raise ValueError(f"denoiser returned logits on {logits.device}, expected {device}")
        return logits
