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
  object (or dict) with ``.logits``: masked-LM heads (BERT-style) and LLaDA, time-agnostic. With
  positions, the vocabulary projection (``model.get_output_embeddings()``) runs only on the selected
  hidden states (:class:`OutputProjection`).
* :class:`SEDDScoreModel`: SEDD-style ``model(x, sigma_bar) -> log-scores`` ``s_v``; the sampler
  must run with ``parametrization="score"`` (the rate to ``v`` is ``sigma(t) exp(s_v)``).
  ``parametrization="mean"`` is also allowed: for an exact model ``exp(s_v) = alpha / (1 - alpha)
  p(v | x)`` (RADD), so the log-scores are logits of the mean parametrization up to a constant per
  position; this swaps the model's own total jump rate for the schedule's ``r(t)`` and enables
  skip-inactive steps.

Every adapter has :meth:`Adapter.sampler_kwargs` (``mask_id``, ``vocab_size``, ``schedule``,
``parametrization``: pass them to the sampler so both agree), runs the model under
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
from .validation import is_int

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

        An infinite value (``alpha(t) = 0``) is an error in eager mode; under ``torch.compile`` the
        check would read data, so it is skipped there (the model then sees ``inf``)."""
        if self.time_input == "t":
            return t
        if self.time_input == "none":
            return None
        t64 = t.detach().to(torch.float64)
        if self.time_input == "total_noise":
            value = -torch.log(self.schedule.alpha(t64.cpu()))
        else:
            value = self.schedule.sigma(t64.cpu())
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"time_input={self.time_input!r} is infinite for t={float(t64.max()):g} under {self.schedule!r} "
                "(alpha(t) = 0 there); sample with a smaller t_max"
            )
        return value.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float32)

    def __call__(self, x: Tensor, t: Tensor, positions: Tensor | None = None) -> Tensor:
        """Logits ``[N, L, V]``, or ``[M, V]`` at the flat indices ``positions [M]`` into ``x.view(-1)``
        (bit for bit the rows of the full output, when the model computes them the same way)."""
        if not (isinstance(x, Tensor) and x.dim() == 2 and not x.is_floating_point()):
            raise TypeError(f"x must be an integer tensor [N, L], got {getattr(x, 'dtype', type(x).__name__)}")
        if not (isinstance(t, Tensor) and t.shape == (x.shape[0],)):
            raise ValueError(f"t must be a tensor of shape [{x.shape[0]}], got {tuple(getattr(t, 'shape', ()))}")
        if positions is not None:
            check_positions(positions, x)
        asked = positions if self.model_positions else None  # what the model itself computes
        with torch.no_grad():
            logits = self._check(self._forward(x, self._time(t), asked), x, asked)
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
    Put the model in eval mode (dropout off) yourself; LLaDA-style models need no attention mask.

    Positions: when the model's output embedding is an ``nn.Linear`` (:class:`OutputProjection`,
    ``self.projection``), the adapter computes the vocabulary projection itself, ``head_block``
    rows per call, and with ``positions`` only on the selected rows; otherwise (``projection`` is
    ``None``) it gathers the rows from the model's full logits.
    """

    def __init__(
        self,
        model: Callable,
        *,
        mask_id: int,
        vocab_size: int | None = None,
        model_kwargs: dict | None = None,
        suppress_ids: Iterable[int] = (),
        head_block: int = HEAD_BLOCK,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        config = getattr(model, "config", None)
        if vocab_size is None and is_int(getattr(config, "vocab_size", None)):
            vocab_size = config.vocab_size
        config_mask = getattr(config, "mask_token_id", None)
        if is_int(config_mask) and config_mask != mask_id:
            raise ValueError(f"mask_id={mask_id}, but model.config.mask_token_id={config_mask}")
        projection = OutputProjection.find(model, head_block)
        super().__init__(
            mask_id=mask_id,
            vocab_size=vocab_size,
            time_input="none",
            suppress_ids=suppress_ids,
            model_positions=projection is not None,
        )
        self.model, self.model_kwargs, self.projection = model, dict(model_kwargs or {}), projection

    def _forward(self, x, time, positions):
        if self.projection is None:
            return self._logits(self.model(input_ids=x, **self.model_kwargs))
        self.projection.arm(positions, x.numel())
        try:
            return self._logits(self.model(input_ids=x, **self.model_kwargs))
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
