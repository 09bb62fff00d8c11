"""Noise schedules of absorbing diffusion and the time grids the samplers step on.

A schedule gives ``alpha(t)``, the probability that a position is still clean at time ``t``
(``alpha(0) = 1``, decreasing), and from it

* ``masked(t) = 1 - alpha(t)``, the probability that a position is masked, in a form that does not
  cancel at small ``t`` (subclasses override it where ``1 - alpha`` loses digits);
* ``rate(t) = r(t) = -alpha'(t) / (1 - alpha(t))``: the total unmasking rate of a masked position
  (mean parametrization: a masked position jumps to ``v`` at rate ``r(t) p(v | x)``);
* ``sigma(t) = -alpha'(t) / alpha(t)``: the SEDD total noise rate, so that with the score
  parametrization the rate to ``v`` is ``sigma(t) exp(s_v)``;
* ``integral(t_hi, t_lo) = int_{t_lo}^{t_hi} r(t) dt = log((1 - alpha(t_hi)) / (1 - alpha(t_lo)))``.

All functions take and return float64 tensors (or Python floats).
"""

from __future__ import annotations

import math

import torch

from .validation import is_int, is_real


def _t(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule:
    """Base class: subclasses define ``alpha`` and ``alpha_prime``; the rest follows."""

    name = "schedule"

    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def alpha_prime(self, t) -> torch.Tensor:
        raise NotImplementedError

    def masked(self, t) -> torch.Tensor:
        """``1 - alpha(t)`` (subclasses give a cancellation-free form)."""
        return 1.0 - self.alpha(_t(t))

    def rate(self, t) -> torch.Tensor:
        t = _t(t)
        return -self.alpha_prime(t) / self.masked(t)

    def sigma(self, t) -> torch.Tensor:
        t = _t(t)
        return -self.alpha_prime(t) / self.alpha(t)

    def integral(self, t_hi, t_lo) -> torch.Tensor:
        return torch.log(self.masked(t_hi) / self.masked(t_lo))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LogLinear(Schedule):
    """SEDD/RADD: ``1 - alpha(t) = (1 - eps) t``, so ``r(t) = 1 / t`` and ``alpha(1) = eps > 0``."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        self.eps = eps

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * _t(t)

    def alpha_prime(self, t):
        return torch.full_like(_t(t), -(1.0 - self.eps))

    def masked(self, t):
        return (1.0 - self.eps) * _t(t)

    def __repr__(self):
        return f"LogLinear(eps={self.eps})"


class Linear(Schedule):
    """MDLM linear: ``alpha(t) = 1 - t`` (``r(t) = 1 / t``)."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - _t(t)

    def alpha_prime(self, t):
        return torch.full_like(_t(t), -1.0)

    def masked(self, t):
        return _t(t).clone()


class Cosine(Schedule):
    """Cosine: ``alpha(t) = cos(pi t / 2)`` (``r(t) = (pi/2) sin / (1 - cos)``, about ``2 / t`` near 0).

    ``1 - cos(pi t / 2)`` cancels at small ``t`` (off by 1e-3 at ``t = 1e-7``), so it is computed as
    ``2 sin^2(pi t / 4)``, accurate to rounding for every ``t``."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * _t(t))

    def alpha_prime(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * _t(t))

    def masked(self, t):
        return 2.0 * torch.sin(0.25 * math.pi * _t(t)) ** 2


SCHEDULES = {"loglinear": LogLinear, "linear": Linear, "cosine": Cosine}


def get_schedule(schedule: str | Schedule) -> Schedule:
    """A :class:`Schedule` from an instance or one of the names ``loglinear``, ``linear``, ``cosine``."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]()
    raise ValueError(f"schedule must be a Schedule or one of {sorted(SCHEDULES)}, got {schedule!r}")


GRIDS = ("uniform", "geometric", "cosine")


def time_grid(num_steps: int, grid: str = "cosine", t_max: float = 1.0, t_min: float = 1e-3) -> torch.Tensor:
    """float64 ``[num_steps + 1]``: ``t_0 = t_max > t_1 > ... > t_N = t_min``; with ``s_j = j / N``:

    * ``uniform``: evenly spaced in ``t``, ``t_j = t_max + (t_min - t_max) s_j``;
    * ``geometric``: evenly spaced in ``log t`` (constant ``Delta / t``),
      ``t_j = t_max (t_min / t_max)^{s_j}``: large steps while most positions are masked, small ones
      near ``t -> 0`` where ``r(t)`` blows up;
    * ``cosine`` (the samplers' default): ``t_j = t_min + (t_max - t_min) cos(pi s_j / 2)``. With the
      ``loglinear`` and ``linear`` schedules the masked fraction ``1 - alpha(t)`` is proportional to
      ``t``, so it follows MaskGIT's cosine masking schedule ``cos(pi s / 2)``: the steps are small
      while most positions are masked (``Delta_j`` grows like ``sin(pi s_j / 2)``), where positions
      unmasked in the same step are most dependent, and the last step is about ``pi / 2`` times a
      uniform one. docs/quality.md has the measurements behind the default.
    """
    if not (is_int(num_steps) and num_steps >= 1):
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not (is_real(t_max) and 0.0 < t_max <= 1.0):
        raise ValueError(f"t_max must lie in (0, 1], got {t_max!r}")
    if not (is_real(t_min) and 0.0 < t_min < t_max):
        raise ValueError(f"t_min must lie in (0, t_max) = (0, {t_max}), got {t_min!r}")
    num_steps, t_max, t_min = int(num_steps), float(t_max), float(t_min)
    j = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    if grid == "uniform":
        ts = t_max + (t_min - t_max) * j
    elif grid == "geometric":
        ts = t_max * (t_min / t_max) ** j
    elif grid == "cosine":
        ts = t_min + (t_max - t_min) * torch.cos(0.5 * math.pi * j)
    else:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    ts[0], ts[-1] = t_max, t_min
    return ts
