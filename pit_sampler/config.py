"""Sampler configuration: the constructor arguments of the samplers, checked once, in one place.

:class:`SamplerConfig` holds what every sampler takes (tau-leaping, PIT, MaskGIT): the mask token,
the number of steps, the draw temperature, the vocabulary size if known, the memory cap on rows per
call, the progress bar, ``torch.compile`` and the device-side options (``sync_every``,
``cuda_graph``). :class:`TauLeapingConfig` adds the absorbing-diffusion process of
:class:`~pit_sampler.TauLeapingSampler` and :class:`~pit_sampler.PITSampler` (schedule, jump rule,
time grid, final step, parametrization, skip-inactive, top-k/top-p); :class:`PITConfig` the Picard
settings (window, tol, mode, max_iters), so one config describes a whole run; :class:`MaskGITConfig`
the k-per-step process and its Picard settings. All are frozen: a sampler's settings cannot drift
after it is made.

A sampler takes its arguments as keywords (``PITSampler(den, mask_id=..., num_steps=...)``) or as a
config (``PITSampler(den, config=cfg)``, keywords then override fields). Settings a denoiser adapter
carries (``mask_id``, ``vocab_size``, ``schedule``, ``parametrization``) fill in what is not given and
must agree with what is (:func:`pit_sampler.adapters.resolve_sampler_kwargs`).
Every field is checked in ``__post_init__``; a bad value raises ``ValueError``/``TypeError`` naming it.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch

from .maskgit_reference import ORDERS as MASKGIT_ORDERS
from .rules import RULES
from .schedules import GRIDS, Schedule, get_schedule, time_grid
from .truncation import check_truncation
from .validation import check_temperature, is_int, is_real

SOLVERS = ("euler", "trapezoidal")

#: The most steps ``num_steps`` may ask for. A tau-leaping sampler builds its time grid and jump tables
#: (:func:`pit_sampler.schedules.time_grid`, :func:`pit_sampler.rules.step_tables`) with one row per
#: step: at ``2**20`` steps they keep about 20 MiB (36 MiB on the uniform grid) and take about 0.1 s
#: and 90 MiB (160 MiB uniform) at their peak to build (measured on a 2-core CPU with torch 2.13;
#: ``2**22`` steps: 1 s and 340 MiB). The jump tables also quantise each step's
#: probabilities to ``2**-32``, an error that grows with the steps (at most ``N * 2**-32`` over a run:
#: ``2**-12`` at the bound).
MAX_STEPS = 2**20
#: ``torch.compile``'s ``mode`` values
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(compile) -> None:
    """``compile`` is a bool or a dict of ``torch.compile`` keyword arguments: keys among its
    parameters, ``mode`` in :data:`COMPILE_MODES` (and not with ``options``), ``options`` a dict,
    ``backend`` a callable or a registered name (``torch._dynamo.list_backends(exclude_tags=())``),
    ``fullgraph`` a bool, ``dynamic`` a bool or ``None``. Checked here, before ``torch.compile`` sees it."""
    if isinstance(compile, bool):
        return
    if not isinstance(compile, dict):
        raise TypeError(f"compile must be a bool or a dict of torch.compile options, got {type(compile).__name__}")
    known = [name for name in inspect.signature(torch.compile).parameters if name != "model"]
    unknown = [key for key in compile if key not in known]
    if unknown:
        raise ValueError(f"compile: {unknown} are not torch.compile options (those are {known})")
    if compile.get("mode") not in COMPILE_MODES:
        raise ValueError(f"compile: mode must be one of {COMPILE_MODES}, got {compile['mode']!r}")
    if not isinstance(compile.get("options", {}), (dict, type(None))):
        raise TypeError(f"compile: options must be a dict, got {type(compile['options']).__name__}")
    if compile.get("mode") is not None and compile.get("options") is not None:
        raise ValueError("compile: give mode or options, not both (torch.compile takes one)")
    backend = compile.get("backend")
    if isinstance(backend, str):
        import torch._dynamo as dynamo  # about a second to import: only for a named backend

        names = dynamo.list_backends(exclude_tags=())
        if backend not in names:
            raise ValueError(f"compile: backend {backend!r} is not a torch.compile backend (those are {names})")
    elif not (backend is None or callable(backend)):
        raise TypeError(f"compile: backend must be a name or a callable, got {type(backend).__name__}")
    if not isinstance(compile.get("fullgraph", False), bool):
        raise TypeError(f"compile: fullgraph must be a bool, got {compile['fullgraph']!r}")
    if not isinstance(compile.get("dynamic"), (bool, type(None))):
        raise TypeError(f"compile: dynamic must be a bool or None, got {compile['dynamic']!r}")


@dataclass(frozen=True)
class SamplerConfig:
    """What every sampler takes.

    ``mask_id``: the absorbing token; ``num_steps``: steps ``N`` of the process (at most
    :data:`MAX_STEPS`, the memory of the per-step tables); ``temperature``:
    logits are scaled by ``1 / temperature`` before a draw (``0``: greedy); ``vocab_size``: ``V`` if
    known (else learned from the first call); ``max_rows``: the most rows of one denoiser call (a
    memory budget; ``None``: no cap); ``progress``: a tqdm bar; ``compile``: ``True`` or a dict of
    ``torch.compile`` options, to compile a round with ``fullgraph=True`` (:func:`check_compile`);
    ``sync_every``: rounds between host polls (``None``: 1 on the CPU, 8 on an accelerator);
    ``cuda_graph``: capture a round as a CUDA graph and replay it."""

    mask_id: int
    num_steps: int
    temperature: float = 1.0
    vocab_size: int | None = None
    max_rows: int | None = None
    progress: bool = False
    compile: bool | dict = False
    sync_every: int | None = None
    cuda_graph: bool = False

    def __post_init__(self):
        if not (is_int(self.mask_id) and self.mask_id >= 0):
            raise ValueError(f"mask_id must be an int >= 0, got {self.mask_id!r}")
        if not (is_int(self.num_steps) and 1 <= self.num_steps <= MAX_STEPS):
            raise ValueError(f"num_steps must be an int in [1, MAX_STEPS={MAX_STEPS}], got {self.num_steps!r}")
        if not (self.vocab_size is None or (is_int(self.vocab_size) and self.vocab_size > self.mask_id)):
            raise ValueError(f"vocab_size must be an int > mask_id={self.mask_id}, got {self.vocab_size!r}")
        if not (self.max_rows is None or (is_int(self.max_rows) and self.max_rows >= 1)):
            raise ValueError(f"max_rows must be None or an int >= 1, got {self.max_rows!r}")
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be a bool, got {type(self.progress).__name__}")
        check_compile(self.compile)
        if not (self.sync_every is None or (is_int(self.sync_every) and self.sync_every >= 1)):
            raise ValueError(f"sync_every must be None or an int >= 1, got {self.sync_every!r}")
        if not isinstance(self.cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool, got {type(self.cuda_graph).__name__}")
        self._set(mask_id=int(self.mask_id), num_steps=int(self.num_steps),
                  temperature=float(check_temperature(self.temperature)),
                  vocab_size=None if self.vocab_size is None else int(self.vocab_size),
                  max_rows=None if self.max_rows is None else int(self.max_rows),
                  sync_every=None if self.sync_every is None else int(self.sync_every))

    def _set(self, **values) -> None:
        """Store normalised values (``int`` for numpy ints, ...) in the frozen instance."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def arguments(cls, config: "SamplerConfig | None", overrides: dict, family: type | None = None) -> dict:
        """The fields a sampler is built from: ``config``'s fields that ``cls`` has (every one counts as
        given) with the keyword ``overrides`` on top; only ``overrides`` when there is no config.
        ``config`` must be a ``family`` (default ``cls``): e.g. a :class:`TauLeapingConfig` serves
        both :class:`~pit_sampler.TauLeapingSampler` and :class:`~pit_sampler.PITSampler`, and a
        :class:`PITConfig` gives the sequential sampler its process (its window settings aside)."""
        if config is None:
            return dict(overrides)
        family = family or cls
        if not isinstance(config, family):
            raise TypeError(f"config must be a {family.__name__}, got {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        own = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names}
        return {**own, **overrides}


@dataclass(frozen=True)
class TauLeapingConfig(SamplerConfig):
    """:class:`SamplerConfig` and the absorbing process of the tau-leaping samplers.

    ``schedule``: the noise schedule (a name or a :class:`~pit_sampler.Schedule`); ``rule``: how jump
    counts unmask (:data:`pit_sampler.RULES`); ``grid``, ``t_max``, ``t_min``: the time grid
    (:func:`pit_sampler.time_grid`); ``final``: ``"sample"`` or ``"argmax"`` at the last step;
    ``parametrization``: ``"mean"`` (the model gives ``p(x_0 | x_t)``) or ``"score"``;
    ``skip_inactive`` (``None``: on for the mean parametrization and the first-order solver): run only
    the steps at which a position unmasks; ``top_k``, ``top_p``: truncate the rows a token is drawn
    from, as Hugging Face defines them (:func:`pit_sampler.truncation.truncate_logits`; mean
    parametrization); ``solver``: ``"euler"`` (first-order tau-leaping, the default) or
    ``"trapezoidal"`` (the second-order theta-trapezoidal method, two model evaluations per step,
    :mod:`pit_sampler.steps.trapezoidal`; mean parametrization, rules ``reject``/``first``) with
    ``theta`` in ``(0, 1)``."""

    schedule: str | Schedule = "loglinear"
    rule: str = "reject"
    grid: str = "cosine"
    t_max: float = 1.0
    t_min: float = 1e-3
    final: str = "sample"
    parametrization: str = "mean"
    skip_inactive: bool | None = None
    top_k: int | None = None
    top_p: float | None = None
    solver: str = "euler"
    theta: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if self.final not in ("sample", "argmax"):
            raise ValueError(f"final must be 'sample' or 'argmax', got {self.final!r}")
        if self.parametrization not in ("mean", "score"):
            raise ValueError(f"parametrization must be 'mean' or 'score', got {self.parametrization!r}")
        if not (self.skip_inactive is None or isinstance(self.skip_inactive, bool)):
            raise TypeError(f"skip_inactive must be None or a bool, got {type(self.skip_inactive).__name__}")
        if self.score and self.skip_inactive:
            raise ValueError("skip_inactive needs the mean parametrization (score rates depend on the model)")
        top_k, top_p = check_truncation(self.top_k, self.top_p)
        if self.score and (top_k is not None or top_p is not None):
            raise ValueError("top_k/top_p need the mean parametrization (score logits also set the jump rates)")
        get_schedule(self.schedule)  # a known name or a Schedule
        time_grid(self.num_steps, self.grid, self.t_max, self.t_min)  # checks t_max, t_min
        self._check_solver(top_k, top_p)
        self._set(top_k=top_k, top_p=top_p, theta=float(self.theta))

    def _check_solver(self, top_k, top_p) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not (is_real(self.theta) and 0.0 < self.theta < 1.0):
            raise ValueError(f"theta must lie in (0, 1), got {self.theta!r}")
        if self.solver != "trapezoidal":
            return
        if self.score or self.rule == "tweedie":
            raise ValueError("solver='trapezoidal' needs the mean parametrization and rule 'reject' or 'first' "
                             f"(got parametrization={self.parametrization!r}, rule={self.rule!r})")
        if self.skip_inactive:
            raise ValueError("skip_inactive needs the first-order solver (the trapezoidal rates depend on the model)")
        if top_k is not None or top_p is not None:
            raise ValueError("top_k/top_p apply to the first-order solver (the trapezoidal draw combines two rows)")

    @property
    def skips_inactive(self) -> bool:
        """``skip_inactive`` resolved: its default (``None``) is on for the mean parametrization with the
        first-order solver (elsewhere the jump rates depend on the model)."""
        if self.skip_inactive is None:
            return not (self.score or self.solver == "trapezoidal")
        return self.skip_inactive

    @property
    def score(self) -> bool:
        """Whether the model gives scores (concrete-score ratios) rather than ``p(x_0 | x_t)``."""
        return self.parametrization == "score"


def check_picard(window, tol, mode: str, max_iters) -> None:
    """The Picard settings of a run (:mod:`pit_sampler.engine.accept`): ``window`` ``"auto"`` or an
    int >= 1, ``tol`` in ``[0, 1)``, ``mode`` ``"exact"`` or ``"fixed"`` (a fixed window and
    ``max_iters >= 1``; ``max_iters`` only there)."""
    auto = isinstance(window, str) and window == "auto"
    if not (auto or (is_int(window) and window >= 1)):
        raise ValueError(f"window must be 'auto' or an int >= 1, got {window!r}")
    if mode not in ("exact", "fixed"):
        raise ValueError(f"mode must be 'exact' or 'fixed', got {mode!r}")
    if auto and mode == "fixed":
        raise ValueError("mode='fixed' runs blocks of a fixed window: give window an int, not 'auto'")
    if not (is_real(tol) and 0.0 <= tol < 1.0):
        raise ValueError(f"tol must lie in [0, 1), got {tol!r}")
    if mode == "fixed" and not (is_int(max_iters) and max_iters >= 1):
        raise ValueError(f"mode='fixed' needs max_iters, an int >= 1, got {max_iters!r}")
    if mode == "exact" and max_iters is not None:
        raise ValueError("max_iters applies to mode='fixed' (exact mode iterates until each slice converges)")


@dataclass(frozen=True)
class PITConfig(TauLeapingConfig):
    """:class:`TauLeapingConfig` and the Picard settings of :class:`~pit_sampler.PITSampler`, so that
    one config describes a whole run: ``window`` (``"auto"`` or an int), ``tol``, ``mode``
    (``"exact"``/``"fixed"``) and ``max_iters`` (:func:`check_picard`)."""

    window: int | str = "auto"
    tol: float = 0.0
    mode: str = "exact"
    max_iters: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_picard(self.window, self.tol, self.mode, self.max_iters)
        self._set(window=self.window if self.window == "auto" else int(self.window), tol=float(self.tol))


@dataclass(frozen=True)
class MaskGITConfig(SamplerConfig):
    """:class:`SamplerConfig` and the k-per-step process of :class:`~pit_sampler.MaskGITSampler`:
    ``order`` (:data:`pit_sampler.maskgit_reference.ORDERS`), ``unmask_schedule`` (``linear`` or
    ``cosine``), ``block_length`` (``None`` or an int >= 1), and the Picard settings ``window``
    (default 1: sequential), ``tol``, ``mode``, ``max_iters`` (:func:`check_picard`)."""

    order: str = "confidence"
    unmask_schedule: str = "linear"
    block_length: int | None = None
    window: int | str = 1
    tol: float = 0.0
    mode: str = "exact"
    max_iters: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.order not in MASKGIT_ORDERS:
            raise ValueError(f"order must be one of {MASKGIT_ORDERS}, got {self.order!r}")
        if self.unmask_schedule not in ("linear", "cosine"):
            raise ValueError(f"unmask_schedule must be one of ('linear', 'cosine'), got {self.unmask_schedule!r}")
        if not (self.block_length is None or (is_int(self.block_length) and self.block_length >= 1)):
            raise ValueError(f"block_length must be None or an int >= 1, got {self.block_length!r}")
        check_picard(self.window, self.tol, self.mode, self.max_iters)
        self._set(window=self.window if self.window == "auto" else int(self.window), tol=float(self.tol),
                  block_length=None if self.block_length is None else int(self.block_length))
