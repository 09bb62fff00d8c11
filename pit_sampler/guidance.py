"""Classifier-free guidance for masked-diffusion denoisers, as LLaDA and MaskGIT-style samplers use it.

:class:`ClassifierFreeGuidance` wraps a denoiser ``D(x, t) -> logits``. Each call evaluates every row
twice in **one** batched call: as given (conditional) and with its prompt positions replaced by
``mask_id`` (unconditional), and returns

    ``guided = uncond + (1 + cfg_scale) * (cond - uncond)``

on the logits: the formula of LLaDA's reference ``generate()``
(``un_logits + (cfg_scale + 1) * (logits - un_logits)``, github.com/ML-GSAI/LLaDA, ``generate.py``;
Nie et al., arXiv 2502.09992), i.e. ``cond + cfg_scale (cond - uncond)``. ``cfg_scale = 0`` is the
plain denoiser (one evaluation per row). A token banned (``-inf``) in either branch stays banned:
the formula would give NaN or ``+inf`` there.

It is an ordinary denoiser, so it works with every sampler (``TauLeapingSampler``, ``PITSampler``,
``MaskGITSampler``, sequential or Picard); it is batch-invariant whenever ``D`` is, which is what
exact Picard needs. It follows the positions protocol exactly when ``D`` does (``supports_positions``
is read from ``D``). The prompt is given once for all rows (a ``BoolTensor[L]`` or a prefix length),
since a sampler's rows do not say which sample they belong to.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .positions import check_positions
from .validation import is_real


class ClassifierFreeGuidance:
    """``ClassifierFreeGuidance(denoiser, mask_id=..., cfg_scale=..., prompt=...)``: see the module docstring.

    ``prompt``: ``int`` (the first ``prompt`` positions) or ``BoolTensor[L]`` (``True`` at prompt
    positions): the positions masked for the unconditional branch. ``cfg_scale``: a finite real
    number >= 0.
    """

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor], *, mask_id: int, cfg_scale: float,
                 prompt: int | Tensor):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
            raise ValueError(f"mask_id must be an int >= 0, got {mask_id!r}")
        if not is_real(cfg_scale):
            raise TypeError(f"cfg_scale must be a real number, got {type(cfg_scale).__name__} {cfg_scale!r}")
        if not (math.isfinite(cfg_scale) and cfg_scale >= 0):  # nan/inf would only surface as NaN logits
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
        if isinstance(prompt, Tensor):
            if prompt.dtype != torch.bool or prompt.dim() != 1:
                raise TypeError(f"prompt must be an int or a BoolTensor[L], got {prompt.dtype} {tuple(prompt.shape)}")
        elif isinstance(prompt, bool) or not isinstance(prompt, int) or prompt < 0:
            raise TypeError(f"prompt must be an int >= 0 or a BoolTensor[L], got {prompt!r}")
        self.denoiser, self.mask_id, self.cfg_scale, self.prompt = denoiser, mask_id, float(cfg_scale), prompt

    def _prompt_mask(self, length: int, device) -> Tensor:
        if isinstance(self.prompt, Tensor):
            if self.prompt.shape[0] != length:
                raise ValueError(f"prompt has {self.prompt.shape[0]} positions, but the rows have L={length}")
            return self.prompt.to(device)
        return torch.arange(length, device=device) < self.prompt

    def __call__(self, x: Tensor, t: Tensor, positions: Tensor | None = None) -> Tensor:
        """Guided logits ``[N, L, V]``; with ``positions`` (the positions protocol, offered when the
        wrapped denoiser offers it) ``[M, V]``: the conditional rows at ``positions`` and the
        unconditional rows at ``positions + N * L`` come from one call on the stacked batch."""
        if self.cfg_scale == 0:
            return self.denoiser(x, t) if positions is None else self.denoiser(x, t, positions=positions)
        uncond_x = x.masked_fill(self._prompt_mask(x.shape[1], x.device), self.mask_id)
        both_x, both_t = torch.cat([x, uncond_x]), torch.cat([t, t])
        if positions is None:
            both, n = self.denoiser(both_x, both_t), x.shape[0]
        else:
            check_positions(positions, x)  # the stacked call would accept indices into the second half
            both = self.denoiser(both_x, both_t, positions=torch.cat([positions, positions + x.numel()]))
            n = positions.shape[0]
        cond, uncond = both[:n], both[n:]
        guided = uncond + (1.0 + self.cfg_scale) * (cond - uncond)
        banned = torch.isneginf(cond) | torch.isneginf(uncond)
        return guided.masked_fill(banned, float("-inf"))

    def __getattr__(self, name):
        # adapters' attributes and sampler_kwargs() pass through (mask_id, vocab_size, ...)
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)
