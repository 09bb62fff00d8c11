"""A compact masked-diffusion transformer (MDLM / RADD style), its training loss, and weight I/O.

The model reads a partly masked sequence ``x_t`` (``[N, L]`` token ids, ``mask_id`` where masked)
and returns logits of ``p_theta(x_0^l | x_t)`` for every position ``l``, or only at the positions
asked for (``model(x, t, positions=index) -> [M, V]``, the positions protocol of
:mod:`pit_sampler.positions`: the body runs on every position, the head on the selected ones): the
denoiser protocol of docs/sampler-spec.md section 5, so a model is a denoiser as it stands
(``sampler = PITSampler(model, ...)``). It traces under ``torch.compile(fullgraph=True)``.

* **Time-agnostic** (RADD; ``time_conditioned=False``): the output ignores ``t``. For absorbing
  diffusion the clean-data conditional ``p(x_0 | x_t)`` does not depend on ``t`` given which
  positions are masked, so nothing is lost in principle.
* **Time-conditioned** (MDLM; ``time_conditioned=True``): ``t`` enters through a sinusoidal
  embedding and per-block adaptive layer norm (DiT's adaLN: ``LN(h) * (1 + scale(t)) + shift(t)``,
  zero-initialised so training starts from the time-agnostic network). Each row of a batch may
  have its own ``t`` (the PIT sampler evaluates every sample at its own step time).

For images (``grid=(H, W)``), each block's MLP also mixes each position with its 3x3 neighbourhood
(a depthwise convolution on the hidden features, as in LocalViT, arXiv 2104.05707): the locality
prior that lets a small model learn strokes from 1437 digits in a few CPU minutes (after the same
1000 training steps, 20% more compute, held-out NELBO 1.28 vs 1.43 nats/position without it).

Outputs obey the absorbing process exactly: the mask column is ``-inf`` (``x_0`` is never the
mask), and a clean position carries its token over (MDLM's "carry-over unmasking": logit ``0`` on
the observed token, ``-inf`` elsewhere).

**Batch invariance.** PIT reproduces the sequential sample bit for bit only if a row's logits do
not depend on the other rows in the batch. A float32 network on CPU breaks this (the library picks
kernels and blockings by matrix shape, so rounding depends on the batch size; both shipped models
do in float32). Every operation is row-local (attention mixes positions within a row; no
batch statistics), and for sampling the parameters are kept in float64 (:func:`load_model` does
this by default) while the logits are returned in float32. The float64 evaluation has been bitwise
batch-invariant on every test; and were a library kernel to reorder a float64 sum for some batch
size, the change (~1e-16 relative) would also have to straddle a float32 rounding boundary to reach
the returned logits. tests/test_models.py checks this on the shipped weights (a row alone and
inside batches of other sizes gives identical logits, with rows at different ``t``).

**Training loss** (:func:`masked_diffusion_loss`): the continuous-time NELBO of MDLM/RADD,
``E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{l masked in x_t} -log p_theta(x_0^l | x_t) ] / L``,
which for the log-linear schedule ``alpha(t) = 1 - (1 - eps) t`` is cross-entropy on the masked
positions weighted by ``1 / t``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import HEAD_BLOCK, check_positions, rowwise, take
from ..validation import is_int, reads_allowed

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_FORMAT = "pit-sampler/masked-diffusion-transformer/1"


def timestep_embedding(t: Tensor, dim: int, max_period: float = 1000.0) -> Tensor:
    """Sinusoidal features of ``t in [0, 1]``: ``[cos(1000 t w_k), sin(1000 t w_k)]`` with
    ``w_k = max_period^(-k / (dim/2))`` (the DDPM/DiT embedding of ``1000 t``). ``[N] -> [N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class DepthwiseConv3x3(nn.Module):
    """Depthwise 3x3 convolution (zero padding) of features ``[N, H*W, C]`` laid out row by row on an
    ``H x W`` grid: ``out[n, y, x, c] = b[c] + sum_{i, j in 0..2} w[c, i, j] z[n, y + i - 1, x + j - 1, c]``.

    In float64 (sampling) it is evaluated as nine shifted elementwise multiply-adds in a fixed order:
    row-local by construction and several times faster than the float64 library convolution on CPU.
    In other dtypes (training) it calls ``F.conv2d``, the fast kernel with autograd; both compute the
    same function (tests/test_models.py compares them).
    """

    def __init__(self, channels: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.weight = nn.Parameter(torch.empty(channels, 1, 3, 3).uniform_(-1 / 3, 1 / 3))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, z: Tensor) -> Tensor:
        N, _, C = z.shape
        H, W = self.grid
        if z.dtype != torch.float64:
            image = z.transpose(1, 2).reshape(N, C, H, W)
            return F.conv2d(image, self.weight, self.bias, padding=1, groups=C).flatten(2).transpose(1, 2)
        padded = F.pad(z.view(N, H, W, C), (0, 0, 1, 1, 1, 1))
        out = self.bias.expand(N, H, W, C)
        for i in range(3):
            for j in range(3):
                out = out + self.weight[:, 0, i, j] * padded[:, i : i + H, j : j + W]
        return out.reshape(N, H * W, C)


class Block(nn.Module):
    """Pre-LN transformer block with full (bidirectional) self-attention and a GELU MLP:
    ``h += Attn(mod1(LN(h)))``; ``h += W2 GELU(z + DWConv(z))`` with ``z = W1 mod2(LN(h))``, where
    ``mod(u) = u * (1 + scale) + shift`` with ``(shift, scale)`` from the time embedding (identity for
    the time-agnostic model), and ``DWConv`` a depthwise 3x3 convolution over the positions laid out
    on ``grid = (H, W)`` (omitted when ``grid`` is None)."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, dropout: float, time_conditioned: bool, grid: tuple | None
    ):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dwconv = DepthwiseConv3x3(d_ff, grid) if grid is not None else None
        self.drop = nn.Dropout(dropout)
        self.mod = nn.Linear(d_model, 4 * d_model) if time_conditioned else None
        if self.mod is not None:
            nn.init.zeros_(self.mod.weight)
            nn.init.zeros_(self.mod.bias)

    def forward(self, h: Tensor, c: Tensor | None) -> Tensor:
        N, L, D = h.shape
        u = self.ln1(h)
        if self.mod is not None:
            shift1, scale1, shift2, scale2 = self.mod(c)[:, None, :].chunk(4, dim=-1)
            u = u * (1 + scale1) + shift1
        q, k, v = self.qkv(u).view(N, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        p_drop = self.drop.p if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop).transpose(1, 2).reshape(N, L, D)
        h = h + self.drop(self.proj(a))
        w = self.ln2(h)
        if self.mod is not None:
            w = w * (1 + scale2) + shift2
        z = self.fc1(w)
        if self.dwconv is not None:
            z = z + self.dwconv(z)
        return h + self.drop(self.fc2(F.gelu(z)))


class MaskedDiffusionTransformer(nn.Module):
    """Bidirectional transformer denoiser ``(x [N, L] int, t [N] float) -> float32 logits [N, L, V]``.

    ``vocab_size`` V counts the mask token; ``mask_id`` defaults to ``V - 1``. Learned token and
    position embeddings, ``n_layers`` :class:`Block`s (with 3x3 convolutions in the MLPs when
    ``grid = (H, W)``, ``H * W = length``, lays the positions out as an image), final layer norm and
    a linear head: the head is per position, so with ``positions`` it runs on the selected hidden
    states only (:meth:`forward`). The computation runs in the parameters' dtype (float32 to train,
    float64 to sample exactly: see the module docstring); the logits always come back as float32.
    """

    def __init__(
        self,
        vocab_size: int,
        length: int,
        *,
        mask_id: int | None = None,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.0,
        time_conditioned: bool = False,
        grid: tuple[int, int] | list[int] | None = None,
    ):
        super().__init__()
        if not (is_int(vocab_size) and vocab_size >= 2):
            raise ValueError(f"vocab_size must be an int >= 2 (clean tokens plus the mask), got {vocab_size!r}")
        mask_id = vocab_size - 1 if mask_id is None else mask_id
        if not (is_int(mask_id) and 0 <= mask_id < vocab_size):
            raise ValueError(f"mask_id must be an int in [0, vocab_size={vocab_size}), got {mask_id!r}")
        if not (is_int(length) and length >= 1):
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if not (is_int(n_heads) and n_heads >= 1 and is_int(d_model) and d_model % (2 * n_heads) == 0):
            raise ValueError(f"d_model must be a multiple of 2 * n_heads, got d_model={d_model!r}, n_heads={n_heads!r}")
        if not (is_int(n_layers) and n_layers >= 1):
            raise ValueError(f"n_layers must be an int >= 1, got {n_layers!r}")
        d_ff = 4 * d_model if d_ff is None else d_ff
        if grid is not None:
            grid = tuple(grid)
            if not (len(grid) == 2 and all(is_int(g) and g >= 1 for g in grid) and grid[0] * grid[1] == length):
                raise ValueError(f"grid must be (H, W) with H * W = length={length}, got {grid!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.config = dict(
            vocab_size=int(vocab_size),
            length=int(length),
            mask_id=int(mask_id),
            d_model=int(d_model),
            n_heads=int(n_heads),
            n_layers=int(n_layers),
            d_ff=int(d_ff),
            dropout=float(dropout),
            time_conditioned=bool(time_conditioned),
            grid=None if grid is None else [int(g) for g in grid],
        )
        self.vocab_size, self.length, self.mask_id = (self.config[k] for k in ("vocab_size", "length", "mask_id"))
        self.time_conditioned = bool(time_conditioned)
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(length, d_model) * 0.02)
        self.time_mlp = (
            nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
            if time_conditioned
            else None
        )
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout, time_conditioned, grid) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        nn.init.normal_(self.tok.weight, std=0.02)

    #: rows per chunk in eval mode (see :meth:`forward`)
    eval_chunk = 16
    #: positions per call of the output head (:func:`~pit_sampler.positions.rowwise`)
    head_block = HEAD_BLOCK
    #: takes ``positions=`` (the positions protocol, :mod:`pit_sampler.positions`)
    supports_positions = True

    def forward(self, x: Tensor, t: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """Logits of ``p(x_0 | x_t)``: float32 ``[N, L, V]``, mask column ``-inf``, clean positions carried over.

        With ``positions`` (LongTensor ``[M]`` of flat indices into ``x.view(-1)``): float32 ``[M, V]``,
        row ``i`` = ``forward(x, t)[positions[i] // L, positions[i] % L]`` bit for bit. The body runs
        on every position (attention mixes them); the head (final layer norm, linear layer, mask
        column and carry-over) only on the ``M`` selected hidden states. Both forms evaluate the
        head on ``head_block`` positions per call (:func:`~pit_sampler.positions.rowwise`), so a
        position's logits do not depend on how many are computed with it, in any dtype.

        In eval mode the body is evaluated ``eval_chunk`` rows at a time: rows never interact, so the
        output is the same, while the working set stays in cache (on CPU a 1024-row PIT window batch
        runs about 4x faster than in one piece).

        Input checks raise ``TypeError``/``ValueError`` naming the argument; the checks of values
        (token ids in range, ``positions`` in range) run in eager mode only, so that the model traces
        under ``torch.compile(fullgraph=True)`` without graph breaks.
        """
        if not (isinstance(x, Tensor) and x.dim() == 2 and not x.is_floating_point() and x.dtype != torch.bool):
            raise TypeError(f"x must be an integer tensor [N, L], got {getattr(x, 'dtype', type(x).__name__)} "
                            f"of shape {tuple(getattr(x, 'shape', ()))}")
        if not (x.shape[1] == self.length):
            raise ValueError(f"x has {x.shape[1]} positions, the model was built for length={self.length}")
        if x.numel() and reads_allowed():
            low, high = torch.stack([x.min(), x.max()]).tolist()  # one host read
            if not (0 <= low and high < self.vocab_size):
                raise ValueError(f"x holds token ids outside [0, vocab_size={self.vocab_size})")
        if self.time_mlp is None:
            t = None
        elif not (isinstance(t, Tensor) and t.shape == (x.shape[0],)):
            raise ValueError(f"the time-conditioned model needs t of shape [{x.shape[0]}], got "
                             f"{None if t is None else tuple(getattr(t, 'shape', ()))}")
        if positions is not None:
            check_positions(positions, x)
        x = x.long()
        if self.training or x.shape[0] <= self.eval_chunk:
            chunks = [(x, t)]
        else:
            chunks = list(zip(x.split(self.eval_chunk), [None] * x.shape[0] if t is None else t.split(self.eval_chunk)))
        if positions is None:
            return _cat([self._head(self._body(xc, tc), xc) for xc, tc in chunks])
        h = _cat([self._body(xc, tc) for xc, tc in chunks])
        return self._head(take(h, positions), take(x, positions))

    def _body(self, x: Tensor, t: Tensor | None) -> Tensor:
        """Hidden states ``[N, L, d_model]`` after the last block (parameter dtype)."""
        h = self.tok(x) + self.pos
        c = None
        if t is not None:
            emb = timestep_embedding(t.to(device=x.device, dtype=self.head.weight.dtype), h.shape[-1])
            c = F.silu(self.time_mlp(emb))
        for block in self.blocks:
            h = block(h, c)
        return h

    def _head(self, h: Tensor, x: Tensor) -> Tensor:
        """float32 logits ``[..., V]`` of hidden states ``h [..., d_model]`` at positions holding ``x [...]``:
        ``head(ln_f(h))`` (on ``head_block`` positions per call), mask column ``-inf``, and a clean
        position's row replaced by its carry-over row (``0`` on ``x``, ``-inf`` elsewhere)."""
        rows = rowwise(lambda r: self.head(self.ln_f(r)), h.reshape(-1, h.shape[-1]), self.head_block)
        logits = rows.view(*x.shape, self.vocab_size)
        logits[..., self.mask_id] = -math.inf
        clean = x != self.mask_id
        carry = torch.full_like(logits, -math.inf).scatter_(-1, x.unsqueeze(-1), 0.0)
        return torch.where(clean.unsqueeze(-1), carry, logits).float()


def _cat(parts: list[Tensor]) -> Tensor:
    """``torch.cat(parts)``, without the copy when there is one part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def masked_diffusion_loss(
    model: MaskedDiffusionTransformer,
    x0: Tensor,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
    t_floor: float = 1e-3,
) -> Tensor:
    """MDLM/RADD continuous-time NELBO per position (nats), a Monte-Carlo estimate over one batch.

    With the log-linear schedule ``alpha(t) = 1 - (1 - eps) t``: draw ``t`` (stratified over the
    batch, ``t = t_floor + (1 - t_floor) (u + i) / B`` for a shared ``u ~ U[0, 1)``: MDLM's
    low-discrepancy sampler), mask each position independently with probability
    ``1 - alpha(t) = (1 - eps) t``, and return the batch mean of
    ``(-alpha'(t) / (1 - alpha(t))) * sum_{masked l} -log p(x_0^l | x_t) / L = (1 / t) * CE_masked / L``.
    ``t_floor`` keeps the ``1 / t`` weight finite; it drops the part of the bound with ``t < t_floor``.
    """
    N, L = x0.shape
    u = torch.rand((), generator=generator, device=x0.device, dtype=torch.float64)
    t = t_floor + (1 - t_floor) * ((u + torch.arange(N, device=x0.device, dtype=torch.float64)) / N)
    t = t[torch.randperm(N, generator=generator, device=x0.device)]
    p_mask = (1 - eps) * t
    masked = torch.rand((N, L), generator=generator, device=x0.device, dtype=torch.float64) < p_mask[:, None]
    xt = torch.where(masked, model.mask_id, x0)
    logits = model(xt, t.to(torch.float32))
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # [N, L]; finite: x0 is never the mask
    ce = torch.where(masked, ce, 0.0)
    weight = (1 - eps) / p_mask  # -alpha'(t) / (1 - alpha(t)) = 1 / t
    return (weight.to(ce.dtype) * ce.sum(1) / L).mean()


def save_model(model: MaskedDiffusionTransformer, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write the parameters (float32) and the constructor config (JSON in the safetensors metadata)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {"format": _FORMAT, "config": json.dumps(model.config)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_file(tensors, str(path), metadata=meta)


def load_model(
    path: str | os.PathLike, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> MaskedDiffusionTransformer:
    """Rebuild a :class:`MaskedDiffusionTransformer` saved by :func:`save_model`, in eval mode.

    ``dtype=torch.float64`` (default) is the batch-invariant evaluation that makes PIT exact; the
    logits are float32 either way.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a pit-sampler masked-diffusion transformer (format={meta.get('format')!r})")
        state = {k: f.get_tensor(k) for k in f.keys()}
    model = MaskedDiffusionTransformer(**json.loads(meta["config"]))
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def weights_metadata(path: str | os.PathLike) -> dict:
    """The metadata strings stored with a weights file (config, training command, final loss, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


PRETRAINED = {"digits": "digits.safetensors", "digits-time": "digits_time.safetensors"}


def load_pretrained(name: str = "digits", dtype: torch.dtype = torch.float64) -> MaskedDiffusionTransformer:
    """A shipped model: ``"digits"`` (time-agnostic) or ``"digits-time"`` (time-conditioned), trained
    by ``python -m pit_sampler.models.train_digits`` on the scikit-learn 8x8 digits (see docs/digits.md)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {sorted(PRETRAINED)}")
    return load_model(WEIGHTS_DIR / PRETRAINED[name], dtype=dtype)
