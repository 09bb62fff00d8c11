"""Argument checks shared by the ops and the samplers: one place for each rule, one message style.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad value)
naming the argument. ``bool`` is never accepted where an integer or a float is meant, and numpy
scalars are accepted wherever the Python type is (they are ``numbers.Integral``/``numbers.Real``;
``numpy.bool_`` is neither).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers

import numpy
import torch

FLT_MAX = 3.4028234663852886e38


def is_int(v) -> bool:
    """An integer that is not a ``bool`` (Python or numpy)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A real number that is not a ``bool`` (Python or numpy)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


_CHECKED = contextvars.ContextVar("pit_sampler_inputs_checked", default=False)


@contextlib.contextmanager
def inputs_checked():
    """Inside this block, :func:`reads_allowed` is false: the caller vouches for the inputs of the
    calls it makes. A sampler enters it for every denoiser call of a ``sample()`` after the first
    (whose inputs the package's denoisers check), so value checks cost one host read per run, not
    one per round."""
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def reads_allowed() -> bool:
    """Whether code may read device data now, for a check of values: not while ``torch.compile``
    traces it (a read would break the graph), not while a CUDA stream is being captured into a graph
    (a read is illegal there), and not inside :func:`inputs_checked` (a sampler's calls after its
    first). A stream can be capturing only once CUDA is initialized (a flag, cheap enough for every
    call of a model)."""
    if torch.compiler.is_compiling():
        return False
    if _CHECKED.get():
        return False
    return not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())


def check_int(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """``int(v)`` if ``v`` is an integer in ``[lo, hi)`` and in int64 (``[-2**63, 2**63)``: what an op
    schema's ``int`` holds; a missing bound is int64's); else a ``TypeError``/``ValueError`` naming ``name``."""
    if not is_int(v):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    lo = -(2**63) if lo is None else max(lo, -(2**63))
    hi = 2**63 if hi is None else min(hi, 2**63)
    if not lo <= v < hi:
        raise ValueError(f"{name} must lie in [{_bound(lo)}, {_bound(hi)}), got {v}")
    return v


def _bound(b: int) -> str:
    """A bound of :func:`check_int` as written in its message (int64's as ``2**63``)."""
    return {2**63: "2**63", -(2**63): "-2**63"}.get(b, str(b))


def check_temperature(temperature) -> float:
    """``float(temperature)`` if the kernels can honour it exactly as the contract says.

    ``0`` means greedy (argmax of the raw logits). A positive ``T`` is applied as a float32 multiply
    by ``float32(1) / float32(T)``, so ``float32(T)`` must be a positive normal float32 below
    ``FLT_MAX`` and its reciprocal finite and nonzero (``T`` in about ``[2.9e-39, 3.4e38]``).
    ``inf``, ``nan``, negative values and ``bool`` are rejected.
    """
    if torch.compiler.is_compiling():
        return temperature  # traced (maybe symbolic): the op body checks the concrete value at run time
    if not is_real(temperature):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__} {temperature!r}")
    t = float(temperature)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature!r}")
    if t == 0.0:
        return 0.0
    t32, inv = float(numpy.float32(t)), inverse_temperature(t)
    if not (0.0 < t32 <= FLT_MAX and 0.0 < inv < math.inf):
        raise ValueError(
            f"temperature={temperature!r} cannot be honoured in float32 (1/T must be a finite, nonzero "
            "float32: T in about [2.9e-39, 3.4e38]); use temperature=0 for greedy decoding"
        )
    return t


def inverse_temperature(temperature: float) -> float:
    """``float32(1) / float32(T)``, the contract's scale of the logits (``1`` when greedy, ``T = 0``):
    plain float32 arithmetic (numpy scalars: no tensor, no dispatch, no host read); ``inf`` or ``0``
    where float32 overflows (:func:`check_temperature` rejects those)."""
    if temperature == 0:
        return 1.0
    with numpy.errstate(over="ignore", divide="ignore"):
        return float(numpy.float32(1.0) / numpy.float32(temperature))


def check_dense_tensor(name: str, t) -> None:
    """A strided (not sparse) tensor with real data (not on the ``meta`` device)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (it holds no data)")


def check_token_batch(name: str, x) -> None:
    """``x`` is a dense integer tensor ``[B, L]`` with ``B, L >= 1`` (static facts: no host read; the
    ids' range is :func:`check_token_range`'s)."""
    check_dense_tensor(name, x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [B, L], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no positions (L = 0)")


def check_token_range(name: str, low: int, top: int, vocab_size: int | None) -> None:
    """The ids of a token batch (its smallest ``low`` and largest ``top``, read by the caller) lie in
    ``[0, vocab_size)``."""
    if low < 0:
        raise ValueError(f"{name} holds negative token ids")
    if vocab_size is not None and top >= vocab_size:
        raise ValueError(f"{name} holds token id {top}, out of range for vocab_size={vocab_size}")


def check_index_vector(name: str, index, size: int, device, *, shape: str, meaning: str, owner: str,
                       holds: str, outside: str) -> None:
    """``index`` must be a 1-D LongTensor ``[shape]`` (``meaning``: what it indexes) on ``device`` (the
    device of ``owner``) with values in ``[0, size)``; ``TypeError``/``ValueError`` naming ``name``
    (``holds``, ``outside``: the wording of the range error). The values are read in eager mode only:
    under ``torch.compile`` reading them would be data-dependent (a graph break)."""
    if not (isinstance(index, torch.Tensor) and index.dtype == torch.int64):
        what = index.dtype if isinstance(index, torch.Tensor) else type(index).__name__
        raise TypeError(f"{name} must be a LongTensor [{shape}] of {meaning}, got {what}")
    if index.dim() != 1:
        raise ValueError(f"{name} must be a 1-D LongTensor [{shape}], got shape {tuple(index.shape)}")
    if index.device != device:
        raise ValueError(f"{name} is on {index.device}, but {owner} is on {device}")
    if index.numel() and reads_allowed():
        low, high = torch.stack([index.min(), index.max()]).tolist()  # one host read
        if low < 0 or high >= size:
            raise ValueError(f"{name} holds {holds}{low}..{high}, outside {outside}")
