"""Block-causal language models (BD3-LM, SDAR, Fast-dLLM v2) with an exact prefix KV cache.

The sequence is cut into blocks of ``bl`` positions from position 0 (the last may be shorter), and
attention is **block-causal**: query ``i`` may attend key ``j`` iff ``j // bl <= i // bl``
(:func:`block_causal_mask`). Logits are not shifted (position ``l``'s logits predict token ``l``,
from the hidden state at ``l``) and the model is time-agnostic.

:class:`HFBlockCausalLM` wraps a Hugging Face ``*ForCausalLM`` of the Llama/Qwen2 family and offers
the cache protocol of :mod:`pit_sampler.block_cache` (docs/blocks.md, "The cache protocol"):

* ``den(x, t, positions=None)``: ``x [R, e]`` at positions ``0..e-1``, a block-causal 4D mask;
* ``den.encode(x, start, cache=None) -> BlockCache``: the keys/values of the clean tokens ``x [B, n]``
  at positions ``start..start+n-1`` appended to ``cache``;
* ``den.select(cache, index) -> BlockCache``: the cache of the samples ``index``;
* ``den(x, t, positions=None, *, cache, samples, start)``: ``x [W B', n]`` holds only the block at
  ``start..start+n-1``, row ``u B' + b`` is Picard slice ``u`` of cache sample ``samples[b]``; the W
  slices are folded into the query axis (one query sequence of ``W n`` tokens per sample, a mask
  that is block-diagonal over the slices), so the prefix is read once per sample, never copied per
  slice. The call never changes ``cache``.

Transformers computes attention; the adapter only builds 4D masks, position ids and caches. A 4D
``attention_mask`` is used as given (``masking_utils._preprocess_mask_arguments`` returns it as-is):
boolean (``True`` = attend) for ``sdpa``, additive (``0`` / ``finfo(dtype).min``) for ``eager``; other
attention implementations (flash attention, flex) take no arbitrary mask and are refused. Local
layers (``config.layer_types`` naming ``"sliding_attention"``, an int ``sliding_window``) get their own
mask, the block-causal one within ``|p_q - p_k| < sliding_window`` (:func:`layer_masks`, built from
absolute positions, so it is the same with and without the cache, which keeps every key); a window
transformers would apply by itself (Mistral-style, no ``layer_types``) is refused.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapters import Adapter
from .positions import HEAD_BLOCK, rowwise
from .schedules import Schedule
from .validation import check_index_vector, check_token_batch, is_int

#: attention implementations that take an arbitrary 4D mask (boolean for sdpa, additive for eager)
MASKED_ATTENTION = ("sdpa", "eager")


def block_causal_mask(length: int, block_length: int, device: str | torch.device | None = None) -> Tensor:
    """The block-causal attention mask: bool ``[length, length]``, ``True`` where query ``i`` may attend
    key ``j``, i.e. ``j // block_length <= i // block_length`` (bidirectional inside a block, causal
    across blocks; blocks from position 0, the last may be shorter). ``block_length = 1`` is the causal
    mask, ``block_length >= length`` the full one. Rows ``s..e-1`` of ``block_causal_mask(e, bl)`` are
    the mask of queries ``s..e-1`` against keys ``0..e-1`` (what :meth:`HFBlockCausalLM.encode` uses)."""
    if not is_int(length) or not is_int(block_length):
        raise TypeError(f"length and block_length must be ints, got {length!r} and {block_length!r}")
    if length < 0 or block_length < 1:
        raise ValueError(f"need length >= 0 and block_length >= 1, got length={length}, block_length={block_length}")
    block = torch.arange(length, device=device) // block_length
    return block[None, :] <= block[:, None]


@dataclass(frozen=True)
class BlockCache:
    """The keys and values of a clean prefix, positions ``0..length-1`` of ``batch`` samples: per
    attention layer ``keys[k]``, ``values[k]`` of shape ``[batch, kv_heads, length, head_dim]``.
    Made by :meth:`HFBlockCausalLM.encode` and :meth:`HFBlockCausalLM.select`; never changed in place
    (a new cache is a new object; tensors may be shared between caches)."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    batch: int
    length: int

    @property
    def device(self) -> torch.device:
        return self.keys[0].device


@functools.cache
def _prefix_layer_class():
    """A transformers ``DynamicLayer`` over a given prefix: ``update(k, v)`` returns
    ``cat(prefix[samples], k)`` (and the same for ``v``) along the sequence axis, and stores the result
    only when ``grow`` (encode). The prefix's samples are gathered inside ``update``, so a call holds
    one layer's selected prefix at a time; the given tensors are never written."""
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        def __init__(self, keys: Tensor, values: Tensor, samples: Tensor | None, grow: bool):
            super().__init__()
            self.keys, self.values, self.samples, self.grow = keys, values, samples, grow
            self.device, self.is_initialized = keys.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = self.keys, self.values
            if self.samples is not None:
                keys, values = keys.index_select(0, self.samples), values.index_select(0, self.samples)
            keys, values = torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
            if self.grow:
                self.keys, self.values = keys, values
            return keys, values

    return PrefixLayer


def _model_cache(cache: BlockCache | None, samples: Tensor | None, grow: bool, classes: tuple):
    """A transformers ``DynamicCache`` to feed the model: empty (``cache is None``), else one
    :func:`_prefix_layer_class` layer per attention layer over ``cache``'s tensors. ``classes``:
    ``(DynamicCache, the prefix layer class)``, resolved when the adapter is built (a class made
    inside a compiled round cannot be traced)."""
    dynamic_cache, layer = classes
    out = dynamic_cache()
    if cache is not None:
        out.layers = [layer(k, v, samples, grow) for k, v in zip(cache.keys, cache.values)]
    return out


def layer_masks(model: nn.Module, allowed: Tensor, q_positions: Tensor, k_positions: Tensor, rows: int):
    """The 4D attention mask(s) ``[rows, 1, Q, K]`` the base model of ``model`` takes for queries at
    positions ``q_positions [Q]`` and keys at ``k_positions [K]`` that may attend where ``allowed [Q, K]``
    (bool, True = attend; every row the same): that mask, or for a model with local layers
    (``config.layer_types`` holding ``"sliding_attention"``) a dict by layer type in which the local
    layers also need ``|p_q - p_k| < config.sliding_window`` (absolute positions, on both sides: a
    block is bidirectional). Boolean for sdpa, additive (``0`` / ``finfo(dtype).min``) for eager
    attention. Masks built from positions are the same whatever the cache holds, so local layers stay
    exact with the cache (it keeps every key)."""
    config = model.config
    masks = {"full_attention": allowed}
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        near = (q_positions[:, None] - k_positions[None, :]).abs() < config.sliding_window
        masks["sliding_attention"] = allowed & near
    dtype = model.dtype  # the attention scores' dtype
    for kind, mask in masks.items():
        if getattr(config, "_attn_implementation", None) == "eager":
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        masks[kind] = mask.expand(rows, 1, *mask.shape)
    return masks if len(masks) > 1 else masks["full_attention"]


def _check_config(model: nn.Module) -> None:
    """The model must take arbitrary 4D masks, have no sliding-window layer and nothing after its head."""
    config, name = getattr(model, "config", None), type(model).__name__
    impl = getattr(config, "_attn_implementation", None)
    if impl not in MASKED_ATTENTION:
        raise ValueError(
            f"HFBlockCausalLM: {name} runs attn_implementation={impl!r}, which takes no arbitrary 4D attention "
            f"mask; load the model with attn_implementation='sdpa' or 'eager'"
        )
    types = getattr(config, "layer_types", None) or ()
    windowed, window = getattr(config, "use_sliding_window", None), getattr(config, "sliding_window", None)
    local = "sliding_attention" in types
    if (set(types) - {"full_attention", "sliding_attention"} or (local and not is_int(window))
            or (not types and (windowed is True or (windowed is None and window is not None)))):
        raise ValueError(
            f"HFBlockCausalLM: {name} has layers the adapter cannot mask (layer_types={list(types)}, "
            f"use_sliding_window={windowed}, sliding_window={window}): it supports full-attention layers and "
            "local layers named in config.layer_types with an int sliding_window"
        )
    for key, neutral in (("final_logit_softcapping", None), ("logit_scale", 1), ("logits_scaling", 1)):
        if getattr(config, key, neutral) not in (neutral, None):
            raise ValueError(f"HFBlockCausalLM: {name} has config.{key}={getattr(config, key)!r} (the adapter "
                             "applies the output head itself and nothing after it)")


class HFBlockCausalLM(Adapter):
    """A block-causal Hugging Face ``*ForCausalLM`` (Llama/Qwen2 family) with an exact prefix KV cache.

    ``model``: its base model (``model.get_decoder()``, else ``model.model``) takes ``input_ids``, a 4D
    ``attention_mask``, ``position_ids``, a transformers cache (``cache=``, or ``past_key_values=`` in
    older transformers) and ``use_cache``, and returns the final hidden states; its output head
    (``model.get_output_embeddings()``, an ``nn.Linear``) is applied by the adapter to the rows needed
    only, ``head_block`` rows per call (:func:`~pit_sampler.positions.rowwise`: positions output equal to
    the full output bit for bit). Put the model in eval mode (dropout off: the samplers warn
    otherwise), with ``attn_implementation`` ``"sdpa"`` or ``"eager"``, and full-attention or local layers
    (``config.layer_types``; anything else is a ``ValueError``).

    ``block_length``: the block length the model was trained with. ``mask_id``: given, else the
    tokenizer's ``mask_token_id``, else ``model.config.mask_token_id`` (given ones must agree).
    ``vocab_size``: the head's width by default. ``tokenizer``: ids it does not have (a padded
    vocabulary) and its pad token (unless it is the EOS token) are suppressed (``-inf``), as are
    ``suppress_ids``. Other special tokens are not (a causal LM generates its own end of text). The mask column is left as the model gives it (the
    samplers never draw ``mask_id``), as :class:`~pit_sampler.adapters.HFMaskedLM` does. Time is
    ignored. float64 logits come back as float32 (:class:`~pit_sampler.adapters.Adapter`).
    """

    block_causal = True

    def __init__(self, model: nn.Module, *, block_length: int, mask_id: int | None = None, tokenizer=None,
                 vocab_size: int | None = None, suppress_ids: Iterable[int] = (),
                 schedule: str | Schedule = "loglinear", head_block: int = HEAD_BLOCK):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a Hugging Face *ForCausalLM (an nn.Module), got {type(model).__name__}")
        if not is_int(block_length):
            raise TypeError(f"block_length must be an int, got {type(block_length).__name__} {block_length!r}")
        if block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {block_length}")
        if not (is_int(head_block) and head_block >= 1):
            raise ValueError(f"head_block must be an int >= 1, got {head_block!r}")
        _check_config(model)
        get_head, get_decoder = getattr(model, "get_output_embeddings", None), getattr(model, "get_decoder", None)
        head = get_head() if callable(get_head) else None
        decoder = get_decoder() if callable(get_decoder) else getattr(model, "model", None)
        if not isinstance(head, nn.Linear) or not isinstance(decoder, nn.Module) or decoder is model:
            raise TypeError(f"model ({type(model).__name__}) must have a base model (get_decoder()) and an nn.Linear "
                            f"output head (get_output_embeddings()), got {type(decoder).__name__} and "
                            f"{type(head).__name__}")
        vocab_size = head.out_features if vocab_size is None else vocab_size
        if not (is_int(vocab_size) and vocab_size >= 1):
            raise ValueError(f"vocab_size must be an int >= 1 (the head's width by default), got {vocab_size!r}")
        mask_id = _resolve_mask_id(mask_id, tokenizer, getattr(model, "config", None))
        padded = []
        if tokenizer is not None:
            if len(tokenizer) > vocab_size:
                raise ValueError(f"HFBlockCausalLM: vocab mismatch: the tokenizer has {len(tokenizer)} tokens, but the "
                                 f"model has vocab_size={vocab_size} logits per position")
            padded = [i for i in range(len(tokenizer), vocab_size) if i != mask_id]
            pad, eos = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)
            if is_int(pad) and pad not in (mask_id, eos):
                padded.append(pad)  # padding is not text
        suppress = list(dict.fromkeys([*suppress_ids, *padded]))
        super().__init__(mask_id=mask_id, vocab_size=vocab_size, time_input="none", schedule=schedule,
                         suppress_ids=suppress, model_positions=True)
        params = inspect.signature(decoder.forward).parameters
        self.model, self.decoder, self.head, self.tokenizer = model, decoder, head, tokenizer
        self.block_length, self.head_block = int(block_length), head_block
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        from transformers.cache_utils import DynamicCache

        self._cache_classes = (DynamicCache, _prefix_layer_class())

    @classmethod
    def from_pretrained(cls, path: str, *, block_length: int | None = None, dtype: torch.dtype | None = None,
                        attn_implementation: str = "sdpa", local_files_only: bool = False,
                        trust_remote_code: bool = False, model_class=None, tokenizer="auto",
                        **kwargs) -> HFBlockCausalLM:
        """Load ``AutoModelForCausalLM`` (or ``model_class``) in eval mode (in ``dtype`` if given, with
        ``attn_implementation``) and, with ``tokenizer="auto"``, ``AutoTokenizer`` from ``path``; wrap them
        (``kwargs`` go to the constructor). ``block_length`` defaults to ``model.config.block_length``."""
        import transformers

        load = dict(local_files_only=local_files_only, trust_remote_code=trust_remote_code)
        if isinstance(tokenizer, str) and tokenizer == "auto":
            tokenizer = _load_tokenizer(path, load)
        model_class = model_class or transformers.AutoModelForCausalLM
        extra = {} if dtype is None else {"dtype": dtype}
        model = model_class.from_pretrained(path, attn_implementation=attn_implementation, **load, **extra)
        if block_length is None:
            block_length = getattr(model.config, "block_length", None)
            if block_length is None:
                raise ValueError(f"block_length is needed: {path}'s config has no block_length (pass block_length=...)")
        return cls(model.eval(), block_length=block_length, tokenizer=tokenizer, **kwargs)

    # ---------------------------------------------------------------- calls

    def __call__(self, x: Tensor, t: Tensor, positions: Tensor | None = None, *, cache: BlockCache | None = None,
                 samples: Tensor | None = None, start: int | None = None) -> Tensor:
        """Uncached (``cache is None``): ``x [R, e]`` at positions ``0..e-1``, logits ``[R, e, V]`` or, at the
        flat indices ``positions [M]`` into ``x.view(-1)``, ``[M, V]``. Cached: ``x [W B', n]`` holds the block
        at ``start..start+n-1`` (``start = cache.length``, a multiple of ``block_length``, ``n <= block_length``),
        row ``u B' + b`` of cache sample ``samples[b]``; equal (to float rounding) to the uncached call on
        ``cat(prefix, x)`` at the block's positions. The cache is not changed."""
        if cache is None:
            if samples is not None or start is not None:
                raise ValueError("samples and start are the arguments of a cached call: pass cache=... as well")
            return super().__call__(x, t, positions)
        cache, samples, start = self._check_cached(x, cache, samples, start)
        return super().__call__(x, t, positions, cache=cache, samples=samples, start=start)

    def _forward(self, x: Tensor, time, positions: Tensor | None, cache: BlockCache | None = None,
                 samples: Tensor | None = None, start: int | None = None) -> Tensor:
        """The model's logits in its own dtype (no checks, no suppression); see :meth:`__call__`.

        Uncached: mask ``[R, 1, e, e]`` = :func:`block_causal_mask`, position ids ``0..e-1``. Cached:
        :meth:`_folded` gives the hidden states in ``x``'s row order. Then the head on the rows needed."""
        if cache is None:
            R, e = x.shape
            where = torch.arange(e, device=x.device)
            h = self._hidden(x, block_causal_mask(e, self.block_length, x.device), where, where, None)
        else:
            h = self._folded(x, cache, samples, start)
        rows = h.reshape(-1, h.shape[-1])
        if positions is not None:
            return rowwise(self.head.forward, rows[positions], self.head_block)
        return rowwise(self.head.forward, rows, self.head_block).view(*x.shape, -1)

    def _folded(self, x: Tensor, cache: BlockCache, samples: Tensor, start: int) -> Tensor:
        """Hidden states ``[R, n, H]`` of the cached call, the ``W`` slices folded into the query axis.

        Per sample ``b`` (``B'`` of them, ``W = R / B'``, ``P = cache.length``): ``input_ids [B', W n]`` =
        ``x.view(W, B', n).transpose(0, 1).reshape(B', W n)``; ``position_ids[i] = start + i mod n``;
        mask ``[B', 1, W n, P + W n]``: query ``i`` attends every cached column ``j < P``, and block column
        ``j >= P`` iff ``(j - P) // n == i // n`` (same slice; bidirectional inside it, since the block
        is one block). The cache of ``samples`` is gathered per layer inside the call and not stored."""
        R, n = x.shape
        Bp = samples.shape[0]
        W, P = R // Bp, cache.length
        ids = x.view(W, Bp, n).transpose(0, 1).reshape(Bp, W * n)
        i = torch.arange(W * n, device=x.device)
        same = (i // n)[:, None] == (i // n)[None, :]
        allowed = torch.cat([same.new_ones(W * n, P), same], dim=1)
        where = start + i % n
        keys = torch.cat([torch.arange(P, device=x.device), where])
        h = self._hidden(ids, allowed, where, keys, _model_cache(cache, samples, False, self._cache_classes))
        return h.view(Bp, W, n, -1).transpose(0, 1).reshape(R, n, -1)

    def _hidden(self, ids: Tensor, allowed: Tensor, q_positions: Tensor, k_positions: Tensor, model_cache) -> Tensor:
        """The base model's final hidden states for ``ids [B, Q]`` whose queries sit at ``q_positions [Q]``
        (the position ids, used for RoPE) and may attend the keys at ``k_positions [K]`` (the cached ones,
        then ``ids``) where ``allowed [Q, K]`` (:func:`layer_masks`), with the transformers cache
        ``model_cache`` (``None``: no cache)."""
        if getattr(self.model.config, "_attn_implementation", None) not in MASKED_ATTENTION:
            _check_config(self.model)  # changed since construction: raises
        mask = layer_masks(self.model, allowed, q_positions, k_positions, ids.shape[0])
        out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=q_positions.expand(ids.shape[0], -1),
                           use_cache=model_cache is not None, **{self._cache_arg: model_cache})
        return out[0] if isinstance(out, tuple) else out.last_hidden_state

    # ---------------------------------------------------------------- the cache

    def encode(self, x: Tensor, start: int, cache: BlockCache | None = None) -> BlockCache:
        """The cache of positions ``0..start+n-1``: ``cache`` (positions ``0..start-1``; ``None`` iff
        ``start = 0``) grown by the clean tokens ``x [B, n]`` at positions ``start..start+n-1`` (``start``
        a multiple of ``block_length``; ``n`` may span several blocks, the last partial).

        Mask ``[B, 1, n, start + n]`` = rows ``start..`` of ``block_causal_mask(start + n, bl)``: each block
        of ``x`` attends the whole cache, the earlier blocks of ``x`` and itself (bidirectionally).
        Position ids ``start..start+n-1``. ``cache`` is not changed (a new :class:`BlockCache`)."""
        check_token_batch("x", x)
        B, n = x.shape
        if not is_int(start):
            raise TypeError(f"start must be an int, got {type(start).__name__} {start!r}")
        if start < 0 or start % self.block_length:
            raise ValueError(f"start must be a multiple of block_length={self.block_length} (>= 0), got {start}")
        if cache is None and start != 0:
            raise ValueError(f"start={start} needs the cache of positions 0..{start - 1}; cache is None")
        if cache is not None:
            self._check_cache(cache, start, x.device)
            if cache.batch != B:
                raise ValueError(f"x has {B} rows, but the cache holds {cache.batch} samples (select them first)")
        e = start + n
        allowed = block_causal_mask(e, self.block_length, x.device)[start:]
        model_cache = _model_cache(cache, None, True, self._cache_classes)
        where = torch.arange(e, device=x.device)
        with torch.no_grad():
            self._hidden(x, allowed, where[start:], where, model_cache)
        layers = model_cache.layers
        return BlockCache(tuple(layer.keys for layer in layers), tuple(layer.values for layer in layers), B, e)

    def select(self, cache: BlockCache, index: Tensor) -> BlockCache:
        """The cache of the samples ``index`` (LongTensor ``[B']`` into ``cache``'s batch, in that order;
        e.g. the samples still running after an EOS). ``cache`` is not changed."""
        if not isinstance(cache, BlockCache):
            raise TypeError(f"cache must be a BlockCache (from encode or select), got {type(cache).__name__}")
        self._check_index("index", index, cache)
        keys = tuple(k.index_select(0, index) for k in cache.keys)
        return BlockCache(keys, tuple(v.index_select(0, index) for v in cache.values), index.shape[0], cache.length)

    # ---------------------------------------------------------------- checks

    def _check_cache(self, cache, start, device) -> None:
        """``cache`` is a :class:`BlockCache` on ``device`` covering exactly the positions before ``start``."""
        if not isinstance(cache, BlockCache):
            raise TypeError(f"cache must be a BlockCache (from encode or select), got {type(cache).__name__}")
        if start != cache.length:
            raise ValueError(f"start={start}, but the cache covers positions 0..{cache.length - 1}: start must be "
                             f"its length {cache.length}")
        if cache.device != device:
            raise ValueError(f"the cache is on {cache.device}, but x is on {device}")

    def _check_index(self, name: str, index, cache: BlockCache) -> None:
        """``index`` is a 1-D LongTensor on the cache's device with values in ``[0, cache.batch)``
        (values read in eager mode only, :func:`~pit_sampler.validation.reads_allowed`)."""
        check_index_vector(name, index, cache.batch, cache.device, shape="B'", meaning="sample indices into the cache",
                           owner="the cache", holds="", outside=f"the cache's samples [0, {cache.batch})")

    def _check_cached(self, x, cache, samples, start) -> tuple:
        """The arguments of a cached call (see :meth:`__call__`), returned as ``(cache, samples, start)``."""
        check_token_batch("x", x)
        if not is_int(start):
            raise TypeError(f"start must be an int, got {type(start).__name__} {start!r}")
        if start % self.block_length:
            raise ValueError(f"start must be a multiple of block_length={self.block_length}, got {start}")
        self._check_cache(cache, start, x.device)
        if x.shape[1] > self.block_length:
            raise ValueError(f"x holds {x.shape[1]} positions, more than block_length={self.block_length}: a cached "
                             "call takes the current block only")
        if samples is None:
            raise TypeError("samples is needed with cache: a LongTensor [B'] of the rows' cache samples")
        self._check_index("samples", samples, cache)
        if samples.numel() == 0 or x.shape[0] % samples.numel():
            raise ValueError(f"x has {x.shape[0]} rows, not a multiple W * B' of the {samples.numel()} samples")
        return cache, samples, int(start)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", block_length={self.block_length})"


def _load_tokenizer(path: str, load: dict):
    """The tokenizer of the folder ``path``: a plain fast tokenizer when its ``tokenizer_config.json``
    says so (``TokenizersBackend``/``PreTrainedTokenizerFast``: ``AutoTokenizer`` would pick the model
    type's class instead, e.g. ``Qwen2Tokenizer``, which adds its own ``<|endoftext|>``), else
    ``AutoTokenizer``'s choice."""
    import json
    import os

    import transformers

    config = os.path.join(path, "tokenizer_config.json")
    declared = json.loads(open(config).read()).get("tokenizer_class") if os.path.isfile(config) else None
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return transformers.PreTrainedTokenizerFast.from_pretrained(path, **load)
    return transformers.AutoTokenizer.from_pretrained(path, **load)


def _resolve_mask_id(mask_id, tokenizer, config) -> int:
    """``mask_id``, else the tokenizer's ``mask_token_id``, else ``config.mask_token_id``; given ones must agree."""
    if tokenizer is not None and not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    found = {"the tokenizer's mask_token_id": getattr(tokenizer, "mask_token_id", None),
             "model.config.mask_token_id": getattr(config, "mask_token_id", None)}
    found = {k: v for k, v in found.items() if is_int(v)}
    if mask_id is None:
        if not found:
            raise ValueError("mask_id is needed: the tokenizer has no mask token and model.config no mask_token_id")
        mask_id = next(iter(found.values()))
    for where, value in found.items():
        if value != mask_id:
            raise ValueError(f"mask_id={mask_id}, but {where}={value}")
    return mask_id
