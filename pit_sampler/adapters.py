"""Adapters: wrap an existing model as a denoiser for the samplers, with validation.

The samplers call ``denoiser(x: LongTensor[N, L], t: FloatTensor[N]) -> logits [N, L, V]``
(docs/sampler-spec.md section 5; ``V`` counts the mask token). Models in the wild differ in what
they take and return; an adapter converts, and checks every output so that a misconfiguration fails
at the first call with an error naming the problem rather than producing garbage samples:

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
  object (or dict) with ``.logits``: masked-LM heads (BERT-style) and LLaDA, time-agnostic.
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

Exactness: PIT equals the sequential sample bit for bit only if a row's logits do not depend on
the other rows of the batch. :func:`check_batch_invariance` tests a denoiser for that.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from .schedules import Schedule, get_schedule

TIME_INPUTS = ("t", "none", "total_noise", "noise_rate")
PARAMETRIZATIONS = ("mean", "score")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Adapter:
    """Base class: validation, time conversion and output checks; subclasses define :meth:`_forward`."""

    def __init__(
        self,
        *,
        mask_id: int,
        vocab_size: int | None = None,
        time_input: str = "t",
        schedule: str | Schedule = "loglinear",
        parametrization: str = "mean",
        suppress_ids: Iterable[int] = (),
    ):
        if not (_is_int(mask_id) and mask_id >= 0):
            raise ValueError(f"mask_id must be an int >= 0, got {mask_id!r}")
        if not (vocab_size is None or (_is_int(vocab_size) and vocab_size > mask_id)):
            raise ValueError(f"vocab_size must be an int > mask_id={mask_id} (V counts the mask token), got {vocab_size!r}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        suppress_ids = tuple(suppress_ids)
        for i in suppress_ids:
            if not (_is_int(i) and i >= 0 and i != mask_id and (vocab_size is None or i < vocab_size)):
                raise ValueError(f"suppress_ids must be token ids in [0, vocab_size) other than mask_id, got {i!r}")
        self.mask_id, self.vocab_size = mask_id, vocab_size
        self.time_input, self.schedule = time_input, get_schedule(schedule)
        self.parametrization, self.suppress_ids = parametrization, suppress_ids

    def _forward(self, x: Tensor, time: Tensor | None):
        raise NotImplementedError

    def _time(self, t: Tensor) -> Tensor | None:
        """What the model takes for time: ``t``, nothing, ``sigma_bar(t)`` or ``sigma(t)`` (computed in float64)."""
        if self.time_input == "t":
            return t
        if self.time_input == "none":
            return None
        t64 = t.detach().to(torch.float64)
        if self.time_input == "total_noise":
            value = -torch.log(self.schedule.alpha(t64.cpu()))
        else:
            value = self.schedule.sigma(t64.cpu())
        if not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"time_input={self.time_input!r} is infinite for t={float(t64.max()):g} under {self.schedule!r} "
                "(alpha(t) = 0 there); sample with a smaller t_max"
            )
        return value.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float32)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if not (isinstance(x, Tensor) and x.dim() == 2 and not x.is_floating_point()):
            raise TypeError(f"x must be an integer tensor [N, L], got {getattr(x, 'dtype', type(x).__name__)}")
        if not (isinstance(t, Tensor) and t.shape == (x.shape[0],)):
            raise ValueError(f"t must be a tensor of shape [{x.shape[0]}], got {tuple(getattr(t, 'shape', ()))}")
        with torch.no_grad():
            out = self._forward(x, self._time(t))
        logits = self._check(out, x)
        if self.suppress_ids:
            logits = logits.clone()
            logits[..., list(self.suppress_ids)] = -torch.inf
        return logits

    def _check(self, out, x: Tensor) -> Tensor:
        N, L = x.shape
        what = type(self).__name__
        if not isinstance(out, Tensor):
            raise TypeError(f"{what}: the model returned {type(out).__name__}, expected a tensor of logits [N, L, V]")
        if not out.is_floating_point():
            raise TypeError(f"{what}: the model returned {out.dtype} values, expected floating-point logits")
        if not (out.dim() == 3 and out.shape[0] == N and out.shape[1] == L):
            raise ValueError(
                f"{what}: the model returned shape {tuple(out.shape)}, expected [N, L, V] = [{N}, {L}, V] "
                "(one row of logits per position)"
            )
        V = out.shape[2]
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
        """Run the model once on an all-masked ``[batch, length]`` input at ``t`` from 1 down to 0.5 and
        return ``V``: a misconfiguration shows up here, before a long sampling run."""
        x = torch.full((batch, length), self.mask_id, dtype=torch.int64, device=device)
        t = torch.linspace(1.0, 0.5, batch, device=device)
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
    """

    def __init__(self, fn: Callable, *, mask_id: int, vocab_size: int | None = None, time_input: str = "t", **kwargs):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        super().__init__(mask_id=mask_id, vocab_size=vocab_size, time_input=time_input, **kwargs)
        self.fn = fn

    def _forward(self, x, time):
        return self.fn(x) if time is None else self.fn(x, time)


class HFMaskedLM(Adapter):
    """A Hugging Face style masked LM: ``model(input_ids=x, **model_kwargs)`` returning ``.logits``
    (a ``ModelOutput``, any object with a ``logits`` attribute, or a dict with key ``"logits"``).

    Time-agnostic (BERT-style MLM heads, LLaDA). ``vocab_size`` defaults to ``model.config.vocab_size``
    when the model has one; a ``model.config.mask_token_id`` that differs from ``mask_id`` is an error.
    Put the model in eval mode (dropout off) yourself; LLaDA-style models need no attention mask.
    """

    def __init__(
        self,
        model: Callable,
        *,
        mask_id: int,
        vocab_size: int | None = None,
        model_kwargs: dict | None = None,
        suppress_ids: Iterable[int] = (),
    ):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        config = getattr(model, "config", None)
        if vocab_size is None and _is_int(getattr(config, "vocab_size", None)):
            vocab_size = config.vocab_size
        config_mask = getattr(config, "mask_token_id", None)
        if _is_int(config_mask) and config_mask != mask_id:
            raise ValueError(f"mask_id={mask_id}, but model.config.mask_token_id={config_mask}")
        super().__init__(mask_id=mask_id, vocab_size=vocab_size, time_input="none", suppress_ids=suppress_ids)
        self.model, self.model_kwargs = model, dict(model_kwargs or {})

    def _forward(self, x, time):
        out = self.model(input_ids=x, **self.model_kwargs)
        if isinstance(out, dict) and "logits" in out:
            return out["logits"]
        if hasattr(out, "logits"):
            return out.logits
        raise TypeError(
            f"HFMaskedLM: the model returned {type(out).__name__} without .logits; "
            "wrap a model whose output has a logits field (or use CallableDenoiser)"
        )


class SEDDScoreModel(Adapter):
    """A SEDD-style score model: ``model(x, sigma_bar) -> log-scores [N, L, V]``.

    ``s_v`` at a masked position is the log concentration ratio ``log p_t(x^{l <- v}) / p_t(x)``; the
    reverse rate from the mask to ``v`` is ``sigma(t) exp(s_v)`` (``sigma = -alpha'/alpha``), which the
    samplers compute with ``parametrization="score"`` (default here). The model gets the total noise
    ``sigma_bar(t) = -log alpha(t)`` (SEDD's convention) unless ``time_input`` says otherwise.
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
    ):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        super().__init__(
            mask_id=mask_id,
            vocab_size=vocab_size,
            time_input=time_input,
            schedule=schedule,
            parametrization=parametrization,
        )
        self.model = model

    def _forward(self, x, time):
        return self.model(x) if time is None else self.model(x, time)


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
