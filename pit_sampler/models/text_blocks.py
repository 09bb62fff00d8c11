"""A block-causal text model (BD3-LM, arXiv 2503.09573) on the fortunes corpus: objective and loading.

**Model.** A ``transformers.Qwen2ForCausalLM`` (:data:`BLOCK_MODEL_CONFIG`), the same tokenizer and
corpus as the masked LM (:mod:`pit_sampler.models.text`), used with **block-causal** attention: the
sequence is cut into blocks of ``bl`` positions from position 0, and query ``i`` attends key ``j`` iff
``j // bl <= i // bl``; its first two layers are local, ``|p_i - p_j| < 5`` as well
(:func:`~pit_sampler.block_causal.layer_masks`), which is what made the masked LM learn in a CPU
budget (docs/text-model.md): a masked position sees its neighbours from the first step. Logits are
not shifted (position ``l``'s logits are the conditional of token ``l``) and time-agnostic (RADD); the ``[MASK]`` and ``[PAD]`` columns are ``-inf``
(:func:`~pit_sampler.models.text.clean_logits`). It is trained at ``bl = 16`` and ``bl = 32`` (even
and odd steps), so one model serves both block lengths (``config.block_length`` is 16, the default).

**Objective** (BD3-LM). The model defines ``p(x) = prod_k p(x^k | x^{<k})``, block ``k`` by a masked
diffusion of its positions given the clean prefix. Its NELBO is the sum over blocks of each block's
MDLM bound. All blocks of a row are trained in one pass over ``2 L`` tokens, ``[x_t ; x_0]``
(:func:`bd3_training_mask`): noisy block ``k`` attends to itself (bidirectionally) and to the clean
blocks ``< k``; the clean copy is block-causal; the clean half never sees the noisy one. Both
halves carry the positions ``0 .. L - 1``. Per block, with ``n`` its positions:

* :func:`block_count_loss` (training): ``k ~ U{1..n}`` positions of the block masked uniformly, the
  block's value ``(1/k) sum_{masked} -log p(x_0^l | x_t^k, x_0^{<k})``: RADD's equivalent of the
  block's bound (the derivation of :func:`~pit_sampler.models.text.masked_count_loss`, per block);
* :func:`block_time_loss` (held-out NELBO, the estimator :func:`~pit_sampler.models.masked_diffusion_loss`
  uses for the masked LM): per block its own ``t`` (stratified over the rows), each position masked
  with probability ``(1 - eps) t``, weight ``1 / t``.

Both return the NELBO per token, ``sum_k bound_k / L``, averaged over the rows.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from ..block_causal import block_causal_mask, layer_masks
from .text import TEXT_DIR, _QuietLoading, _require, clean_logits

BLOCK_MODEL_DIR = TEXT_DIR / "bd3lm"
BLOCK_LENGTHS = (16, 32)  # trained at both; config.block_length = the first
BLOCK_MODEL_CONFIG = dict(  # two local layers (4 positions each side), then two global ones
    hidden_size=192, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512,
    max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0, attention_dropout=0.0,
    use_sliding_window=True, sliding_window=5,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "full_attention"])


def bd3_training_mask(length: int, block_length: int, device=None) -> Tensor:
    """bool ``[2 L, 2 L]`` (True: attend) over ``[x_t ; x_0]``, with ``M = block_causal_mask(L, bl)``
    and ``S = M & M^T`` (same block): ``[[S, M & ~S], [0, M]]``: a noisy query sees its own noisy block
    and the clean earlier blocks; a clean query sees the clean blocks up to its own."""
    M = block_causal_mask(length, block_length, device)
    S = M & M.T
    top = torch.cat([S, M & ~S], 1)
    bottom = torch.cat([torch.zeros_like(M), M], 1)
    return torch.cat([top, bottom], 0)


def noisy_half_logits(model, xt: Tensor, x0: Tensor, block_length: int, mask_id: int, suppress_ids=(0,)) -> Tensor:
    """The conditionals ``[N, L, V]`` of the noisy half of one ``[x_t ; x_0]`` pass (module docstring)."""
    N, L = x0.shape
    positions = torch.arange(L, device=x0.device).repeat(2)
    masks = layer_masks(model, bd3_training_mask(L, block_length, x0.device), positions, positions, N)
    hidden = model.get_decoder()(input_ids=torch.cat([xt, x0], 1), attention_mask=masks,
                                 position_ids=positions.expand(N, 2 * L), use_cache=False).last_hidden_state[:, :L]
    return clean_logits(model.get_output_embeddings()(hidden), mask_id, suppress_ids)


def _blocks(x0: Tensor, block_length: int) -> tuple[int, int]:
    """``(blocks, positions per block)``; the length must be a multiple of the block length."""
    L = x0.shape[1]
    if L % block_length:
        raise ValueError(f"the sequence length {L} must be a multiple of block_length={block_length}")
    return L // block_length, block_length


def block_count_loss(model, x0: Tensor, block_length: int, mask_id: int, generator=None) -> Tensor:
    """The NELBO per token by masked counts per block (module docstring; training). ``k`` is
    stratified over the rows of each block, ``k_i = 1 + floor(n (u + i) / N)``, rows shuffled."""
    N, L = x0.shape
    K, n = _blocks(x0, block_length)
    u = torch.rand(K, generator=generator, dtype=torch.float64)
    k = 1 + torch.floor(n * (u + torch.arange(N, dtype=torch.float64).unsqueeze(1)) / N).long()  # [N, K]
    k = k[torch.randperm(N, generator=generator)]
    ranks = torch.rand((N, K, n), generator=generator, dtype=torch.float64).argsort(2).argsort(2)
    masked = (ranks < k.unsqueeze(2)).reshape(N, L)
    logits = noisy_half_logits(model, torch.where(masked, mask_id, x0), x0, block_length, mask_id)
    ce = torch.where(masked, F.cross_entropy(logits.transpose(1, 2), x0, reduction="none"), 0.0)
    return (ce.view(N, K, n).sum(2) / k.to(ce.dtype)).mean(1).mean()  # equal blocks: the mean over blocks


def block_time_loss(model, x0: Tensor, block_length: int, mask_id: int, generator=None,
                    eps: float = 1e-3, t_floor: float = 1e-3) -> Tensor:
    """The NELBO per token in continuous time, each block with its own ``t`` (module docstring; as
    :func:`~pit_sampler.models.masked_diffusion_loss`: log-linear schedule, stratified ``t``, the part
    of the bound below ``t_floor`` dropped)."""
    N, L = x0.shape
    K, n = _blocks(x0, block_length)
    u = torch.rand(K, generator=generator, dtype=torch.float64)
    t = t_floor + (1 - t_floor) * (u + torch.arange(N, dtype=torch.float64).unsqueeze(1)) / N  # [N, K]
    t = t[torch.randperm(N, generator=generator)]
    p = ((1 - eps) * t).repeat_interleave(n, 1)  # [N, L]
    masked = torch.rand((N, L), generator=generator, dtype=torch.float64) < p
    logits = noisy_half_logits(model, torch.where(masked, mask_id, x0), x0, block_length, mask_id)
    ce = torch.where(masked, F.cross_entropy(logits.transpose(1, 2), x0, reduction="none"), 0.0)
    weight = ((1 - eps) / p).to(ce.dtype)  # 1 / t
    return ((weight * ce).sum(1) / L).mean()


@torch.no_grad()
def heldout_block_nelbo(model, tokens: Tensor, block_length: int, mask_id: int, repeats: int = 4,
                        seed: int = 1234, batch: int = 32) -> float:
    """Mean of :func:`block_time_loss` over ``repeats`` passes of ``tokens [n, L]`` (fixed noise from
    ``seed``): the held-out NELBO per token (nats) at ``block_length``."""
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for _ in range(repeats):
        for x in tokens.split(batch):
            total += float(block_time_loss(model, x, block_length, mask_id, generator=g)) * x.shape[0]
            count += x.shape[0]
    model.train(was_training)
    return total / count


def new_block_model(tokenizer, transformers):
    """A freshly initialised :data:`BLOCK_MODEL_CONFIG` ``Qwen2ForCausalLM`` for ``tokenizer`` (sdpa
    attention; the ids and ``block_length`` stored in its config)."""
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id, block_length=BLOCK_LENGTHS[0],
        block_lengths=list(BLOCK_LENGTHS), **BLOCK_MODEL_CONFIG)
    return transformers.Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa")


def load_block_model(path: str | os.PathLike = BLOCK_MODEL_DIR, dtype: torch.dtype = torch.float64):
    """The shipped block-causal model (``AutoModelForCausalLM.from_pretrained``: a
    ``Qwen2ForCausalLM``) in eval mode, without gradients, in ``dtype`` (float64: batch invariant on
    the CPU, what exact Picard needs; the weights are stored in float16)."""
    transformers = _require("transformers")
    with _QuietLoading():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="sdpa").to(dtype)
    return model.eval().requires_grad_(False)


def block_denoiser(model, tokenizer, block_length: int | None = None):
    """:class:`~pit_sampler.block_causal.HFBlockCausalLM` for the block model: ``mask_id = [MASK]``,
    ``[PAD]`` suppressed (the tokenizer's pad token; ``[SEP]``, the end of a quotation, is generated);
    ``block_length``: 16 or 32 (default ``config.block_length``). The head runs on 64 rows at a time
    (zero-padded: batch invariant; a cached call of one sample needs a few dozen rows, so the default
    256 would spend most of a CPU call's time on padding)."""
    from ..block_causal import HFBlockCausalLM

    bl = model.config.block_length if block_length is None else block_length
    return HFBlockCausalLM(model, block_length=bl, tokenizer=tokenizer, head_block=64)
