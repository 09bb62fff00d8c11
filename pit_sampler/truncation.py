"""Top-k and top-p (nucleus) truncation of the logits rows a sampler draws tokens from.

A masked position that unmasks takes the token ``argmax_v (z_v / T + G_v)`` over the clean tokens
``v != mask_id`` (Gumbel-max: a draw from ``softmax(z / T)``, docs/sampler-spec.md section 2).
Truncation sets some logits to ``-inf`` first, so the draw comes from the renormalised rest. The
definitions are Hugging Face's (``TopKLogitsWarper``, ``TopPLogitsWarper``, applied in
``generate()``'s order: temperature, top-k, top-p), over the clean tokens:

* **top-k** keeps the tokens whose logit is at least the ``k``-th largest clean logit (so ties at
  the cut are all kept, as in HF; ``k`` at or above the number of clean tokens keeps everything).
  The set does not depend on the temperature.
* **top-p** then keeps the smallest set of most probable tokens whose probability under
  ``p = softmax(z' / T)`` (``z'`` the top-k survivors) reaches ``top_p``: token ``v`` stays iff the
  probability of the tokens strictly more likely than ``v`` is below ``top_p``,

      keep_v  <=>  sum_{u : z'_u > z'_v} p_u  <  top_p,

  which always keeps the most likely token. Tokens of equal logit are kept or removed together
  (HF's sort breaks such ties by position; here no order is needed, so the result does not depend
  on token ids or on a sort's stability). ``top_p = 1`` keeps everything.

Everything is computed in float64 from the logits as given (any float dtype; the returned tensor has
the input's dtype, and its kept entries are the input's values bit for bit). Each row is treated on
its own, so a row's result does not depend on the other rows of the call: applied inside the
sampler, before the sweep of any backend, it is the same function of the same logits in the
sequential sampler and in every Picard iteration, and exact PIT (``tol = 0``) still equals the
sequential sample bit for bit. Rows that the sweep would report as invalid (a NaN or ``+inf``
clean logit, or no finite clean logit) are returned unchanged, so they are still reported.
``temperature = 0`` (greedy: the argmax, which truncation always keeps) returns the logits as they
are. The mask token's column is never changed (the sweep never draws it).

:class:`TruncatedDenoiser` applies it to a denoiser's output (positions protocol included): the way
to use top-k/top-p with a sampler that does not take them itself.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .positions import supports_positions
from .validation import check_temperature, is_int, is_real


def check_truncation(top_k, top_p) -> tuple[int | None, float | None]:
    """``(top_k, top_p)`` normalised: ``top_k`` ``None`` or an int ``>= 1``; ``top_p`` ``None`` or a
    float in ``(0, 1]``. Raises ``TypeError``/``ValueError`` naming the argument."""
    if top_k is not None:
        if not is_int(top_k):
            raise TypeError(f"top_k must be None or an int >= 1, got {type(top_k).__name__} {top_k!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        top_k = int(top_k)
    if top_p is not None:
        if not is_real(top_p):
            raise TypeError(f"top_p must be None or a number in (0, 1], got {type(top_p).__name__} {top_p!r}")
        if not (0.0 < float(top_p) <= 1.0):
            raise ValueError(f"top_p must lie in (0, 1] (use temperature=0 for greedy decoding), got {top_p!r}")
        top_p = float(top_p)
    return top_k, top_p


def truncate_logits(
    logits: Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    mask_id: int | None = None,
) -> Tensor:
    """``logits [..., V]`` (rows ``[M, V]`` in a sampler) with every token outside the top-k / top-p
    set of its row at ``-inf`` (definitions: module docstring). ``mask_id``: the mask token, left out
    of the distribution and left unchanged. ``None`` for both ``top_k`` and ``top_p`` returns
    ``logits`` itself."""
    top_k, top_p = check_truncation(top_k, top_p)
    temperature = check_temperature(temperature)
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    V = logits.shape[-1]
    if mask_id is not None and not (is_int(mask_id) and 0 <= mask_id < V):
        raise ValueError(f"mask_id must be None or a token id in [0, V={V}), got {mask_id!r}")
    if top_p == 1.0:
        top_p = None
    clean = V - (mask_id is not None)
    if top_k is not None and top_k >= clean:
        top_k = None
    if (top_k is None and top_p is None) or temperature == 0.0 or logits.numel() == 0:
        return logits
    z = logits.to(torch.float64, copy=True)  # exact for every float dtype
    if mask_id is not None:
        z[..., mask_id] = -math.inf
    # rows the sweep reports as invalid stay as they are (a NaN or +inf clean logit, or none finite)
    bad = (torch.isnan(z) | torch.isposinf(z)).any(-1, keepdim=True) | torch.isneginf(z).all(-1, keepdim=True)
    z = torch.where(bad, 0.0, z)
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k is not None:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]  # the k-th largest value: unique, whatever the ties
        keep = z >= kth
        z = torch.where(keep, z, -math.inf)
    if top_p is not None:
        scaled = z if temperature == 1.0 else z / temperature
        desc = torch.sort(scaled, dim=-1, descending=True).values  # the sorted values: unique, whatever the ties
        probs = torch.softmax(desc, dim=-1)
        # mass of the tokens sorted before each slot (an exclusive prefix sum: no cancellation)
        before = torch.cat([torch.zeros_like(probs[..., :1]), torch.cumsum(probs, dim=-1)[..., :-1]], -1)
        # tokens strictly more likely than v: V minus those <= v (searchsorted on the ascending values)
        ascending = desc.flip(-1).contiguous()
        above = V - torch.searchsorted(ascending, scaled.contiguous(), right=True)
        keep = keep & (before.gather(-1, above) < top_p)
    if mask_id is not None:
        keep[..., mask_id] = True
    keep = keep | bad
    return torch.where(keep, logits, torch.tensor(-math.inf, dtype=logits.dtype, device=logits.device))


class TruncatedDenoiser:
    """``denoiser`` with :func:`truncate_logits` applied to every output (full ``[N, L, V]`` or the
    positions protocol's ``[M, V]``, which it offers when ``denoiser`` does).

    ``temperature`` must be the sampler's (top-p is defined on ``softmax(z / T)``) and ``mask_id``
    the sampler's mask. Deterministic and row by row, so exactness (PIT equal to sequential) is kept
    for a batch-invariant ``denoiser``. Other attributes (``sampler_kwargs()``, ``mask_id``, ...)
    pass through to ``denoiser``."""

    def __init__(self, denoiser: Callable, *, top_k: int | None = None, top_p: float | None = None,
                 temperature: float = 1.0, mask_id: int | None = None):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        self.top_k, self.top_p = check_truncation(top_k, top_p)
        self.temperature = check_temperature(temperature)
        if mask_id is None:
            mask_id = getattr(denoiser, "mask_id", None)
        if not (mask_id is None or (is_int(mask_id) and mask_id >= 0)):
            raise ValueError(f"mask_id must be None or an int >= 0, got {mask_id!r}")
        self.denoiser, self.mask_id = denoiser, mask_id
        self.supports_positions = supports_positions(denoiser)

    def __call__(self, x: Tensor, t: Tensor, positions: Tensor | None = None) -> Tensor:
        out = self.denoiser(x, t) if positions is None else self.denoiser(x, t, positions=positions)
        return truncate_logits(out, self.top_k, self.top_p, self.temperature, self.mask_id)

    def __getattr__(self, name):
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)
