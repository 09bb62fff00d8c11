"""Semi-autoregressive block sampling (BD3-LM, arXiv 2503.09573) on the engine, with or without an
exact prefix KV cache.

**Blocks.** The positions ``[0, L)`` form blocks ``[s_k, e_k)`` with ``s_k = k bl`` and
``e_k = min(L, s_k + bl)`` (``bl = block_length``; the last block may be shorter). Blocks run left to
right, and block ``k`` is a full absorbing diffusion of its own masked positions: the sampler's whole
``N``-step process (any step rule and mode: sequential tau-leaping, exact Picard, the approximate
modes, the trapezoidal solver) run by the engine on the input ``x[:, :e_k]``, i.e. the prefix
``x[:, :s_k]`` (prompt and finished blocks, no mask left) followed by the block. Positions after the
block are not part of the input: for a block-causal model (bidirectional attention inside a block,
causal across blocks) they could not change the block's logits. The sample is drawn from

    p(x) = prod_k p(x[s_k:e_k] | x[:s_k]),

each factor by the reverse process of the block given its clean prefix (time input: the block's own
``t_j``, from ``t_max`` again in every block). **Without a cache** (``cache=False``, the reference
path) every call recomputes the prefix: a row of block ``k`` is ``e_k`` positions long. **With the
cache** (``cache=True``; the default when the denoiser offers the protocol of
:mod:`pit_sampler.block_cache`) the prefix is encoded once per block and every call processes the
block's ``n_k = e_k - s_k`` positions only; the engine runs exactly as without it (the same input,
the same noise), so the tokens are the same whenever the cached call equals the plain one.

**Prompts, ragged batches.** ``x_init`` keeps its non-mask positions wherever they are. A block
with no masked position in a sample is nothing to do for it: the sample is not part of that block's
run (it costs no row), and a block no sample has work in costs no call. Rows may differ in their
prompts and masks.

**Noise.** Block ``k``'s steps are keyed by the same step indices ``j = 0..N`` as a one-block run (the
process restarts per block) and by absolute positions ``l``. A position belongs to one block, so no
``(seed, j, l)`` counter serves two blocks: the noise of different blocks is independent, as the
contract (docs/sampler-spec.md, section 3) requires. Everything stays a function of
``(seed_b, j, l, v)``, so a sample's tokens do not depend on the batch it is in (per-sample seed
tensors), exact Picard equals sequential bit for bit, and ``block_length >= L`` is the plain sampler.
Under the mean parametrization a position's jump noise is the plain sampler's, so it unmasks at the
same step of its block's process as in a one-block run; only the tokens' conditioning differs.

**EOS.** With ``eos_id``, a sample that draws ``eos_id`` at a position of block ``k`` that was masked
in ``x_init`` (an EOS in the prompt does not count) stops after block ``k``: it leaves the batch
(no further rows), block ``k`` keeps the tokens it drew (after the EOS too: trimming is the caller's),
and its masked positions after ``e_k`` take ``pad_id`` if given, else ``eos_id``; non-mask positions
of ``x_init`` there are kept. ``max_new_tokens`` is the masked length ``x_init`` gives.

**Vocabulary.** Later blocks' inputs hold a prefix, and the engine learns an unknown vocabulary size
by one probe row whenever its input holds a non-mask id. So a run whose ``vocab_size`` is not given
probes once itself (one round, one row: what the plain sampler spends when ``x_init`` holds a prompt)
and hands ``V`` to every block's engine run. The one run without a probe is the plain sampler's: one
block and no prompt, where the engine learns ``V`` from its first round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .block_cache import PrefixCache, offers_cache
from .engine.result import SampleResult
from .engine.run import Engine, read_ids
from .validation import check_int


@dataclass
class BlockResult(SampleResult):
    """A :class:`SampleResult` of a whole block run, and per block.

    Totals over every block: ``rounds`` (sequential denoiser calls: the probe's, if made, plus
    ``sum(block_rounds)``; with the cache the model is also called ``encodes`` times, once per block
    whose prefix it encodes), ``nfe`` (rows evaluated per sample of the batch; a row of block ``k`` has
    ``e_k`` positions, ``n_k`` with the cache), ``iterations``, ``residuals``, ``windows``, ``logits_rows`` (per round),
    ``polls``; ``policy`` is the last block's (``"auto"`` measures each block's input shape apart).
    Per block ``k``: ``block_rounds[k]``, the denoiser calls made for it (0 if no sample had work in it;
    when the batch runs in one group this is the round count of its slowest sample, since each call
    serves every sample of the block); ``block_samples[k]``, how many samples ran it.
    ``lengths [B]``: the end ``e_k`` of the block in which each sample produced EOS, else ``L``
    (masked positions from there on hold the fill id). ``positions``: the token positions the model
    processed in all, ``sum`` over calls of rows x row length (``e_k`` without a cache, ``n_k`` with
    it) plus the prefix positions encoded into the cache and the probe's row."""

    block_rounds: list[int] = field(default_factory=list)
    block_samples: list[int] = field(default_factory=list)
    lengths: Tensor | None = None
    positions: int = 0
    encodes: int = 0


@dataclass(frozen=True)
class BlockSettings:
    """``block_length``, ``eos_id``, ``pad_id`` and ``cache`` of a block run, checked (:meth:`build`)."""

    block_length: int
    eos_id: int | None = None
    pad_id: int | None = None
    cache: bool = False

    @classmethod
    def build(cls, block_length, eos_id, pad_id, mask_id: int, vocab_size: int | None, cache=None,
              denoiser=None) -> "BlockSettings | None":
        """The settings, or ``None`` without ``block_length`` (the plain sampler). A block-causal
        ``denoiser`` (``block_causal = True``) gives the default ``block_length`` (its own
        ``block_length``, which a given one must equal) and ``cache=None`` means "if it offers the
        protocol" (:func:`~pit_sampler.block_cache.offers_cache`). ``TypeError`` or ``ValueError``
        naming the argument: ``block_length`` not an int >= 1 or not the model's; ``eos_id``/``pad_id``
        not an int in ``[0, vocab_size)`` other than ``mask_id``, or given without what they need;
        ``cache`` not ``None``/a bool, or ``True`` for a denoiser without the protocol."""
        if cache is not None and not isinstance(cache, bool):
            raise TypeError(f"cache must be None, True or False, got {type(cache).__name__}")
        own = getattr(denoiser, "block_length", None) if getattr(denoiser, "block_causal", False) else None
        if block_length is None:
            block_length = own
        if block_length is None:
            if eos_id is not None or pad_id is not None or cache is not None:
                raise ValueError("eos_id, pad_id and cache are block sampling's: they need block_length")
            return None
        block_length = check_int("block_length", block_length, 1)
        if own is not None and block_length != own:
            raise ValueError(f"block_length={block_length}, but the block-causal denoiser attends in blocks of "
                             f"{own}: its block_length")
        if cache and not offers_cache(denoiser):
            raise ValueError("cache=True needs a block-causal denoiser with encode() and select() "
                             "(pit_sampler.block_cache); use cache=False")
        if pad_id is not None and eos_id is None:
            raise ValueError("pad_id fills the positions after a sample's EOS: it needs eos_id")
        ids = {}
        for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
            if value is not None:
                ids[name] = check_int(name, value, 0, vocab_size)
                if ids[name] == mask_id:
                    raise ValueError(f"{name} must differ from mask_id={mask_id}, got {value}")
        return cls(block_length, ids.get("eos_id"), ids.get("pad_id"), offers_cache(denoiser) if cache is None else cache)

    @property
    def fill(self) -> int | None:
        """The id of a stopped sample's masked positions after its EOS block: ``pad_id``, else ``eos_id``."""
        return self.eos_id if self.pad_id is None else self.pad_id

    def spans(self, length: int) -> list[tuple[int, int]]:
        """The blocks ``[(s_k, e_k)]`` of ``length`` positions."""
        bl = self.block_length
        return [(s, min(length, s + bl)) for s in range(0, length, bl)]

    def check_vocab(self, V: int) -> None:
        """``eos_id`` and ``pad_id`` against the denoiser's vocabulary size ``V``."""
        for name in ("eos_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and value >= V:
                raise ValueError(f"{name}={value} is out of range for the denoiser's vocab size V={V}")


class BlockRunner:
    """Runs an :class:`~pit_sampler.engine.run.Engine`, whatever its step rule, block by block (module
    docstring), through the engine's denoiser's cache when ``settings.cache``. ``sample(x, seeds)``
    takes what :meth:`Engine.sample` takes and returns a :class:`BlockResult`."""

    def __init__(self, engine: Engine, settings: BlockSettings):
        self.engine, self.settings = engine, settings

    def sample(self, x: Tensor, seeds: Tensor) -> BlockResult:
        """Fill every mask of ``x [B, L]`` (int64) block by block with per-sample ``seeds [B]``."""
        B, L = x.shape
        spans = self.settings.spans(L)
        work, top = self._facts(x, spans)
        vocab, probe = self._vocab(x, top, spans)
        x, masked = x.clone(), x == self.engine.config.mask_id
        cache = PrefixCache(self.engine.round.call.denoiser) if self.settings.cache else None
        live, lengths, runs, samples = [True] * B, [L] * B, [], []
        for k, (start, end) in enumerate(spans):
            rows = [b for b in range(B) if live[b] and work[b][k]]
            if rows and cache is not None:  # the samples with work left keep a cache up to this block
                cache.advance(x, [b for b in range(B) if live[b] and any(work[b][k:])], start)
            out, stopped = self._block(vocab, x, seeds, masked, rows, (start, end), cache) if rows else (None, [])
            runs.append(out)
            samples.append(len(rows))
            for b in stopped:
                live[b], lengths[b] = False, end
        lengths = torch.tensor(lengths, device=x.device)
        if self.settings.eos_id is not None:
            tail = masked & (torch.arange(L, device=x.device) >= lengths.unsqueeze(1))
            x = torch.where(tail, self.settings.fill, x)
        return self._result(x, runs, samples, spans, probe, lengths, cache)

    def _facts(self, x: Tensor, spans: list) -> tuple[list[list[int]], int]:
        """One read: whether each sample has a masked position in each block, and the largest non-mask
        id (``-1``: none); the ids' range is checked against a known ``vocab_size``."""
        mask_id, vocab_size = self.engine.config.mask_id, self.engine.config.vocab_size
        masked = x == mask_id
        per_block = torch.stack([masked[:, s:e].any(1) for s, e in spans], 1)
        top, flat = read_ids(x, mask_id, vocab_size, per_block)
        K = len(spans)
        return [flat[b * K : (b + 1) * K] for b in range(x.shape[0])], top

    def _vocab(self, x: Tensor, top: int, spans: list) -> tuple[int | None, int]:
        """``(V, probe rows spent)`` (module docstring, "Vocabulary"): with ``vocab_size`` unknown, one
        all-mask row of the first block's input length learns ``V`` (unless the run is the plain
        sampler's: one block, no prompt)."""
        engine = self.engine
        if engine.config.vocab_size is not None or (top < 0 and len(spans) == 1):
            return None, 0
        V = engine.probe(x[:1, : spans[0][1]], top)
        self.settings.check_vocab(V)
        return V, 1

    def _block(self, vocab: int | None, x: Tensor, seeds: Tensor, masked: Tensor, rows: list[int], span: tuple,
               cache: PrefixCache | None):
        """Block ``span = (s, e)`` of the samples ``rows``: one engine run on ``x[rows, :e]`` (``vocab``:
        the probed vocabulary size; the model called through ``cache`` past the first block), its
        tokens written into ``x`` in place. ``(result, the samples that produced eos_id in the block)``."""
        start, end = span
        index = torch.tensor(rows, dtype=torch.int64, device=x.device)
        if cache is None or start == 0:
            out = self.engine.sample(x[index, :end], seeds[index], vocab)
        else:
            with self.engine.using(cache.view(rows, span, x.device)):
                out = self.engine.sample(x[index, :end], seeds[index], vocab)
        x[index, start:end] = out.tokens[:, start:end]
        stopped = []
        if self.settings.eos_id is not None:
            hit = ((out.tokens[:, start:end] == self.settings.eos_id) & masked[index, start:end]).any(1).tolist()
            stopped = [b for b, h in zip(rows, hit) if h]
        return out, stopped

    def _result(self, tokens: Tensor, runs: list, samples: list[int], spans: list, probe: int, lengths: Tensor,
                cache: PrefixCache | None) -> BlockResult:
        """The totals of the blocks' runs (``None``: a block nobody ran) plus the probe's round and row
        and the cache's encodings."""
        done = [r for r in runs if r is not None]
        block_rows = [0 if r is None else r.nfe * n for r, n in zip(runs, samples)]
        widths = [e - s if self.settings.cache else e for s, e in spans]
        windows = [w for r in done for w in r.windows]
        logits_rows = sum(r.logits_rows * len(r.windows) for r in done) / max(1, len(windows))
        engine, encoded = self.engine, (0, 0) if cache is None else (cache.calls, cache.tokens)
        return BlockResult(
            tokens, probe + sum(r.rounds for r in done), (probe + sum(block_rows)) / tokens.shape[0],
            sum(r.iterations for r in done), [res for r in done for res in r.residuals],
            engine.acceptance.is_exact(engine.max_window), windows, done[-1].policy if done else None, logits_rows,
            sum(r.polls for r in done), block_rounds=[0 if r is None else r.rounds for r in runs],
            block_samples=samples, lengths=lengths, encodes=encoded[0],
            positions=round(probe * spans[0][1] + encoded[1] + sum(n * w for n, w in zip(block_rows, widths))))
