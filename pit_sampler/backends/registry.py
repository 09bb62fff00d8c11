"""The backend registry: which implementation runs each op, chosen at run time.

A :class:`Backend` is a set of kernels (op name -> callable) and a ``supports(device)`` test. The
ops (:mod:`pit_sampler.ops`: ``sweep``, ``unmask_table``; :mod:`pit_sampler.maskgit_ops`:
``maskgit_sweep``) ask :func:`kernel` for the implementation to call, inside their op bodies, so
the choice also applies inside compiled graphs. The backend for a device is, in this order:

1. :func:`use_backend` (context manager) or :func:`set_backend`, else
2. the environment variable ``PIT_SAMPLER_BACKEND`` (``reference``, ``native``, ``triton``), read
   once, when this module is first imported, else
3. ``auto``: CUDA -> triton, then native, then reference; CPU -> native, then reference.

A backend without a kernel for an op on a device (:attr:`Backend.has`: e.g. an extension built
before that kernel existed) runs the reference for that op, and :func:`last_backend` says so.
The backends register themselves on import (:mod:`pit_sampler.backends`); this module imports
nothing of the package, so nothing imports back into it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch


def _always(op: str, device: torch.device) -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """One implementation of the ops: ``kernels`` maps op names to callables; ``supports(device)``
    says where the backend can run; ``has(op, device)`` whether it has that op's kernel there."""

    name: str
    kernels: dict[str, Callable]
    supports: Callable[[torch.device], bool]
    has: Callable[[str, torch.device], bool] = _always


_BACKENDS: dict[str, Backend] = {}
_AUTO_ORDER = {"cuda": ("triton", "native", "reference"), "cpu": ("native", "reference")}
_ENVIRONMENT = os.environ.get("PIT_SAMPLER_BACKEND") or None  # read once
_forced: list[str | None] = [None]
_last: dict[str, str] = {}


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend."""
    _BACKENDS[backend.name] = backend


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device``."""
    device = torch.device(device)
    return [name for name, b in _BACKENDS.items() if b.supports(device)]


def set_backend(name: str | None) -> None:
    """Force a backend for every op call (``None`` or ``"auto"``: the environment, else automatic)."""
    if name not in (None, "auto") and name not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_BACKENDS)}, got {name!r}")
    _forced[0] = None if name == "auto" else name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Context manager form of :func:`set_backend`."""
    previous = _forced[0]
    set_backend(name)
    try:
        yield
    finally:
        _forced[0] = previous


def last_backend(op: str = "sweep") -> str | None:
    """The backend that ran ``op`` (``"sweep"``, ``"unmask_table"``, ``"maskgit_sweep"``) most recently."""
    return _last.get(op)


def backend_for(device: torch.device | str) -> str:
    """The backend the ops will use for tensors on ``device`` under the current settings."""
    device = torch.device(device)
    name = _forced[0] or _ENVIRONMENT or "auto"
    if name != "auto":
        if name not in _BACKENDS:
            source = "backend" if _forced[0] else "PIT_SAMPLER_BACKEND"
            raise ValueError(f"{source} must be 'auto' or one of {sorted(_BACKENDS)}, got {name!r}")
        if not _BACKENDS[name].supports(device):
            raise ValueError(
                f"backend {name!r} cannot run on {device.type} tensors (available: {available_backends(device)})"
            )
        return name
    for candidate in _AUTO_ORDER.get(device.type, ("reference",)):
        if candidate in _BACKENDS and _BACKENDS[candidate].supports(device):
            return candidate
    return "reference"


def kernel(op: str, device: torch.device) -> Callable:
    """The implementation of ``op`` to run on ``device`` now (recorded for :func:`last_backend`)."""
    name = backend_for(device)
    backend = _BACKENDS[name]
    if op not in backend.kernels or not backend.has(op, device):
        name, backend = "reference", _BACKENDS["reference"]
    _last[op] = name
    return backend.kernels[op]


def implementation(name: str, op: str) -> Callable:
    """Backend ``name``'s kernel of ``op``, called directly (the differential tests compare them)."""
    return _BACKENDS[name].kernels[op]
