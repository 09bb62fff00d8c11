"""Oracle distributions with exact conditionals, for validating samplers (ours and yours).

Each oracle is a distribution over sequences of ``length`` tokens from ``num_tokens`` clean tokens;
the vocabulary adds one mask id (``mask_id = num_tokens``, ``vocab_size = num_tokens + 1``). It offers

* ``conditionals(x)`` float64 ``[N, L, num_tokens]``: ``p(x_i = v | x_O)`` for every position, where
  ``O`` is the set of positions of ``x`` that are not masked (masked positions: the exact marginal
  given ``x_O``; observed positions: a point mass on their token);
* ``__call__(x, t)``: the same as float32 log-probabilities ``[N, L, vocab_size]`` with ``-inf`` on the
  mask column: a perfect, batch-invariant mean-parametrization denoiser (it ignores ``t``; every row
  is computed on its own, in float64, elementwise);
* ``log_prob(x)`` float64 ``[N]`` of clean sequences, and ``sample(n, generator)``: exact ancestral samples.

Oracles: :class:`IndependentOracle` (independent positions), :class:`MixtureOracle` (a mixture of
product distributions: strong long-range dependence through the latent component) and
:class:`HMMOracle` (a hidden Markov model; forward-backward with missing observations).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Oracle", "IndependentOracle", "MixtureOracle", "HMMOracle", "make_oracle", "ORACLES", "PrefixOracle",
           "CachedPrefixOracle"]


def _check_tokens(x: Tensor, vocab_size: int, length: int) -> None:
    if not isinstance(x, Tensor) or x.is_floating_point() or x.dtype == torch.bool:
        raise TypeError(f"x must be an integer tensor of token ids, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 2 or x.shape[1] != length:
        raise ValueError(f"x must have shape [N, {length}], got {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(f"x holds token ids outside [0, {vocab_size})")


class Oracle:
    """Base class: checks inputs; subclasses implement ``_conditionals``, ``_log_prob`` and ``_sample``."""

    def __init__(self, num_tokens: int, length: int):
        if num_tokens < 2 or length < 1:
            raise ValueError(f"need num_tokens >= 2 and length >= 1, got {num_tokens}, {length}")
        self.num_tokens, self.length = num_tokens, length
        self.mask_id, self.vocab_size = num_tokens, num_tokens + 1

    def conditionals(self, x: Tensor) -> Tensor:
        """float64 ``[N, L, num_tokens]``: ``p(x_i = v | x_O)`` (``x`` may hold ``mask_id``)."""
        _check_tokens(x, self.vocab_size, self.length)
        return self._conditionals(x.cpu())

    def log_prob(self, x: Tensor) -> Tensor:
        """float64 ``[N]``: the exact log-probability of clean sequences ``x``."""
        _check_tokens(x, self.num_tokens, self.length)
        return self._log_prob(x.cpu())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``LongTensor[n, L]`` of exact (ancestral) samples."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if n == 0:
            return torch.empty(0, self.length, dtype=torch.int64)
        return self._sample(n, generator)

    def _conditionals(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        logp = torch.log(self.conditionals(x)).to(torch.float32)
        mask_col = torch.full((*logp.shape[:2], 1), float("-inf"), dtype=torch.float32)
        return torch.cat([logp, mask_col], -1).to(x.device)

    def _observed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(observed [N, L] bool, clean token ids with masks replaced by 0)``."""
        observed = x != self.mask_id
        return observed, torch.where(observed, x, 0)

    def _point_masses(self, conditionals: Tensor, x: Tensor) -> Tensor:
        observed, tokens = self._observed(x)
        one_hot = torch.nn.functional.one_hot(tokens, self.num_tokens).to(torch.float64)
        return torch.where(observed.unsqueeze(-1), one_hot, conditionals)


def _random_simplex(shape, concentration: float, generator: torch.Generator) -> Tensor:
    """Dirichlet(concentration) draws on the last axis (via normalised Gamma variates)."""
    alpha = torch.full(shape, concentration, dtype=torch.float64)
    g = torch._standard_gamma(alpha, generator=generator)
    g = g.clamp(min=1e-300)
    return g / g.sum(-1, keepdim=True)


class IndependentOracle(Oracle):
    """``p(x) = prod_l p_l(x_l)``: no dependence; every conditional is the position's marginal."""

    def __init__(self, probs: Tensor):
        super().__init__(probs.shape[1], probs.shape[0])
        self.probs = probs.to(torch.float64)  # [L, K]

    @classmethod
    def random(cls, num_tokens: int = 6, length: int = 16, concentration: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        probs = _random_simplex((length, num_tokens), concentration, g).clamp(min=1e-6)
        return cls(probs / probs.sum(-1, keepdim=True))

    def _conditionals(self, x):
        return self._point_masses(self.probs.expand(x.shape[0], -1, -1), x)

    def _log_prob(self, x):
        return torch.log(self.probs).gather(1, x.T).sum(0)

    def _sample(self, n, generator):
        return torch.multinomial(self.probs, n, replacement=True, generator=generator).T.contiguous()


class MixtureOracle(Oracle):
    """``p(x) = sum_c w_c prod_l p_{c,l}(x_l)``.

    Given observed ``x_O``, the posterior over components is ``w_c prod_{l in O} p_{c,l}(x_l)``
    (normalised) and ``p(x_i = v | x_O) = sum_c post_c p_{c,i}(v)``. Peaked components make one
    observed token inform every other position: long-range dependence, the hard case for
    factorised (parallel) decoding.
    """

    def __init__(self, weights: Tensor, probs: Tensor):
        super().__init__(probs.shape[2], probs.shape[1])
        self.log_w = torch.log(weights.to(torch.float64))  # [C]
        self.log_p = torch.log(probs.to(torch.float64))  # [C, L, K]

    @classmethod
    def random(cls, num_tokens: int = 6, length: int = 16, components: int = 4, concentration: float = 0.1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        weights = _random_simplex((components,), 2.0, g)
        probs = _random_simplex((components, length, num_tokens), concentration, g).clamp(min=1e-4)
        return cls(weights, probs / probs.sum(-1, keepdim=True))

    def _log_posterior(self, x: Tensor) -> Tensor:
        observed, tokens = self._observed(x)
        # log p_{c,l}(x_l) for every sample, component and position: [N, C, L]
        per_pos = self.log_p.unsqueeze(0).expand(x.shape[0], -1, -1, -1).gather(
            3, tokens.unsqueeze(1).unsqueeze(-1).expand(-1, self.log_p.shape[0], -1, 1)
        ).squeeze(-1)
        joint = self.log_w + torch.where(observed.unsqueeze(1), per_pos, 0.0).sum(-1)  # [N, C]
        return joint - torch.logsumexp(joint, -1, keepdim=True), joint

    def _conditionals(self, x):
        log_post, _ = self._log_posterior(x)
        cond = (log_post.exp()[:, :, None, None] * self.log_p.exp().unsqueeze(0)).sum(1)  # [N, L, K]
        return self._point_masses(cond, x)

    def _log_prob(self, x):
        return torch.logsumexp(self._log_posterior(x)[1], -1)

    def _sample(self, n, generator):
        c = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        probs = self.log_p.exp()[c].reshape(n * self.length, self.num_tokens)
        return torch.multinomial(probs, 1, generator=generator).view(n, self.length)


class HMMOracle(Oracle):
    """Hidden Markov model: ``z_1 ~ pi``, ``z_{l+1} | z_l ~ A[z_l]``, ``x_l | z_l ~ B[z_l]``.

    Conditionals by scaled forward-backward with missing data (a masked position's emission factor
    is 1): ``p(z_i = s | x_O) ∝ a_i(s) b_i(s)`` and ``p(x_i = v | x_O) = sum_s p(z_i = s | x_O) B[s, v]``.
    """

    def __init__(self, initial: Tensor, transition: Tensor, emission: Tensor, length: int):
        super().__init__(emission.shape[1], length)
        self.pi, self.A, self.B = (t.to(torch.float64) for t in (initial, transition, emission))

    @classmethod
    def random(cls, num_tokens: int = 6, length: int = 16, states: int = 4, stickiness: float = 0.8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        S = states
        A = stickiness * torch.eye(S, dtype=torch.float64) + (1 - stickiness) * _random_simplex((S, S), 1.0, g)
        B = _random_simplex((S, num_tokens), 0.3, g).clamp(min=1e-4)
        return cls(_random_simplex((S,), 2.0, g), A, B / B.sum(-1, keepdim=True), length)

    def _emissions(self, x: Tensor) -> Tensor:
        observed, tokens = self._observed(x)
        e = self.B.T[tokens]  # [N, L, S]
        return torch.where(observed.unsqueeze(-1), e, 1.0)

    def _forward_backward(self, x: Tensor):
        e = self._emissions(x)
        N, L, S = e.shape
        alpha = torch.empty(N, L, S, dtype=torch.float64)
        log_scale = torch.zeros(N, dtype=torch.float64)
        a = self.pi * e[:, 0]
        for i in range(L):
            if i:
                a = (a.unsqueeze(-1) * self.A).sum(1) * e[:, i]
            c = a.sum(-1, keepdim=True)
            log_scale += torch.log(c.squeeze(-1))
            a = a / c
            alpha[:, i] = a
        beta = torch.ones(N, L, S, dtype=torch.float64)
        b = torch.ones(N, S, dtype=torch.float64)
        for i in range(L - 2, -1, -1):
            b = (self.A * (e[:, i + 1] * b).unsqueeze(1)).sum(-1)
            b = b / b.sum(-1, keepdim=True)
            beta[:, i] = b
        return alpha, beta, log_scale

    def _conditionals(self, x):
        alpha, beta, _ = self._forward_backward(x)
        # posterior of z_i given the observations other than x_i: divide out position i's own emission
        e = self._emissions(x)
        post = alpha * beta / e
        post = post / post.sum(-1, keepdim=True)
        cond = (post.unsqueeze(-1) * self.B).sum(2)  # [N, L, K]
        return self._point_masses(cond, x)

    def _log_prob(self, x):
        return self._forward_backward(x)[2]

    def _sample(self, n, generator):
        z = torch.multinomial(self.pi, n, replacement=True, generator=generator)
        out = torch.empty(n, self.length, dtype=torch.int64)
        for i in range(self.length):
            if i:
                z = torch.multinomial(self.A[z], 1, generator=generator).squeeze(1)
            out[:, i] = torch.multinomial(self.B[z], 1, generator=generator).squeeze(1)
        return out


ORACLES = {"independent": IndependentOracle, "mixture": MixtureOracle, "hmm": HMMOracle}


def make_oracle(name: str, seed: int = 0, **kwargs) -> Oracle:
    """A random oracle by name (``independent``, ``mixture``, ``hmm``); ``kwargs`` go to ``.random``."""
    if name not in ORACLES:
        raise ValueError(f"oracle must be one of {sorted(ORACLES)}, got {name!r}")
    return ORACLES[name].random(seed=seed, **kwargs)


def unmask_probs(schedule, times: Tensor, rule: str) -> Tensor:
    """float64 ``[N + 1]``: the spec's per-step unmask probability ``q_j`` of a masked position under
    the mean parametrization (``j < N``; docs/sampler-spec.md section 2: ``reject`` ``lambda e^-lambda``,
    ``first`` ``1 - e^-lambda``, ``lambda = Delta_j r(t_j)``; ``tweedie``
    ``(alpha(t_{j+1}) - alpha(t_j)) / (1 - alpha(t_j))``), and ``q_N = 1`` (the final fill)."""
    t_now, t_next = times[:-1], times[1:]
    if rule == "tweedie":
        a_now, a_next = schedule.alpha(t_now), schedule.alpha(t_next)
        q = (a_next - a_now) / (1.0 - a_now)
    else:
        lam = (t_now - t_next) * schedule.rate(t_now)
        q = lam * torch.exp(-lam) if rule == "reject" else -torch.expm1(-lam)
    return torch.cat([q.to(torch.float64), torch.ones(1, dtype=torch.float64)])


class TauLeapingLaw:
    """The exact output law of mean-parametrization tau-leaping with a perfect denoiser (an oracle's
    conditionals) on a tiny oracle.

    Every partial sequence ``s`` (``(K + 1)^L`` of them, ``K`` = mask) and every one-step transition
    ``s -> s'`` (each masked position stays masked or takes one of the ``K`` tokens) is enumerated once,
    with the product ``w`` of the drawn tokens' conditionals ``p(x_l = s'_l | s)``, the number ``k`` of
    positions drawn and ``m`` of positions masked in ``s`` (``9**6 = 531441`` transitions for K = 4,
    L = 6). A step with unmask probability ``q`` is ``P'[s'] = sum_{s -> s'} P[s] w q^k (1 - q)^(m - k)``;
    ``final="argmax"`` draws the last step's tokens by the argmax of the conditionals instead."""

    def __init__(self, orc):
        import itertools

        K, L = orc.num_tokens, orc.length
        X = torch.tensor(list(itertools.product(range(K + 1), repeat=L)), dtype=torch.int64)
        cond = orc.conditionals(X)  # [S, L, K]
        argmax = torch.nn.functional.one_hot(cond.argmax(-1), K).to(torch.float64)
        place = (K + 1) ** torch.arange(L - 1, -1, -1)
        src, dst = torch.arange(len(X)), torch.zeros(len(X), dtype=torch.int64)
        w, w_max = torch.ones(len(X), dtype=torch.float64), torch.ones(len(X), dtype=torch.float64)
        k = torch.zeros(len(X), dtype=torch.int64)
        one = torch.ones((), dtype=torch.float64)
        for l in range(L):
            tok = X[src, l]
            masked = tok == K
            n_opt = torch.where(masked, K + 1, 1)  # a masked position: stay masked or take one of K tokens
            rep = torch.repeat_interleave(torch.arange(len(src)), n_opt)
            opt = torch.arange(len(rep)) - (torch.cumsum(n_opt, 0) - n_opt)[rep]
            src, dst, w, w_max, k, masked, tok = (v[rep] for v in (src, dst, w, w_max, k, masked, tok))
            draws = masked & (opt < K)
            w = w * torch.where(draws, cond[src, l, opt.clamp(max=K - 1)], one)
            w_max = w_max * torch.where(draws, argmax[src, l, opt.clamp(max=K - 1)], one)
            k = k + draws.to(torch.int64)
            dst = dst + torch.where(masked, opt, tok) * place[l]
        self.src, self.dst, self.w, self.w_max = src, dst, w, w_max
        self.k = k.to(torch.float64)
        self.m = (X == K).sum(1)[src].to(torch.float64)
        self.size = len(X)
        self.clean = (X < K).all(1).nonzero().squeeze(1)  # the clean sequences, in lexicographic order
        self.p = orc.log_prob(X[self.clean]).exp()  # the oracle's law, in the same order

    def run(self, q: Tensor, final: str = "sample") -> Tensor:
        """Probabilities of the clean sequences after the steps ``q`` (:func:`unmask_probs`: the last
        is the fill, ``q = 1``)."""
        P = torch.zeros(self.size, dtype=torch.float64)
        P[-1] = 1.0  # all masked
        for j, qj in enumerate(q.tolist()):
            w = self.w_max if (final == "argmax" and j == len(q) - 1) else self.w
            step = w * qj**self.k * (1.0 - qj) ** (self.m - self.k)
            P = torch.zeros_like(P).index_add_(0, self.dst, P[self.src] * step)
        return P[self.clean]

    def divergences(self, q: Tensor) -> dict:
        """``KL(q || p)``, total variation and ``E_q[log p]`` against the oracle's ``p`` (nats)."""
        logp = torch.log(self.p)
        kl = torch.where(q > 0, q * (torch.log(q.clamp(min=1e-300)) - logp), torch.zeros_like(q)).sum()
        return dict(kl=float(kl), tv=float(0.5 * (q - self.p).abs().sum()), loglik=float((q * logp).sum()),
                    exact_loglik=float((self.p * logp).sum()))


class Gathered:
    """``fn`` (a full ``[R, L, V]`` denoiser) behind the positions protocol: it computes the full
    output and returns the requested rows, bit for bit what a model that computes only those rows
    must return. For tests of the samplers' positions path; ``requested`` records each eager call's ``M``
    (not inside a compiled graph: a growing list would make every call recompile)."""

    supports_positions = True

    def __init__(self, fn):
        self.fn, self.requested = fn, []

    def __call__(self, x: Tensor, t: Tensor, positions: Tensor | None = None) -> Tensor:
        out = self.fn(x, t)
        if positions is None:
            return out
        if not torch.compiler.is_compiling():
            self.requested.append(positions.numel())
        return out.reshape(-1, out.shape[-1])[positions]


class PrefixOracle:
    """An oracle as a model of any input length up to its own (block sampling's inputs are a prefix,
    :mod:`pit_sampler.blocks`): called on ``x [N, e]`` with ``e <= oracle.length`` it masks the
    positions ``[e, length)`` (unobserved: marginalised), calls the oracle and returns the first ``e``
    positions' logits ``[N, e, vocab_size]``. Each position's conditional then depends only on the
    input it is given, as a block-causal model's does on the prefix and its block; exact and batch
    invariant. ``inputs`` records each call's input (a copy) when ``record=True``."""

    def __init__(self, oracle: Oracle, record: bool = False):
        self.oracle, self.record, self.inputs = oracle, record, []
        self.mask_id, self.vocab_size = oracle.mask_id, oracle.vocab_size

    def __call__(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        N, e = x.shape
        if not 1 <= e <= self.oracle.length:
            raise ValueError(f"x must have 1 to {self.oracle.length} positions, got {e}")
        if self.record:
            self.inputs.append(x.clone())
        full = torch.full((N, self.oracle.length), self.mask_id, dtype=x.dtype, device=x.device)
        full[:, :e] = x
        return self.oracle(full, t)[:, :e]


class CachedPrefixOracle(PrefixOracle):
    """A :class:`PrefixOracle` that offers the block cache protocol (:mod:`pit_sampler.block_cache`):
    its "cache" is the encoded prefix tokens ``[B, P]``, and a cached call concatenates each row's
    sample's prefix with the block and calls the oracle, so it equals the plain call bit for bit (the
    reference the cached sampler is tested against). ``calls`` records ``(kind, rows, positions per
    row)`` for every model call (``"plain"``, ``"cached"``) and every ``"encode"``. ``positions``:
    whether it offers the positions protocol; ``block_length``: the block length it declares (a
    block-causal model's own; the oracle is consistent with every block length)."""

    block_causal = True

    def __init__(self, oracle: Oracle, record: bool = False, positions: bool = True, block_length: int | None = None):
        super().__init__(oracle, record)
        self.supports_positions, self.calls = positions, []
        if block_length is not None:
            self.block_length = block_length

    def encode(self, x: Tensor, start: int, cache: Tensor | None = None) -> Tensor:
        if (cache is None) != (start == 0) or (cache is not None and cache.shape != (x.shape[0], start)):
            raise ValueError(f"the cache must cover positions 0 .. {start - 1} of the {x.shape[0]} samples")
        self.calls.append(("encode", x.shape[0], x.shape[1]))
        return x.clone() if cache is None else torch.cat([cache, x], 1)

    def select(self, cache: Tensor, index: Tensor) -> Tensor:
        return cache[index]

    def __call__(self, x: Tensor, t: Tensor | None = None, positions: Tensor | None = None, *, cache=None,
                 samples: Tensor | None = None, start: int = 0) -> Tensor:
        R, n = x.shape
        if cache is not None:
            if cache.shape[1] != start or R % samples.shape[0]:
                raise ValueError(f"a cached call needs the cache of positions 0 .. {start - 1} and W x B' rows")
            x = torch.cat([cache[samples].repeat(R // samples.shape[0], 1), x], 1)
        self.calls.append(("cached" if cache is not None else "plain", R, n))
        out = super().__call__(x, t)[:, start:]
        if positions is None:
            return out
        if positions.numel() and not (0 <= int(positions.min()) and int(positions.max()) < R * n):
            raise ValueError(f"positions must be flat indices in [0, {R * n}), got {positions.tolist()}")
        return out.reshape(R * n, -1)[positions]
