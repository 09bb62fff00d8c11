"""Adapters: wrap an existing model as a denoiser for the samplers, with validation.

The samplers call ``denoiser(x: LongTensor[N, L], t: FloatTensor[N]) -> logits [N, L, V]``
(docs/sampler-spec.md section 5; ``V`` counts the mask token), or, for a denoiser with
``supports_positions = True``, ``denoiser(x, t, positions=index) -> logits [M, V]``: only the rows at
the flat indices ``index [M]`` into ``x.view(-1)`` (the positions protocol, :mod:`pit_sampler.positions`).
Models in the wild differ in what they take and return; an adapter converts, and checks every output
so that a misconfiguration fails at the first call with an error naming the problem rather than
producing garbage samples:

* :class:`CallableDenoiser`: any ``fn(x, time) -> logits`` (or ``fn(x)`` for a time-agnostic model),
  where ``time`` is what the model was trained with (``time_input``):

  - ``"t"``: diffusion time ``t in [0, 1]`` as the sampler passes it;
  - ``"none"``: nothing (time-agnostic: RADD, LLaDA, MDLM without time conditioning);
  - ``"total_noise"``: ``sigma_bar(t) = -log alpha(t)`` (what SEDD and MDLM's DiT call ``sigma``:
    a position is masked at time ``t`` with probability ``1 - exp(-sigma_bar(t))``);
  - ``"noise_rate"``: ``sigma(t) = d sigma_bar / dt = -alpha'(t) / alpha(t)`` (SEDD's ``rate_noise``).

  ``alpha`` comes from ``schedule`` (default log-linear, ``alpha(t) = 1 - (1 - eps) t``), which must
  be the schedule the model was trained with and the one the sampler runs.
* :class:`HFMaskedLM`: Hugging Face style ``model(input_ids=x, **model_kwargs)`` returning an
  object (or dict) with ``.logits``: masked-LM heads (BERT-style) and LLaDA, time-agnostic; with a
  tokenizer (mask id, padded-vocabulary and special-token suppression), ``pad_id`` (each call's
  attention mask built from its own rows) and the training ``schedule``. With positions, the
  vocabulary projection (``model.get_output_embeddings()``) runs only on the selected
  hidden states (:class:`OutputProjection`).
* :class:`SEDDScoreModel`: SEDD-style ``model(x, sigma_bar) -> log-scores`` ``s_v``; the sampler
  must run with ``parametrization="score"`` (the rate to ``v`` is ``sigma(t) exp(s_v)``).
  ``parametrization="mean"`` is also allowed: for an exact model ``exp(s_v) = alpha / (1 - alpha)
  p(v | x)`` (RADD), so the log-scores are logits of the mean parametrization up to a constant per
  position; this swaps the model's own total jump rate for the schedule's ``r(t)`` and enables
  skip-inactive steps.

Every adapter has :meth:`Adapter.sampler_kwargs` (``mask_id``, ``vocab_size``, ``schedule``,
``parametrization``: the sampler must use the same; :func:`resolve_sampler_kwargs` merges them with a
sampler's given arguments and raises on a mismatch), runs the model under
``torch.no_grad()``, returns float64 outputs as float32 (the samplers take float32/bf16/fp16), and
can set chosen token ids to ``-inf`` (``suppress_ids``: e.g. BERT's ``[CLS]``/``[SEP]``/``[PAD]``).
Every adapter takes ``positions=`` (``supports_positions = True``): a wrapped model that computes only
the requested rows is asked for them (``positions=True`` for a callable, automatic for a model with
``supports_positions``, the output projection's hooks for Hugging Face models); otherwise the adapter
gathers them from the full output. Adapters trace under ``torch.compile(fullgraph=True)``: checks that
read tensor values run in eager mode only.

Exactness: PIT equals the sequential sample bit for bit only if a row's logits do not depend on
the other rows of the batch. :func:`check_batch_invariance` tests a denoiser for that.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from .positions import HEAD_BLOCK, check_positions, rowwise, supports_positions, take
from .schedules import Schedule, get_schedule
from .validation import is_int, reads_allowed

TIME_INPUTS = ("t", "none", "total_noise", "noise_rate")
PARAMETRIZATIONS = ("mean", "score")


class Adapter:
    """Base class: validation, time conversion and output checks; subclasses define :meth:`_forward`.

    ``model_positions``: whether the wrapped model computes only the requested rows itself (else
    :meth:`__call__` gathers them from its full output).
    """

    supports_positions = True

    def __init__(
        self,
        *,
        mask_id: int,
        vocab_size: int | None = None,
        time_input: str = "t",
        schedule: str | Schedule = "loglinear",
        parametrization: str = "mean",
        suppress_ids: Iterable[int] = (),
        model_positions: bool = False,
    ):
        if not (is_int(mask_id) and mask_id >= 0):
            raise ValueError(f"mask_id must be an int >= 0, got {mask_id!r}")
        if not (vocab_size is None or (is_int(vocab_size) and vocab_size > mask_id)):
            raise ValueError(f"vocab_size must be an int > mask_id={mask_id} (V counts the mask token), got {vocab_size!r}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        suppress_ids = tuple(suppress_ids)
        for i in suppress_ids:
            if not (is_int(i) and i >= 0 and i != mask_id and (vocab_size is None or i < vocab_size)):
                raise ValueError(f"suppress_ids must be token ids in [0, vocab_size) other than mask_id, got {i!r}")
        self.mask_id, self.vocab_size = mask_id, vocab_size
        self.time_input, self.schedule = time_input, get_schedule(schedule)
        self.parametrization, self.suppress_ids = parametrization, suppress_ids
        self.model_positions = bool(model_positions)

    def _forward(self, x: Tensor, time: Tensor | None, positions: Tensor | None):
        """The wrapped model's output: ``[N, L, V]``, or ``[M, V]`` when ``positions`` is given (only
        with ``model_positions``)."""
        raise NotImplementedError

    def _time(self, t: Tensor) -> Tensor | None:
        """What the model takes for time: ``t``, nothing, ``sigma_bar(t)`` or ``sigma(t)`` (computed in float64).

        Computed on ``t``'s device (on the CPU for MPS, which has no float64), so that a round stays on
        the device and can be captured. An infinite value (``alpha(t) = 0``) is an error in eager
        mode; traced or captured, the check would read data, so it is skipped there (the model then
        sees ``inf``)."""
        if self.time_input == "t":
            return t
        if self.time_input == "none":
            return None
        t64 = t.detach().to(device="cpu" if t.device.type == "mps" else t.device, dtype=torch.float64)
        if self.time_input == "total_noise":
            value = -torch.log(self.schedule.alpha(t64))
        else:
            value = self.schedule.sigma(t64)
        if reads_allowed() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"time_input={self.time_input!r} is infinite for t={float(t64.max()):g} under {self.schedule!r} "
                "(alpha(t) = 0 there); sample with a smaller t_max"
            )
        return value.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float32)

    def __call__(self, x: Tensor, t: Tensor, positions: Tensor | None = None, **context) -> Tensor:
        """Logits ``[N, L, V]``, or ``[M, V]`` at the flat indices ``positions [M]`` into ``x.view(-1)``
        (bit for bit the rows of the full output, when the model computes them the same way).
        ``context``: further keyword arguments of a subclass's :meth:`_forward` (e.g. a cache)."""
        if not (isinstance(x, Tensor) and x.dim() == 2 and not x.is_floating_point()):
            raise TypeError(f"x must be an integer tensor [N, L], got {getattr(x, 'dtype', type(x).__name__)}")
        if not (isinstance(t, Tensor) and t.shape == (x.shape[0],)):
            raise ValueError(f"t must be a tensor of shape [{x.shape[0]}], got {tuple(getattr(t, 'shape', ()))}")
        if positions is not None:
            check_positions(positions, x)
        asked = positions if self.model_positions else None  # what the model itself computes
        with torch.no_grad():
            logits = self._check(self._forward(x, self._time(t), asked, **context), x, asked)
        if positions is not None and asked is None:
            logits = take(logits, positions)
        if self.suppress_ids:
            logits = logits.clone()
            logits[..., list(self.suppress_ids)] = -torch.inf
        return logits

    def _check(self, out, x: Tensor, positions: Tensor | None) -> Tensor:
        """``out`` must be floating-point logits ``[N, L, V]`` (``[M, V]`` with ``positions``) whose ``V``
        matches ``vocab_size`` and covers ``mask_id`` and ``suppress_ids``; float64 comes back as float32."""
        what = type(self).__name__
        if positions is None:
            lead, form = tuple(x.shape), f"[N, L, V] = [{x.shape[0]}, {x.shape[1]}, V] (one row of logits per position)"
        else:
            lead, form = (positions.shape[0],), f"[M, V] = [{positions.shape[0]}, V] (one row per requested position)"
        if not isinstance(out, Tensor):
            raise TypeError(f"{what}: the model returned {type(out).__name__}, expected a tensor of logits {form}")
        if not out.is_floating_point():
            raise TypeError(f"{what}: the model returned {out.dtype} values, expected floating-point logits")
        if not (out.dim() == len(lead) + 1 and tuple(out.shape[:-1]) == lead):
            raise ValueError(f"{what}: the model returned shape {tuple(out.shape)}, expected {form}")
        V = out.shape[-1]
        if self.vocab_size is not None and V != self.vocab_size:
            raise ValueError(
                f"{what}: vocab mismatch: the model returned V={V} logits per position, but vocab_size="
                f"{self.vocab_size} was configured (V must count every token, the mask included)"
            )
        if not self.mask_id < V:
            raise ValueError(f"{what}: mask_id={self.mask_id} is out of range for the model's V={V} logits")
        if self.suppress_ids and max(self.suppress_ids) >= V:
            raise ValueError(f"{what}: suppress_ids holds {max(self.suppress_ids)}, out of range for V={V}")
        return out.to(torch.float32) if out.dtype == torch.float64 else out

    def sampler_kwargs(self) -> dict:
        """``mask_id``, ``vocab_size``, ``schedule``, ``parametrization`` for the sampler's constructor."""
        return {
            "mask_id": self.mask_id,
            "vocab_size": self.vocab_size,
            "schedule": self.schedule,
            "parametrization": self.parametrization,
        }

    def probe(self, length: int, batch: int = 2, device: str | torch.device = "cpu") -> int:
        """Run the model once on an all-masked ``[batch, length]`` input at ``t`` from 1 down to 0.5 (and,
        if it computes positions itself, once with ``positions`` = the last position) and return ``V``:
        a misconfiguration shows up here, before a long sampling run."""
        x = torch.full((batch, length), self.mask_id, dtype=torch.int64, device=device)
        t = torch.linspace(1.0, 0.5, batch, device=device)
        if self.model_positions:
            self(x, t, positions=torch.tensor([x.numel() - 1], device=device))
        return self(x, t).shape[2]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mask_id={self.mask_id}, vocab_size={self.vocab_size}, "
            f"time_input={self.time_input!r}, schedule={self.schedule!r}, parametrization={self.parametrization!r})"
        )


class CallableDenoiser(Adapter):
    """A plain callable: ``fn(x, time) -> logits [N, L, V]``, or ``fn(x)`` with ``time_input="none"``.

    ``time`` is ``t``, ``sigma_bar(t) = -log alpha(t)`` or ``sigma(t) = -alpha'(t) / alpha(t)``
    (``time_input``: see the module docstring). Logits of ``p(x_0 | x_t)`` (``parametrization="mean"``,
    default) or log-scores (``"score"``).

    ``positions``: whether ``fn`` follows the positions protocol, i.e. ``fn(x, time, positions=index)``
    (``fn(x, positions=index)`` with ``time_input="none"``) returns only the rows ``[M, V]`` at the flat
    indices ``index`` into ``x.view(-1)``, equal to its full output's ``[index // L, index % L]``.
    ``None`` (default) reads ``fn.supports_positions``; without it the adapter computes the full output
    and gathers the rows.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        mask_id: int,
        vocab_size: int | None = None,
        time_input: str = "t",
        positions: bool | None = None,
        **kwargs,
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not (positions is None or isinstance(positions, bool)):
            raise TypeError(f"positions must be True, False or None (read fn.supports_positions), got {positions!r}")
        model_positions = supports_positions(fn) if positions is None else positions
        super().__init__(
            mask_id=mask_id, vocab_size=vocab_size, time_input=time_input, model_positions=model_positions, **kwargs
        )
        self.fn = fn

    def _forward(self, x, time, positions):
        args = (x,) if time is None else (x, time)
        return self.fn(*args) if positions is None else self.fn(*args, positions=positions)


class OutputProjection:
    """The body/head split of a Hugging Face style model: hooks on its vocabulary projection.

    The projection is ``model.get_output_embeddings()`` when that is an ``nn.Linear`` (the last
    per-position layer: BERT's ``cls.predictions.decoder``, RoBERTa's ``lm_head.decoder``,
    DistilBERT's ``vocab_projector``, ModernBERT's ``decoder``, Llama's ``lm_head``); :meth:`find`
    returns ``None`` for anything else. While armed (:meth:`arm`), a forward
    pre-hook takes the projection's input ``h [N, L, H]`` (whatever the architecture computed before
    it: BERT's dense/GELU/LayerNorm transform, DistilBERT's ``vocab_transform``/``activation``/
    ``vocab_layer_norm``, ModernBERT's ``head``, a final norm) and hands the module an empty batch;
    a forward hook then returns the projection of the rows at ``positions`` (``[M, V]``), or of all
    rows (``[N, L, V]``), evaluated ``block`` rows per call (:func:`~pit_sampler.positions.rowwise`).
    The model's own code after the projection (softcapping, logit scaling) runs on that result.

    So the ``H x V`` matmul, the bulk of a large-vocabulary head, runs on ``M`` rows only; the
    transform before it (``H x H`` per position) still runs on every position. Gathering right at
    the projection also keeps the two forms of the call identical up to it, and the fixed block
    makes a row's logits independent of how many rows are projected with it: the positions output
    equals the full output bit for bit. The values equal the bare model's up to the float rounding
    of the matmul. Outside an adapter call the hooks do nothing.
    """

    def __init__(self, module: nn.Linear, block: int = HEAD_BLOCK):
        if not isinstance(module, nn.Linear):
            raise TypeError(f"the output projection must be an nn.Linear, got {type(module).__name__}")
        if not (is_int(block) and block >= 1):
            raise ValueError(f"head_block must be an int >= 1, got {block!r}")
        self.module, self.block = module, block
        self.active, self.positions, self.rows, self._inputs = False, None, 0, None
        self.handles = (module.register_forward_pre_hook(self._before), module.register_forward_hook(self._after))

    def arm(self, positions: Tensor | None, rows: int) -> None:
        """Take over the projection's next calls: ``rows`` positions in all (``N * L``), of which
        ``positions`` are wanted (``None``: all)."""
        self.active, self.positions, self.rows = True, positions, rows

    def disarm(self) -> None:
        """Back to the plain module."""
        self.active, self.positions, self._inputs = False, None, None

    @classmethod
    def find(cls, model, block: int = HEAD_BLOCK) -> "OutputProjection | None":
        """Hooks on ``model.get_output_embeddings()`` if the model has one and it is an ``nn.Linear``, else ``None``."""
        get = getattr(model, "get_output_embeddings", None)
        module = get() if callable(get) else None
        return cls(module, block) if isinstance(module, nn.Linear) else None

    def _before(self, module, args):
        if not self.active:
            return None
        (h,) = args
        self._inputs = h
        return (h.new_empty(0, h.shape[-1]),)

    def _after(self, module, args, out):
        if not self.active:
            return None
        h, self._inputs = self._inputs, None
        rows = h.reshape(-1, h.shape[-1])
        if rows.shape[0] != self.rows:
            raise ValueError(
                f"HFMaskedLM: the output projection got {rows.shape[0]} rows, expected one per position "
                f"(N * L = {self.rows}); model_kwargs must not drop positions (e.g. logits_to_keep)"
            )
        if self.positions is None:
            return rowwise(module.forward, rows, self.block).view(*h.shape[:-1], module.out_features)
        return rowwise(module.forward, rows[self.positions], self.block)

    def remove(self) -> None:
        """Detach the hooks from the module, once the adapter is no longer used (its calls need them)."""
        for handle in self.handles:
            handle.remove()


class HFMaskedLM(Adapter):
    """A Hugging Face style masked LM: ``model(input_ids=x, **model_kwargs)`` returning ``.logits``
    (a ``ModelOutput``, any object with a ``logits`` attribute, or a dict with key ``"logits"``).

    Time-agnostic (BERT-style MLM heads, LLaDA). ``vocab_size`` defaults to ``model.config.vocab_size``
    when the model has one; a ``model.config.mask_token_id`` that differs from ``mask_id`` is an error.
    Put the model in eval mode (dropout off) yourself (:func:`resolve_sampler_kwargs` warns if not).

    ``tokenizer`` (a Hugging Face tokenizer, optional): ``mask_id`` defaults to its
    ``mask_token_id`` (given both, they must agree); a tokenizer with more tokens than the model has
    logits is an error (vocab mismatch); the ids the tokenizer does not have (a padded vocabulary:
    ModernBERT's logits are 50368 wide for 50280 tokens) and, with ``suppress_special`` (default
    ``True`` with a tokenizer), its special tokens other than the mask (``[CLS]``, ``[SEP]``,
    ``[PAD]``, ``[UNK]``, ...) are suppressed (``-inf``: never sampled), on top of ``suppress_ids``.
    ``keep_ids``: ids to leave out of that automatic set (e.g. ``[tok.eos_token_id]`` for a model that
    generates its own end of text, as LLaDA does).

    ``pad_id``: positions holding ``pad_id`` are padding. Every call then passes the model
    ``attention_mask = (x != pad_id)`` built from the rows of *that* call (the samplers call the model
    on changing subsets of rows, so a fixed mask cannot be right); padding is not the mask token, so
    the samplers keep it as it is and never generate there: put ``pad_id`` where there is nothing
    (a ragged batch padded on the right). ``"auto"`` (default): the tokenizer's ``pad_token_id`` when
    a tokenizer is given, else no attention mask. ``None``: no attention mask.

    ``model_kwargs``: fixed keyword arguments of every call. Tensors of one or more dimensions are
    rejected (a per-row input such as a fixed ``attention_mask`` would be misaligned with the rows of
    a call); so are ``input_ids`` and, with ``pad_id``, ``attention_mask``.

    ``schedule``: the schedule the model was trained with (LLaDA: ``"linear"``), handed to the
    sampler by :meth:`sampler_kwargs` / :func:`resolve_sampler_kwargs`.

    Positions: when the model's output embedding is an ``nn.Linear`` (:class:`OutputProjection`,
    ``self.projection``), the adapter computes the vocabulary projection itself, ``head_block``
    rows per call, and with ``positions`` only on the selected rows; otherwise (``projection`` is
    ``None``) it gathers the rows from the model's full logits.
    """

    def __init__(
        self,
        model: Callable,
        *,
        mask_id: int | None = None,
        tokenizer=None,
        vocab_size: int | None = None,
        pad_id: int | str | None = "auto",
        model_kwargs: dict | None = None,
        suppress_ids: Iterable[int] = (),
        suppress_special: bool | None = None,
        keep_ids: Iterable[int] = (),
        schedule: str | Schedule = "loglinear",
        head_block: int = HEAD_BLOCK,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        config = getattr(model, "config", None)
        if vocab_size is None and is_int(getattr(config, "vocab_size", None)):
            vocab_size = config.vocab_size
        if tokenizer is not None and not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        tok_mask = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
        if mask_id is None:
            mask_id = tok_mask if tok_mask is not None else getattr(config, "mask_token_id", None)
            if mask_id is None:
                raise ValueError(
                    "mask_id is needed: the tokenizer has no mask token and model.config no mask_token_id "
                    "(pass mask_id=..., e.g. LLaDA's 126336)"
                )
        elif is_int(tok_mask) and is_int(mask_id) and tok_mask != mask_id:
            raise ValueError(f"mask_id={mask_id}, but the tokenizer's mask_token_id={tok_mask}")
        config_mask = getattr(config, "mask_token_id", None)
        if is_int(config_mask) and config_mask != mask_id:
            raise ValueError(f"mask_id={mask_id}, but model.config.mask_token_id={config_mask}")
        if suppress_special is None:
            suppress_special = tokenizer is not None
        if not isinstance(suppress_special, bool):
            raise TypeError(f"suppress_special must be a bool, got {type(suppress_special).__name__}")
        if suppress_special and tokenizer is None:
            raise ValueError("suppress_special=True needs a tokenizer (it reads the tokenizer's special tokens)")
        keep_ids = set(keep_ids)
        automatic = []
        if tokenizer is not None:
            n_tok = len(tokenizer)
            if vocab_size is not None and n_tok > vocab_size:
                raise ValueError(
                    f"HFMaskedLM: vocab mismatch: the tokenizer has {n_tok} tokens, but the model has "
                    f"vocab_size={vocab_size} logits per position (is this the model's tokenizer?)"
                )
            if vocab_size is not None:
                automatic += range(n_tok, vocab_size)  # a padded vocabulary: ids the tokenizer does not have
            if suppress_special:
                automatic += [int(i) for i in getattr(tokenizer, "all_special_ids", ()) if is_int(i)]
        suppress = list(suppress_ids) + [i for i in automatic if i != mask_id and i not in keep_ids]
        suppress = list(dict.fromkeys(suppress))  # without repeats, in order
        if isinstance(pad_id, str):
            if pad_id != "auto":
                raise ValueError(f"pad_id must be an int, None or 'auto', got {pad_id!r}")
            pad_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad_id is not None:
            if not (is_int(pad_id) and pad_id >= 0):
                raise ValueError(f"pad_id must be an int >= 0, None or 'auto', got {pad_id!r}")
            if pad_id == mask_id:
                raise ValueError(f"pad_id={pad_id} is the mask id: padding must be a token the samplers keep")
            if vocab_size is not None and pad_id >= vocab_size:
                raise ValueError(f"pad_id={pad_id} is out of range for vocab_size={vocab_size}")
        model_kwargs = dict(model_kwargs or {})
        _check_model_kwargs(model_kwargs, pad_id)
        projection = OutputProjection.find(model, head_block)
        super().__init__(
            mask_id=mask_id,
            vocab_size=vocab_size,
            time_input="none",
            schedule=schedule,
            suppress_ids=suppress,
            model_positions=projection is not None,
        )
        self.model, self.model_kwargs, self.projection = model, model_kwargs, projection
        self.tokenizer, self.pad_id = tokenizer, None if pad_id is None else int(pad_id)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: torch.dtype | None = None, local_files_only: bool = False,
                        model_class=None, **kwargs) -> "HFMaskedLM":
        """Load ``AutoModelForMaskedLM`` (or ``model_class``) and ``AutoTokenizer`` from ``path`` (a
        folder or a hub name), put the model in eval mode (in ``dtype`` if given) and wrap it with its
        tokenizer (``kwargs`` go to the constructor). ``local_files_only=True``: no network."""
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        model_class = model_class or transformers.AutoModelForMaskedLM
        model = model_class.from_pretrained(path, local_files_only=local_files_only)
        if dtype is not None:
            model = model.to(dtype)
        return cls(model.eval(), tokenizer=tokenizer, **kwargs)

    def _call_model(self, x):
        kwargs = self.model_kwargs
        if self.pad_id is not None:  # this call's own rows: x == pad_id is padding
            kwargs = {**kwargs, "attention_mask": (x != self.pad_id).to(torch.int64)}
        return self._logits(self.model(input_ids=x, **kwargs))

    def _forward(self, x, time, positions):
        if self.projection is None:
            return self._call_model(x)
        self.projection.arm(positions, x.numel())
        try:
            return self._call_model(x)
        finally:
            self.projection.disarm()

    @staticmethod
    def _logits(out):
        if isinstance(out, dict) and "logits" in out:
            return out["logits"]
        if hasattr(out, "logits"):
            return out.logits
        raise TypeError(
            f"HFMaskedLM: the model returned {type(out).__name__} without .logits; "
            "wrap a model whose output has a logits field (or use CallableDenoiser)"
        )

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", pad_id={self.pad_id})"


def _check_model_kwargs(model_kwargs: dict, pad_id: int | None) -> None:
    """``model_kwargs`` holds no per-row input: no tensor of one or more dimensions (the samplers call
    the model on changing subsets of rows, so it would be misaligned), no ``input_ids``, and no
    ``attention_mask`` when the adapter builds one from ``pad_id``."""
    if "input_ids" in model_kwargs:
        raise ValueError("model_kwargs must not hold 'input_ids': the samplers pass them")
    if pad_id is not None and "attention_mask" in model_kwargs:
        raise ValueError(
            f"model_kwargs holds 'attention_mask', but pad_id={pad_id} is set: the adapter builds each "
            "call's attention mask from its own rows (x != pad_id); drop one of them"
        )
    for key, value in model_kwargs.items():
        if isinstance(value, Tensor) and value.dim() >= 1:
            hint = (" For padding pass pad_id=... (the adapter builds each call's attention_mask from the rows of "
                    "that call; pad positions are never generated)." if key == "attention_mask" else "")
            raise ValueError(
                f"model_kwargs[{key!r}] is a tensor of shape {tuple(value.shape)}: the samplers call the model on "
                f"changing subsets of rows (a PIT window, the unfinished samples), so a fixed per-row input "
                f"would be misaligned with them.{hint}"
            )


class SEDDScoreModel(CallableDenoiser):
    """A SEDD-style score model: ``model(x, sigma_bar) -> log-scores [N, L, V]``.

    ``s_v`` at a masked position is the log concentration ratio ``log p_t(x^{l <- v}) / p_t(x)``; the
    reverse rate from the mask to ``v`` is ``sigma(t) exp(s_v)`` (``sigma = -alpha'/alpha``), which the
    samplers compute with ``parametrization="score"`` (default here). The model gets the total noise
    ``sigma_bar(t) = -log alpha(t)`` (SEDD's convention) unless ``time_input`` says otherwise.
    ``positions`` as for :class:`CallableDenoiser` (``model(x, sigma_bar, positions=index) -> [M, V]``:
    SEDD's output layer, adaLN-modulated norm and linear map, is per position).
    """

    def __init__(
        self,
        model: Callable,
        *,
        mask_id: int,
        vocab_size: int | None = None,
        schedule: str | Schedule = "loglinear",
        time_input: str = "total_noise",
        parametrization: str = "score",
        positions: bool | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        super().__init__(
            model,
            mask_id=mask_id,
            vocab_size=vocab_size,
            time_input=time_input,
            schedule=schedule,
            parametrization=parametrization,
            positions=positions,
        )


#: the sampler arguments an adapter's :meth:`Adapter.sampler_kwargs` fixes
SAMPLER_SETTINGS = ("mask_id", "vocab_size", "schedule", "parametrization")


def _same_setting(key: str, given, setting) -> bool:
    if key == "schedule":
        a, b = get_schedule(given), get_schedule(setting)  # a bad name raises the usual ValueError
        return a is b or (type(a) is type(b) and vars(a) == vars(b))
    return given == setting


def _modules(obj, depth: int = 0) -> list[nn.Module]:
    """The ``nn.Module`` objects a denoiser wraps: itself, and through ``model``, ``fn`` and
    ``denoiser`` attributes (adapters, guidance, truncation wrappers), a few levels deep."""
    if isinstance(obj, nn.Module):
        return [obj]
    if depth >= 4:
        return []
    found = []
    for name in ("model", "fn", "denoiser"):
        inner = getattr(obj, "__dict__", {}).get(name)
        if inner is not None and inner is not obj:
            found += _modules(inner, depth + 1)
    return found


def resolve_sampler_kwargs(denoiser, given: dict | None = None, keys: Iterable[str] | None = None) -> dict:
    """The sampler's arguments: ``given`` (what the caller passed explicitly) merged with the
    denoiser's own settings (``denoiser.sampler_kwargs()``: an adapter's ``mask_id``, ``vocab_size``,
    ``schedule``, ``parametrization``; nothing for a plain callable).

    A setting the caller did not give (absent, or ``None``) is taken from the denoiser; one given with
    a different value is a ``ValueError`` naming the argument and both values (a schedule given by name
    equals the same schedule's instance). ``keys``: the settings to take (default all of
    :data:`SAMPLER_SETTINGS`; e.g. ``("mask_id", "vocab_size")`` for a sampler without a schedule).
    Warns (``UserWarning``) when a wrapped ``nn.Module`` (or one of its submodules) is in training mode:
    dropout makes every call random, so PIT no longer equals the sequential sample.

    A sampler calls it with the explicitly given arguments only (not its defaults):
    ``kwargs = resolve_sampler_kwargs(denoiser, given)``."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise TypeError(f"given must be a dict of sampler arguments, got {type(given).__name__}")
    keys = SAMPLER_SETTINGS if keys is None else tuple(keys)
    get = getattr(denoiser, "sampler_kwargs", None)
    settings = get() if callable(get) else {}
    if not isinstance(settings, dict):
        raise TypeError(f"{type(denoiser).__name__}.sampler_kwargs() must return a dict, got {type(settings).__name__}")
    merged = dict(given)
    for key in keys:
        value = settings.get(key)
        if value is None:
            continue
        if given.get(key) is None:
            merged[key] = value
        elif not _same_setting(key, given[key], value):
            raise ValueError(
                f"{key}={given[key]!r} was passed to the sampler, but the denoiser ({type(denoiser).__name__}) has "
                f"{key}={value!r}: sampler and denoiser must agree (leave {key} out to take the denoiser's)"
            )
    training = [m for module in _modules(denoiser) for m in module.modules() if m.training]
    if training:
        import warnings

        warnings.warn(
            f"the denoiser's model ({type(_modules(denoiser)[0]).__name__}) has {len(training)} module(s) in "
            "training mode (e.g. dropout): its outputs are random, so samples are not reproducible and PIT does "
            "not equal the sequential sample; call model.eval()",
            UserWarning,
            stacklevel=2,
        )
    return merged


def check_batch_invariance(denoiser: Callable, x: Tensor, t: Tensor) -> bool:
    """Whether ``denoiser(x, t)`` gives, for every row, exactly (bitwise) the logits of that row evaluated
    alone and inside the batch's second half: the condition under which :class:`~pit_sampler.PITSampler`
    reproduces :class:`~pit_sampler.TauLeapingSampler` bit for bit."""
    if not (isinstance(x, Tensor) and x.dim() == 2 and x.shape[0] >= 2):
        raise ValueError("check_batch_invariance needs x of shape [N, L] with N >= 2")
    with torch.no_grad():
        full = denoiser(x, t)
        half = x.shape[0] // 2
        if not torch.equal(denoiser(x[half:], t[half:]), full[half:]):
            return False
        return all(torch.equal(denoiser(x[i : i + 1], t[i : i + 1]), full[i : i + 1]) for i in range(x.shape[0]))
