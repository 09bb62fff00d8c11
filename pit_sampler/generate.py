"""Text in, text out: :func:`generate` samples continuations and infills of text prompts with a masked
diffusion language model (a Hugging Face masked LM through :class:`~pit_sampler.adapters.HFMaskedLM`,
a block-causal one through :class:`~pit_sampler.block_causal.HFBlockCausalLM`, or any adapter) and
either sampler.

**Block-causal models** (``block_causal = True``: BD3-LM style, :mod:`pit_sampler.blocks`) are
sampled block by block with the model's ``block_length``, through their prefix KV cache, and a
row stops after the block in which it generates its end-of-text id (when there is one stop id:
``eos_token_id``, else the tokenizer's EOS/SEP); the positions after it are filled with that id.

The layout of one row (``L`` positions)::

    [template prefix] prompt tokens (gaps -> mask tokens) [mask] x max_new_tokens [template suffix] [pad ...]

* The template is the tokenizer's own (``tokenizer(text)`` against ``tokenizer(text,
  add_special_tokens=False)``): BERT/ModernBERT ``[CLS] ... [SEP]``, RoBERTa ``<s> ... </s>``, Llama
  ``<|begin_of_text|> ...``; the generated tokens go before the suffix, where the model expects the
  end of the text. ``add_special_tokens=False``: no template.
* **Infilling**: in a text prompt, ``<gap:n>`` stands for ``n`` generated tokens and the tokenizer's
  mask token string (``[MASK]``, ``<mask>``) for one; in an ids prompt, every ``mask_id``. White space
  right before a gap is dropped (byte-level BPE tokens carry their leading space; the generated
  token brings its own).
* Rows of a batch may differ in length (a ragged batch). With a pad id (the adapter's ``pad_id``,
  by default the tokenizer's pad token) rows are padded on the right to the longest and sampled in
  one batch; the adapter gives the model each call's attention mask (``x != pad_id``), and padding
  is never generated. Without one, rows of each length are sampled as a batch of their own.
  Either way a row's tokens do not depend on the other rows (per-row seeds; exactly so for a
  batch-invariant model, e.g. one evaluated in float64).

Every row has its own 64-bit seed (:func:`pit_sampler.noise.sample_seeds`), reported in
:attr:`GenerateOutput.seeds`: ``seed=output.seeds`` reproduces a call. ``seed`` is an int (row
``r`` gets the ``r``-th seed derived from it), an int64 tensor ``[R]`` (used as is), a
``torch.Generator`` (the seeds are drawn from it), or ``None``: fresh seeds drawn from torch's
global generator on every call (so ``torch.manual_seed`` makes a script reproducible, as with
Hugging Face ``generate()``).

The output (:class:`GenerateOutput`) has the sampled ``sequences`` and, per row, the text's ids
(prompt with its gaps filled and the continuation up to the first end-of-text token, ``eos_token_id``),
the decoded ``texts`` and ``completions`` (the continuation alone).
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from .adapters import Adapter, HFMaskedLM
from .block_causal import HFBlockCausalLM
from .noise import sample_seeds
from .samplers import PITSampler, SampleResult, TauLeapingSampler
from .truncation import check_truncation
from .validation import check_temperature, is_int

GAP = re.compile(r"<gap:(\d+)>")
SAMPLERS = ("pit", "sequential")
#: ``num_steps`` when none is given: the same for every batch, so a row never depends on the others
DEFAULT_STEPS = 1024
#: The most positions of a row when the model gives no ``max_position_embeddings`` (and the most in
#: any case): a row is built as a Python list (8 bytes a position) and one denoiser call on it returns
#: ``L x V`` logits, 128 GiB at ``2**20`` positions and a 32k vocabulary.
MAX_LENGTH = 2**20


@dataclass
class GenerateOutput:
    """What :func:`generate` returns, one entry per row ``r`` (``R = len(prompts) *
    num_return_sequences`` rows, the samples of prompt ``i`` at ``i * n ... i * n + n - 1``).

    * ``sequences``: int64 ``[R, L]``, the sampled layouts (template, prompt, generated tokens, pad;
      module docstring); ``-1`` past the end of a shorter row when there is no pad id;
    * ``generated``: bool ``[R, L]``, the positions that were generated (the layout's masks);
    * ``ids``: the text's token ids (no template, no pad): the prompt with its gaps filled, then the
      continuation up to (without) its first ``eos_token_id``;
    * ``texts``: ``ids`` decoded without special tokens; ``completions``: the continuation alone
      (both ``None`` without a tokenizer);
    * ``seeds``: int64 ``[R]``, each row's seed (``seed=out.seeds`` reproduces the call);
    * ``results``: the sampler's :class:`~pit_sampler.SampleResult` of each batch it ran (rounds,
      nfe, ...): one, or one per row length without padding.
    """

    sequences: Tensor
    generated: Tensor
    ids: list[list[int]]
    texts: list[str] | None
    completions: list[str] | None
    seeds: Tensor
    results: list[SampleResult] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        """Sequential denoiser calls over all batches."""
        return sum(r.rounds for r in self.results)


def _template(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (``[CLS]``/``[SEP]`` ...): the difference of
    ``tokenizer(probe)`` and ``tokenizer(probe, add_special_tokens=False)``."""
    for probe in ("a", "hello", "x y"):
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        core = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        if not core:
            continue
        for i in range(len(full) - len(core) + 1):
            if full[i : i + len(core)] == core:
                return full[:i], full[i + len(core) :]
    raise ValueError(
        "cannot tell where the tokenizer's template puts the text; pass add_special_tokens=False and "
        "give the prompts with their special tokens"
    )


def _gap_pattern(tokenizer) -> re.Pattern:
    mask = getattr(tokenizer, "mask_token", None)
    if isinstance(mask, str) and mask:
        return re.compile(GAP.pattern + "|" + re.escape(mask))
    return GAP


def has_gap(text: str, tokenizer=None) -> bool:
    """Whether ``text`` holds a gap marker: ``<gap:n>`` or the tokenizer's mask token string."""
    return bool(_gap_pattern(tokenizer).search(text))


def _parse_text(text: str, tokenizer, limit: int = MAX_LENGTH) -> list[list[int] | int]:
    """``text`` as its pieces in order: the ids of each stretch of text (no special tokens) and, for each
    gap marker, its size ``n`` (an int, not yet expanded), which must lie in ``[1, limit]``."""
    segments, start = [], 0
    for match in _gap_pattern(tokenizer).finditer(text):
        piece = text[start : match.start()].rstrip()
        if piece:
            segments.append([int(i) for i in tokenizer(piece, add_special_tokens=False)["input_ids"]])
        digits = match.group(1) or "1"
        if len(digits.lstrip("0")) > len(str(limit)) or not 1 <= int(digits) <= limit:  # no int() of a huge string
            raise ValueError(f"prompts: a gap needs at least one token and at most {limit} (the longest row), "
                             f"got {reprlib.repr(match.group(0))}")
        segments.append(int(digits))
        start = match.end()
    if text[start:]:
        segments.append([int(i) for i in tokenizer(text[start:], add_special_tokens=False)["input_ids"]])
    return segments


def _expand(segments: list[list[int] | int], mask_id: int) -> list[int]:
    """The ids of :func:`_parse_text`'s pieces, each gap ``n`` as ``n`` mask tokens."""
    return [i for seg in segments for i in ([mask_id] * seg if isinstance(seg, int) else seg)]


def _encode_text(text: str, tokenizer, mask_id: int) -> list[int]:
    """The ids of ``text`` without special tokens, each gap marker replaced by its mask tokens."""
    return _expand(_parse_text(text, tokenizer), mask_id)


def _check_ids(items: list, vocab_size: int | None) -> None:
    """The ids prompts (lists of ints among ``items``) hold ids in ``[0, vocab_size)`` (``>= 0`` when
    the vocabulary size is not known)."""
    ids = [i for p in items if not isinstance(p, str) for i in p]
    if ids and min(ids) < 0:
        raise ValueError(f"prompts hold a negative token id ({min(ids)})")
    if ids and vocab_size is not None and max(ids) >= vocab_size:
        raise ValueError(f"prompts hold token id {max(ids)}, out of range for the model's vocab_size={vocab_size}")


def _prompt_list(prompts) -> list:
    """``prompts`` as a list of ``str`` or of ``list[int]``."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Tensor):
        if prompts.is_floating_point() or prompts.dtype == torch.bool or prompts.dim() not in (1, 2):
            raise TypeError(f"prompts as a tensor must hold integer ids, [n] or [B, n], got {prompts.dtype} "
                            f"{tuple(prompts.shape)}")
        return [prompts.tolist()] if prompts.dim() == 1 else prompts.tolist()
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise TypeError(f"prompts must be a str, a list of str, a list of ids or a list of id lists, got {prompts!r}")
    if all(is_int(p) for p in prompts):
        return [[int(p) for p in prompts]]
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, Tensor) and p.dim() == 1 and not p.is_floating_point() and p.dtype != torch.bool:
            out.append(p.tolist())
        elif isinstance(p, Sequence) and all(is_int(i) for i in p):
            out.append([int(i) for i in p])
        else:
            raise TypeError(f"prompts: each prompt must be a str or a list/1-D tensor of token ids, got {p!r}")
    return out


def _make_seeds(seed, rows: int) -> Tensor:
    """int64 ``[rows]``: the rows' seeds from ``seed`` (module docstring)."""
    if seed is None:
        return torch.randint(-(2**63), 2**63 - 1, (rows,), dtype=torch.int64)
    if isinstance(seed, torch.Generator):
        return torch.randint(-(2**63), 2**63 - 1, (rows,), dtype=torch.int64, generator=seed,
                             device=seed.device).cpu()
    if isinstance(seed, Tensor) and seed.shape != (rows,):
        raise ValueError(f"seed as a tensor must be int64 of shape [{rows}] (one per row: prompts x "
                         f"num_return_sequences), got {seed.dtype} {tuple(seed.shape)}")
    return sample_seeds(seed, rows).cpu()


def _stop_ids(eos_token_id, tokenizer) -> set[int]:
    if eos_token_id is None:
        found = {getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None)}
        return {int(i) for i in found if is_int(i)}
    values = [eos_token_id] if is_int(eos_token_id) else list(eos_token_id)
    if not all(is_int(v) for v in values):
        raise TypeError(f"eos_token_id must be an int or a list of ints, got {eos_token_id!r}")
    return {int(v) for v in values}


def _model_device(den) -> torch.device:
    for module in (getattr(den, "model", None), getattr(den, "fn", None), den):
        if isinstance(module, nn.Module):
            for p in module.parameters():
                return p.device
    return torch.device("cpu")


def generate(model, tokenizer=None, prompts="", *, max_new_tokens: int | None = None, gen_length: int | None = None,
             num_steps: int | None = None, sampler="pit", num_return_sequences: int = 1, seed=None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             window: int | str = "auto", add_special_tokens: bool = True, eos_token_id: int | list[int] | None = None,
             padding: bool | str = "auto", **sampler_kwargs) -> GenerateOutput:
    """Sample ``num_return_sequences`` texts per prompt; see the module docstring for the layout,
    seeds and output.

    ``model``: an adapter (:class:`~pit_sampler.adapters.HFMaskedLM` or any denoiser with
    ``sampler_kwargs()``), or a Hugging Face masked LM (wrapped as ``HFMaskedLM(model,
    tokenizer=tokenizer)``: mask id from the tokenizer, special tokens and padded-vocabulary ids
    suppressed, attention masks from the pad token). ``tokenizer``: default the adapter's; needed for
    text prompts and text output. ``prompts``: a text, a list of texts, or token ids (a list, a 1-D
    tensor, or a list of them: a ragged batch), taken as the text's tokens (the template is added
    when ``add_special_tokens``); ``mask_id`` in ids and gap markers in text are generated.

    ``max_new_tokens`` (``gen_length``, LLaDA's name, is the same): tokens generated after each
    prompt; default 0 when a prompt has a gap, else required. ``num_steps``: sampler steps (default
    :data:`DEFAULT_STEPS` = 1024, whatever the batch; with skip-inactive steps a run costs at most
    one network call per generated position plus one, however many steps). ``sampler``: ``"pit"``
    (:class:`~pit_sampler.PITSampler`, ``window``), ``"sequential"``
    (:class:`~pit_sampler.TauLeapingSampler`), or a sampler instance (configured by its own
    arguments: then ``num_steps``, ``window``, ``temperature``, ``top_k``, ``top_p`` and
    ``sampler_kwargs`` must be left out). ``temperature``, ``top_k``, ``top_p``: the token draws
    (:mod:`pit_sampler.truncation`, Hugging Face's definitions; exactness is kept). Further keyword
    arguments go to the sampler (``rule``, ``grid``, ``schedule``, ``tol``, ...; checked against the
    adapter's settings by :func:`~pit_sampler.adapters.resolve_sampler_kwargs`).

    ``padding``: ``"auto"`` pads a ragged batch when there is a pad id, else samples each row length
    as its own batch; ``True`` requires a pad id; ``False`` never pads. ``eos_token_id``: the ids that
    end a continuation (default the tokenizer's EOS and SEP tokens); they are special tokens, so
    suppressed unless the adapter keeps them (``HFMaskedLM(..., keep_ids=[eos])``).
    """
    den, tokenizer = _denoiser(model, tokenizer)
    mask_id = den.mask_id
    max_new_tokens = _check_arguments(den, max_new_tokens, gen_length, num_return_sequences, num_steps, padding,
                                      add_special_tokens)
    top_k, top_p = check_truncation(top_k, top_p)
    temperature = check_temperature(temperature)
    stops = _stop_ids(eos_token_id, tokenizer)
    if getattr(den, "block_causal", False) and len(stops) == 1 and isinstance(sampler, str):
        sampler_kwargs = {"eos_id": next(iter(stops)), **sampler_kwargs}  # rows stop after their EOS block
    run = _sampler(den, sampler, num_steps, window, temperature, top_k, top_p, sampler_kwargs)
    prefix, cores, layouts, max_new_tokens = _layouts(den, tokenizer, prompts, max_new_tokens, add_special_tokens,
                                                      num_return_sequences)
    seeds = _make_seeds(seed, len(layouts))
    pad_id = getattr(den, "pad_id", None)
    sequences, generated, results = _sample_rows(run, den, layouts, seeds, pad_id if padding is not False else None,
                                                 pad_id, mask_id)
    ids, continuations = _trim(sequences, len(prefix), cores, max_new_tokens, stops)
    texts = completions = None
    if tokenizer is not None:
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        completions = [tokenizer.decode(row, skip_special_tokens=True) for row in continuations]
    return GenerateOutput(sequences, generated, ids, texts, completions, seeds, results)


def _denoiser(model, tokenizer):
    """``(denoiser, tokenizer)``: an adapter as given, a Hugging Face module wrapped in
    :class:`~pit_sampler.block_causal.HFBlockCausalLM` when its config has a ``block_length`` (a
    block-causal model), else in :class:`~pit_sampler.adapters.HFMaskedLM`; the tokenizer defaults
    to the adapter's."""
    if isinstance(model, Adapter) or callable(getattr(model, "sampler_kwargs", None)):
        den = model
    elif isinstance(model, nn.Module) and getattr(getattr(model, "config", None), "block_length", None) is not None:
        den = HFBlockCausalLM(model, block_length=model.config.block_length, tokenizer=tokenizer)
    elif isinstance(model, nn.Module):
        den = HFMaskedLM(model, tokenizer=tokenizer)
    else:
        raise TypeError(
            f"model must be an adapter (e.g. HFMaskedLM) or a Hugging Face model, got {type(model).__name__}")
    if tokenizer is None:
        tokenizer = getattr(den, "tokenizer", None)
    mask_id = getattr(den, "mask_id", None)
    if not is_int(mask_id):
        raise ValueError(f"model: the denoiser has no mask_id (got {mask_id!r}); wrap it in an adapter")
    return den, tokenizer


def _check_arguments(den, max_new_tokens, gen_length, num_return_sequences, num_steps, padding,
                     add_special_tokens) -> int | None:
    """The generation arguments checked; returns ``max_new_tokens`` (``gen_length`` is its LLaDA name)."""
    if gen_length is not None:
        if max_new_tokens is not None and max_new_tokens != gen_length:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} and gen_length={gen_length} disagree (they are one setting)")
        max_new_tokens = gen_length
    if not (max_new_tokens is None or (is_int(max_new_tokens) and max_new_tokens >= 0)):
        raise ValueError(f"max_new_tokens must be None or an int >= 0, got {max_new_tokens!r}")
    if not (is_int(num_return_sequences) and num_return_sequences >= 1):
        raise ValueError(f"num_return_sequences must be an int >= 1, got {num_return_sequences!r}")
    if not (num_steps is None or (is_int(num_steps) and num_steps >= 1)):
        raise ValueError(f"num_steps must be None or an int >= 1, got {num_steps!r}")
    if padding not in ("auto", True, False):
        raise ValueError(f"padding must be 'auto', True or False, got {padding!r}")
    if padding is True and getattr(den, "pad_id", None) is None:
        raise ValueError("padding=True needs a pad id (HFMaskedLM(..., pad_id=...) or a tokenizer with a pad token)")
    if not isinstance(add_special_tokens, bool):
        raise TypeError(f"add_special_tokens must be a bool, got {add_special_tokens!r}")
    return max_new_tokens


def _sampler(den, sampler, num_steps, window, temperature, top_k, top_p, sampler_kwargs):
    """The sampler to run: an instance as given (configured by its own arguments), or a new
    ``PITSampler`` / ``TauLeapingSampler`` from the arguments."""
    if not isinstance(sampler, str):
        if not callable(getattr(sampler, "sample", None)):
            raise TypeError(f"sampler must be 'pit', 'sequential' or a sampler instance, got {type(sampler).__name__}")
        named = [name for name, value, default in (("num_steps", num_steps, None), ("top_k", top_k, None),
                                                   ("top_p", top_p, None), ("window", window, "auto"),
                                                   ("temperature", temperature, 1.0)) if value != default]
        named += list(sampler_kwargs)
        if named:
            raise ValueError(f"sampler is an instance: configure it with its own arguments, not {', '.join(named)}")
        theirs = getattr(getattr(sampler, "config", None), "mask_id", den.mask_id)
        if theirs != den.mask_id:
            raise ValueError(f"the sampler's mask_id={theirs}, but the model's is {den.mask_id}")
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} or a sampler instance, got {sampler!r}")
    steps = num_steps if num_steps is not None else DEFAULT_STEPS
    kwargs = {"num_steps": steps, "temperature": temperature, "top_k": top_k, "top_p": top_p, **sampler_kwargs}
    if sampler == "pit":
        return PITSampler(den, window=window, **kwargs)
    if window != "auto":
        raise ValueError("window applies to sampler='pit'")
    return TauLeapingSampler(den, **kwargs)


def _layouts(den, tokenizer, prompts, max_new_tokens, add_special_tokens, copies: int):
    """``(prefix, cores, layouts, max_new_tokens)``: the template's prefix, each row's prompt with its
    gaps as masks (``cores``) and its whole layout (module docstring), ``copies`` rows per prompt. The
    length is checked against the model's (or :data:`MAX_LENGTH`) before any row is built."""
    mask_id = den.mask_id
    items = _prompt_list(prompts)
    if any(isinstance(p, str) for p in items) and tokenizer is None:
        raise ValueError("text prompts need a tokenizer (pass tokenizer=..., or an HFMaskedLM with one)")
    _check_ids(items, getattr(den, "vocab_size", None))
    prefix, suffix = _template(tokenizer) if (add_special_tokens and tokenizer is not None) else ([], [])
    config = getattr(getattr(den, "model", None), "config", None)
    limit, what = getattr(config, "max_position_embeddings", None), "the model's max_position_embeddings"
    if not (is_int(limit) and limit <= MAX_LENGTH):
        limit, what = MAX_LENGTH, "pit_sampler.generate.MAX_LENGTH"
    pieces = [_parse_text(p, tokenizer, limit) if isinstance(p, str) else [p] for p in items]  # gaps not expanded
    if max_new_tokens is None:
        if not all(any(isinstance(seg, int) or mask_id in seg for seg in segs) for segs in pieces):
            raise ValueError("max_new_tokens (or gen_length) is needed: a prompt has no gap to fill "
                             "(gaps: <gap:n>, the tokenizer's mask token, or mask_id in ids)")
        max_new_tokens = 0
    L = len(prefix) + max(sum(seg if isinstance(seg, int) else len(seg) for seg in segs) for segs in pieces) \
        + max_new_tokens + len(suffix)
    if L > limit:  # before any row is built: a huge gap or max_new_tokens never reaches the allocator
        raise ValueError(f"prompts, max_new_tokens: rows of {L} positions (template + prompt with its gaps + "
                         f"max_new_tokens={max_new_tokens}) exceed {what}={limit}")
    cores = [_expand(segs, mask_id) for segs in pieces]
    layouts = [prefix + core + [mask_id] * max_new_tokens + suffix for core in cores]
    layouts = [row for row in layouts for _ in range(copies)]
    cores = [core for core in cores for _ in range(copies)]
    if max(sum(i == mask_id for i in row) for row in layouts) == 0:
        raise ValueError("nothing to generate: max_new_tokens is 0 and no prompt has a gap")
    return prefix, cores, layouts, max_new_tokens


def _sample_rows(run, den, layouts: list[list[int]], seeds: Tensor, pad: int | None, pad_id: int | None,
                 mask_id: int):
    """``(sequences [R, L], generated [R, L], results)``: the rows sampled in one padded batch (``pad``
    not ``None``) or one batch per row length."""
    R, L = len(layouts), max(len(row) for row in layouts)
    groups = [list(range(R))] if pad is not None else [
        [r for r in range(R) if len(layouts[r]) == n] for n in sorted({len(row) for row in layouts})]
    fill = pad_id if pad_id is not None else -1
    sequences = torch.full((R, L), fill, dtype=torch.int64)
    device, results = _model_device(den), []
    for rows in groups:
        width = max(len(layouts[r]) for r in rows)
        x = torch.tensor([layouts[r] + [fill] * (width - len(layouts[r])) for r in rows], dtype=torch.int64)
        out = run.sample(x.to(device), seed=seeds[rows].to(device))
        sequences[rows, :width] = out.tokens.cpu()
        results.append(out)
    generated = torch.zeros(R, L, dtype=torch.bool)
    for r, row in enumerate(layouts):
        generated[r, : len(row)] = torch.tensor(row) == mask_id
    return sequences, generated, results


def _trim(sequences: Tensor, start: int, cores: list[list[int]], max_new_tokens: int, stops: set[int]):
    """``(ids, continuations)`` of each row: the prompt with its gaps filled, then the continuation up
    to its first stop id; and the continuation alone."""
    ids, continuations = [], []
    for r, core in enumerate(cores):
        end = start + len(core)
        body = sequences[r, start:end].tolist()
        tail = sequences[r, end : end + max_new_tokens].tolist()
        cut = next((i for i, v in enumerate(tail) if v in stops), len(tail))
        ids.append(body + tail[:cut])
        continuations.append(tail[:cut])
    return ids, continuations
