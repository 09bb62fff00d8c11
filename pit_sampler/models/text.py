"""A masked-diffusion language model on real English text: corpus, tokenizer, models and metrics.

**Corpus.** Debian's ``fortunes`` and ``fortunes-min`` packages (version ``1:1.99.1-7.3``, the
BSD-licensed quotations of BSD ``fortune(6)``; the offensive sets of ``fortunes-off`` are not used).
Every file of ``/usr/share/games/fortunes`` except the ``.dat`` indexes, the ``.u8`` links and
``ascii-art`` (pictures, not prose) is split at its ``%`` lines into quotations
(:func:`parse_fortunes`). A quotation is normalised (:func:`normalize_quote`): overstrike sequences
``c BACKSPACE`` removed, control characters removed, every run of white space (newlines, tabs)
replaced by one space. Exact duplicates are dropped (first occurrence kept, files in sorted order).

**Split.** Quotation ``q`` is held out iff ``int(sha256(f"{seed}:{q}")[:16], 16) % 100 < 5``
(:func:`is_heldout`, ``seed = 0``): a fixed 95/5 split that does not depend on file order, so a
quotation is in the same part whatever else the corpus holds. The held-out part is shipped
(``weights/text/heldout.txt.gz``, one quotation a line) with the package's copyright file, so
evaluation needs no download; training needs the two ``.deb`` packages (docs/text-model.md).

**Sequences.** Quotations are tokenized and concatenated, each followed by the separator ``[SEP]``,
into one token stream (:func:`pack_stream`); a sequence is any window of ``L`` consecutive tokens
(training draws random offsets; evaluation cuts the held-out stream into consecutive windows,
:func:`chunk_stream`). ``[SEP]`` is an ordinary token for the models: a sample is a run of
quotations, cut at its ends. The models are trained at ``L = 128`` and ``L = 256``.

**Tokenizer.** Byte-level BPE (``tokenizers``), 4096 ids: ``[PAD] = 0``, ``[SEP] = 1``,
``[MASK] = 2``, then the 256 byte symbols and the merges learned from the training part.

**Masked diffusion LM** (:func:`load_text_model`): a ``transformers.ModernBertForMaskedLM`` trained from
scratch with the MDLM/RADD continuous-time NELBO (:func:`~pit_sampler.models.masked_diffusion_loss`).
It is time-agnostic; its conditionals ``p(x_0^l | x_t)`` are the logits with the ``[MASK]`` and
``[PAD]`` columns set to ``-inf`` (:func:`clean_logits`): what the samplers see through
:func:`text_denoiser` (the sampler never draws the mask; ``[PAD]`` is suppressed).

**Evaluator** (:func:`load_evaluator`): an independent ``transformers.GPT2LMHeadModel`` trained on
the same training part (same tokenizer), for generative perplexity.

**Metrics.** For token sequences ``x [N, L]``:

* :func:`generative_perplexity`: ``exp( sum_{n, l >= 1} -log q(x_{n,l} | x_{n,<l}) / (N (L - 1)) )``
  under the evaluator ``q`` (the first token of a sequence has no context and is not scored);
* :func:`unigram_entropy`: the mean over samples of the entropy (nats) of the sample's empirical
  token distribution, ``H_n = -sum_v c_{n,v}/L log(c_{n,v}/L)`` with ``c_{n,v}`` the count of ``v``
  in sample ``n``. Degenerate, repetitive samples (which low-precision Gumbel noise favours) have a
  low gen-PPL *and* a low entropy, so the two are reported together;
* :func:`heldout_nelbo`: the masked model's NELBO per token (nats), the mean of
  :func:`~pit_sampler.models.masked_diffusion_loss` over the held-out windows with fixed noise,
  an upper bound on ``-log p(x) / L`` up to the dropped ``t < 10^-3`` part.

``transformers`` and ``tokenizers`` are optional (``pip install pit-sampler[hf]``), imported when needed.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import WEIGHTS_DIR, masked_diffusion_loss

TEXT_DIR = WEIGHTS_DIR / "text"
MODEL_DIR = TEXT_DIR / "mdlm"  # ModernBertForMaskedLM + the tokenizer
EVALUATOR_DIR = TEXT_DIR / "evaluator"  # GPT2LMHeadModel
HELDOUT_FILE = TEXT_DIR / "heldout.txt.gz"
COPYRIGHT_FILE = TEXT_DIR / "COPYRIGHT.fortunes"

CORPUS_PACKAGES = ("fortunes", "fortunes-min")
CORPUS_VERSION = "1:1.99.1-7.3"
FORTUNES_DIR = "usr/share/games/fortunes"  # inside the extracted packages (or / when installed)
EXCLUDED_FILES = ("ascii-art",)
SPLIT_SEED = 0
HELDOUT_PERCENT = 5
LENGTH = 128
PAD, SEP, MASK = "[PAD]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, SEP, MASK)  # ids 0, 1, 2
VOCAB_SIZE = 4096

_OVERSTRIKE = re.compile(r".\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the text model needs {module}; install it with `pip install transformers tokenizers` "
            "(or `pip install pit-sampler[hf]`)"
        ) from err


# ---------------------------------------------------------------------------------------------- corpus


def normalize_quote(text: str) -> str:
    """One quotation as one line: overstrikes (``c BACKSPACE``) and control characters removed,
    white space runs (newlines and tabs included) replaced by one space, ends stripped."""
    text = _OVERSTRIKE.sub("", text)
    text = _CONTROL.sub("", text.replace("\t", " "))
    return " ".join(text.split())


def parse_fortunes(raw: str) -> list[str]:
    """The quotations of one fortune file: the text between lines holding only ``%``, normalised
    (:func:`normalize_quote`); empty ones dropped."""
    parts = re.split(r"^%[ \t]*$", raw.replace("\r\n", "\n"), flags=re.MULTILINE)
    return [q for q in (normalize_quote(p) for p in parts) if q]


def read_fortunes(root: str | os.PathLike) -> list[str]:
    """Every quotation under ``root`` (a directory of fortune files, e.g. the packages'
    ``usr/share/games/fortunes``): files in sorted order, without ``.dat`` indexes, symbolic links
    (the ``.u8`` names) and :data:`EXCLUDED_FILES`; exact duplicates dropped, first kept."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no fortune directory at {root}")
    seen, quotes = set(), []
    for path in sorted(root.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8") or path.name in EXCLUDED_FILES:
            continue
        for q in parse_fortunes(path.read_bytes().decode("utf-8", errors="replace")):
            if q not in seen:
                seen.add(q)
                quotes.append(q)
    if not quotes:
        raise ValueError(f"no quotations found under {root}")
    return quotes


def is_heldout(quote: str, seed: int = SPLIT_SEED, percent: int = HELDOUT_PERCENT) -> bool:
    """Whether ``quote`` is in the held-out part: ``int(sha256(f"{seed}:{quote}")[:16], 16) % 100 < percent``."""
    digest = hashlib.sha256(f"{seed}:{quote}".encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % 100 < percent


def split_quotes(quotes: list[str], seed: int = SPLIT_SEED, percent: int = HELDOUT_PERCENT) -> tuple[list[str], list[str]]:
    """``(train, heldout)`` by :func:`is_heldout`, each in the input order."""
    held = [is_heldout(q, seed, percent) for q in quotes]
    return [q for q, h in zip(quotes, held) if not h], [q for q, h in zip(quotes, held) if h]


def write_quotes(quotes: list[str], path: str | os.PathLike) -> None:
    """One quotation a line, gzip-compressed with a zero timestamp (the same bytes for the same quotations)."""
    data = "".join(q + "\n" for q in quotes).encode("utf-8")
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(data)


def read_quotes(path: str | os.PathLike = HELDOUT_FILE) -> list[str]:
    """The quotations of a file written by :func:`write_quotes` (default: the shipped held-out part)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


# --------------------------------------------------------------------------------- tokens and windows


def train_tokenizer(quotes: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer (``transformers.PreTrainedTokenizerFast``) with ``vocab_size`` ids:
    :data:`SPECIAL_TOKENS` first (``[PAD] = 0``, ``[SEP] = 1``, ``[MASK] = 2``), the 256 byte symbols,
    then merges learned from ``quotes`` (each pair seen at least twice)."""
    tk = _require("tokenizers")
    transformers = _require("transformers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(quotes, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, sep_token=SEP, eos_token=SEP, mask_token=MASK
    )
    ids = [fast.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS]
    if ids != [0, 1, 2] or len(fast) != vocab_size:
        raise RuntimeError(f"unexpected tokenizer layout: special ids {ids}, {len(fast)} ids")
    return fast


def load_tokenizer(path: str | os.PathLike = MODEL_DIR):
    """The shipped tokenizer (``PreTrainedTokenizerFast.from_pretrained`` on the masked LM's folder)."""
    transformers = _require("transformers")
    return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))


def encode_quotes(tokenizer, quotes: list[str]) -> list[list[int]]:
    """Token ids of each quotation (no special tokens added)."""
    return tokenizer(list(quotes), add_special_tokens=False)["input_ids"]


def pack_stream(token_lists: list[list[int]], sep_id: int) -> Tensor:
    """One int64 stream: ``q_1 [SEP] q_2 [SEP] ... q_n [SEP]``."""
    flat = [i for ids in token_lists for i in (*ids, sep_id)]
    return torch.tensor(flat, dtype=torch.int64)


def chunk_stream(stream: Tensor, length: int = LENGTH) -> Tensor:
    """Consecutive non-overlapping windows ``[len(stream) // length, length]`` (the tail is dropped)."""
    n = stream.numel() // length
    return stream[: n * length].view(n, length)


def random_windows(stream: Tensor, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """``[batch, length]`` windows of ``stream`` at uniform random offsets in ``[0, len - length]``."""
    starts = torch.randint(0, stream.numel() - length + 1, (batch,), generator=generator)
    return stream[starts[:, None] + torch.arange(length)]


def heldout_windows(tokenizer, length: int = LENGTH, quotes: list[str] | None = None) -> Tensor:
    """The held-out part (default: shipped) as consecutive ``[n, length]`` windows of its packed stream."""
    quotes = read_quotes() if quotes is None else quotes
    return chunk_stream(pack_stream(encode_quotes(tokenizer, quotes), tokenizer.sep_token_id), length)


def decode(tokenizer, tokens: Tensor) -> list[str]:
    """Each row of ``tokens [N, L]`` as text, its quotations joined by ``" | "`` (the ``[SEP]`` tokens)."""
    sep = tokenizer.sep_token_id
    out = []
    for row in tokens.tolist():
        parts, cur = [], []
        for i in row + [sep]:
            if i == sep:
                parts.append(tokenizer.decode(cur).strip())
                cur = []
            else:
                cur.append(i)
        out.append(" | ".join(parts[:-1] if row and row[-1] == sep else parts))
    return out


# ------------------------------------------------------------------------------------------- models


def clean_logits(logits: Tensor, mask_id: int, suppress_ids=(0,)) -> Tensor:
    """The model's conditionals as the samplers see them: ``logits`` with the ``mask_id`` column and
    the ``suppress_ids`` columns (``[PAD]``) set to ``-inf`` (a new tensor)."""
    logits = logits.clone()
    logits[..., [mask_id, *suppress_ids]] = -math.inf
    return logits


class MaskedLMDenoiser(nn.Module):
    """``(x [N, L], t [N]) -> clean_logits(model(input_ids=x).logits)``: a time-agnostic HF masked LM
    in the form :func:`~pit_sampler.models.masked_diffusion_loss` trains (``t`` is ignored)."""

    def __init__(self, model: nn.Module, mask_id: int, suppress_ids=(0,)):
        super().__init__()
        self.model, self.mask_id, self.suppress_ids = model, int(mask_id), tuple(suppress_ids)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return clean_logits(self.model(input_ids=x).logits, self.mask_id, self.suppress_ids)


class _QuietLoading:
    """Hide transformers' per-tensor "Loading weights" progress bar while loading (restored after)."""

    def __enter__(self):
        self.logging = _require("transformers").utils.logging
        self.was = self.logging.is_progress_bar_enabled()
        self.logging.disable_progress_bar()

    def __exit__(self, *exc):
        if self.was:
            self.logging.enable_progress_bar()


def load_text_model(path: str | os.PathLike = MODEL_DIR, dtype: torch.dtype = torch.float64):
    """The shipped masked-diffusion LM (``AutoModelForMaskedLM.from_pretrained``: a ``ModernBertForMaskedLM``), in eval mode, without
    gradients, in ``dtype``: float64 (default) is the batch-invariant evaluation that makes PIT exact
    (docs/text-model.md); the weights are stored in float16, which float32 and float64 hold exactly."""
    transformers = _require("transformers")
    with _QuietLoading():
        model = transformers.AutoModelForMaskedLM.from_pretrained(str(path)).to(dtype)
    return model.eval().requires_grad_(False)


def load_evaluator(path: str | os.PathLike = EVALUATOR_DIR, dtype: torch.dtype = torch.float32):
    """The shipped evaluator (``GPT2LMHeadModel.from_pretrained``), in eval mode, without gradients."""
    transformers = _require("transformers")
    with _QuietLoading():
        model = transformers.GPT2LMHeadModel.from_pretrained(str(path)).to(dtype)
    return model.eval().requires_grad_(False)


def text_denoiser(model, tokenizer, **kwargs):
    """``HFMaskedLM`` for the text model: ``mask_id = [MASK]``, ``[PAD]`` suppressed (never sampled);
    ``vocab_size`` is read from the model's config. Extra ``kwargs`` go to the adapter."""
    from ..adapters import HFMaskedLM

    kwargs.setdefault("suppress_ids", [tokenizer.pad_token_id])
    return HFMaskedLM(model, mask_id=tokenizer.mask_token_id, **kwargs)


def masked_count_loss(denoiser, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The same NELBO per token as :func:`~pit_sampler.models.masked_diffusion_loss`, estimated by the
    number of masked positions instead of the time (RADD's lambda-DCE / any-order autoregressive form):

    ``NELBO / L = E_{k ~ U{1..L}} E_{S: |S| = k} [ (1/k) sum_{l in S} -log p(x_0^l | x_0 with S masked) ]``.

    Derivation (``alpha(t) = 1 - t``): a given set ``S`` of ``k`` positions is exactly the masked set with
    probability ``t^k (1 - t)^(L-k)``, so ``E_t[(1/t) 1{masked = S}] = int_0^1 t^(k-1) (1-t)^(L-k) dt
    = (k-1)! (L-k)! / L!``; there are ``C(L, k)`` such sets, so drawing ``k`` uniformly and ``S`` uniformly
    among them needs the weight ``L / k`` on ``sum_{l in S} CE_l / L``. Each row's value is an average
    cross-entropy (no ``1 / t`` factor up to ``1000``), a far lower-variance estimate, which is what lets
    the model learn in a CPU budget; the log-linear schedule's ``eps = 10^-3`` and ``t_floor`` change the
    expectation by about 0.1%. ``k`` is stratified over the batch, ``k_i = 1 + floor(L (u + i) / N)``.
    ``denoiser(x, t)`` returns logits ``[N, L, V]`` (``t`` is passed as ``k / L``, ignored by a time-agnostic model).
    """
    N, L = x0.shape
    u = torch.rand((), generator=generator, dtype=torch.float64)
    k = 1 + torch.floor(L * (u + torch.arange(N, dtype=torch.float64)) / N).long()  # in 1..L
    k = k[torch.randperm(N, generator=generator)]
    ranks = torch.rand((N, L), generator=generator, dtype=torch.float64).argsort(1).argsort(1)
    masked = ranks < k[:, None]
    xt = torch.where(masked, denoiser.mask_id, x0)
    logits = denoiser(xt, (k.to(torch.float32) / L))
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
    ce = torch.where(masked, ce, 0.0)
    return (ce.sum(1) / k.to(ce.dtype)).mean()


# ------------------------------------------------------------------------------------------ metrics


def _check_tokens(tokens: Tensor, vocab_size: int | None = None) -> None:
    if not (isinstance(tokens, Tensor) and tokens.dim() == 2 and not tokens.is_floating_point()):
        raise ValueError(f"tokens must be an integer tensor [N, L], got {tuple(getattr(tokens, 'shape', ()))}")
    if tokens.numel() == 0:
        raise ValueError("tokens is empty")
    if int(tokens.min()) < 0 or (vocab_size is not None and int(tokens.max()) >= vocab_size):
        raise ValueError(f"tokens must be ids in [0, {vocab_size})")


def unigram_entropy(tokens: Tensor) -> float:
    """Mean over rows of the entropy (nats) of each row's empirical token distribution:
    ``mean_n -sum_v p_{n,v} log p_{n,v}``, ``p_{n,v}`` = the fraction of row ``n``'s tokens equal to ``v``."""
    _check_tokens(tokens)
    total = 0.0
    for row in tokens:
        p = torch.unique(row, return_counts=True)[1].to(torch.float64) / row.numel()
        total += float(-(p * p.log()).sum())
    return total / tokens.shape[0]


@torch.no_grad()
def sequence_nll(evaluator, tokens: Tensor, batch: int = 16) -> Tensor:
    """float64 ``[N]``: ``sum_{l >= 1} -log q(x_l | x_{<l})`` of each row under the causal LM ``evaluator``
    (``evaluator(input_ids=x).logits``); the first token is not scored."""
    _check_tokens(tokens, getattr(getattr(evaluator, "config", None), "vocab_size", None))
    if tokens.shape[1] < 2:
        raise ValueError("generative perplexity needs sequences of at least 2 tokens")
    out = []
    for x in tokens.split(batch):
        logits = evaluator(input_ids=x).logits[:, :-1].to(torch.float64)
        nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        out.append(nll.sum(1))
    return torch.cat(out)


def generative_perplexity(evaluator, tokens: Tensor, batch: int = 16) -> float:
    """``exp(sum_n nll_n / (N (L - 1)))``: the evaluator's per-token perplexity of the rows of ``tokens``
    (:func:`sequence_nll`; first tokens not scored)."""
    nll = sequence_nll(evaluator, tokens, batch)
    return math.exp(float(nll.sum()) / (tokens.shape[0] * (tokens.shape[1] - 1)))


@torch.no_grad()
def masked_fraction_ce(model, tokens: Tensor, mask_id: int, fraction: float, seed: int = 0, batch: int = 32) -> float:
    """Mean cross-entropy (nats) of the masked positions when exactly ``round(fraction * L)`` random
    positions of each row of ``tokens`` are masked (:func:`clean_logits` conditionals): how much the
    model gains from the unmasked context at that masking level (compare with the unigram cross-entropy)."""
    _check_tokens(tokens)
    N, L = tokens.shape
    k = max(1, round(fraction * L))
    g = torch.Generator().manual_seed(seed)
    masked = torch.rand((N, L), generator=g, dtype=torch.float64).argsort(1).argsort(1) < k
    xt = torch.where(masked, mask_id, tokens)
    den = MaskedLMDenoiser(model, mask_id)
    total = 0.0
    for x, x0, m in zip(xt.split(batch), tokens.split(batch), masked.split(batch)):
        ce = F.cross_entropy(den(x).transpose(1, 2).to(torch.float64), x0, reduction="none")
        total += float(ce[m].sum())
    return total / (N * k)


def unigram_cross_entropy(train_stream: Tensor, tokens: Tensor, vocab_size: int, smoothing: float = 0.5) -> float:
    """Cross-entropy (nats per token) of ``tokens`` under the training stream's token frequencies
    (add-``smoothing`` counts): the NELBO of a model that ignores context."""
    counts = torch.bincount(train_stream.flatten(), minlength=vocab_size).to(torch.float64) + smoothing
    return float(-(counts / counts.sum()).log()[tokens.flatten()].mean())


@torch.no_grad()
def heldout_nelbo(model, tokens: Tensor, mask_id: int, repeats: int = 4, seed: int = 1234, batch: int = 32) -> float:
    """Mean over ``repeats`` passes of :func:`~pit_sampler.models.masked_diffusion_loss` on ``tokens``
    (``batch`` rows per call, noise from ``torch.Generator().manual_seed(seed)``): the NELBO per token,
    nats, of the HF masked LM ``model`` (eval mode) with the samplers' conditionals (:func:`clean_logits`)."""
    _check_tokens(tokens)
    den = MaskedLMDenoiser(model, mask_id)
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(repeats):
        for x in tokens.split(batch):
            total += float(masked_diffusion_loss(den, x, generator=g)) * x.shape[0]
            count += x.shape[0]
    model.train(was_training)
    return total / count
