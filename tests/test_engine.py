"""The engine every sampler runs on (:mod:`pit_sampler.engine`), through both step rules.

Each test is a finding of the review of the two loops that ran before the engine (tau-leaping and
an older MaskGIT copy); each failed there:

* MaskGIT Picard raised on NaN rows of guessed states the sequential chain never visits;
* ``max_rows`` was not a hard cap for MaskGIT, and silently turned a fixed PIT window into 1;
* MaskGIT had no vocabulary probe (a prompt id >= V reached the model);
* a denoiser writing into its input corrupted the chain;
* the sequential sampler raised on NaN only after the whole run;
* ``window="auto"`` learned from acceptance averaged over a poll interval;
* ``top_k``/``top_p`` truncated every output row, not the rows read;
* a CUDA-graphed round was keyed by the prompt's largest id (a capture per prompt).
"""
import pytest
import torch

import pit_sampler as ps
from pit_sampler.engine.graphs import GraphedRound
from pit_sampler.testing import make_oracle

ORACLE = make_oracle("hmm", seed=8, num_tokens=6, length=10)
MASK = ORACLE.mask_id


def _x(B=3, prompt=3):
    x = torch.full((B, 10), MASK)
    x[0, :prompt] = torch.arange(prompt) % 5
    return x


def tau(den, **kw):
    window = kw.pop("window", None)
    kw = {"mask_id": MASK, "num_steps": 32, **kw}
    return ps.TauLeapingSampler(den, **kw) if window is None else ps.PITSampler(den, window=window, **kw)


def maskgit(den, **kw):
    return ps.MaskGITSampler(den, **{"mask_id": MASK, "num_steps": 6, "order": "confidence", **kw})


RULES = {"tau": tau, "maskgit": maskgit}


class Recorder:
    """The oracle, recording each call's rows (and the states, if asked)."""

    def __init__(self, fn=ORACLE, states=False):
        self.fn, self.rows, self.states, self.keep = fn, [], set(), states

    def __call__(self, x, t):
        self.rows.append(x.shape[0])
        if self.keep:
            self.states.update(map(tuple, x.tolist()))
        return self.fn(x, t)


@pytest.mark.parametrize("window", [2, 8])
@pytest.mark.parametrize("rule", list(RULES))
def test_picard_never_fails_where_sequential_succeeds(rule, window):
    """A model that returns NaN on every state the sequential chain never visits (an fp16 overflow on a
    guessed state): Picard evaluates such states, but only accepted slices may raise."""
    make, x = RULES[rule], _x()
    seen = Recorder(states=True)
    seq = make(seen, vocab_size=MASK + 1).sample(x, seed=2)
    off_path = []

    def poisoned(x, t):
        out = ORACLE(x, t).clone()
        off = torch.tensor([tuple(row) not in seen.states for row in x.tolist()])
        out[off] = float("nan")
        off_path.append(int(off.sum()))
        return out

    pit = make(poisoned, vocab_size=MASK + 1, window=window).sample(x, seed=2)
    assert sum(off_path) > 0  # the test exercises what it claims
    assert torch.equal(pit.tokens, seq.tokens)


@pytest.mark.parametrize("rule", list(RULES))
def test_max_rows_is_a_hard_cap_and_a_fixed_window_survives_it(rule):
    """``max_rows=2`` with B = 5: no call has more than 2 rows. A fixed window runs in groups of
    ``max_rows // window`` samples, so ``window=4, max_rows=8`` still runs windows of 4."""
    make, x = RULES[rule], _x(B=5)
    seq = make(ORACLE).sample(x, seed=1)
    for max_rows, window, want in ((2, None, 1), (2, 4, 2), (8, 4, 4)):
        calls = Recorder()
        extra = {} if window is None else {"window": window}
        out = make(calls, max_rows=max_rows, **extra).sample(x, seed=1)
        assert torch.equal(out.tokens, seq.tokens)
        assert max(calls.rows) <= max_rows and max(out.windows) == want, (max_rows, window, out.windows)


@pytest.mark.parametrize("rule", list(RULES))
def test_prompt_ids_out_of_range_and_a_changing_vocabulary_are_reported(rule):
    """Without ``vocab_size``, a prompt costs one probe row: an id >= V is a ValueError naming
    ``x_init`` before the model sees it (an embedding would raise IndexError); a model whose vocabulary
    changes between calls is reported, never sampled from."""
    make = RULES[rule]
    table = torch.randn(MASK + 1, MASK + 1)
    embedding = lambda x, t: table[x]  # noqa: E731 (raises IndexError on an id >= V)
    x = _x()
    x[1, 0] = MASK + 3
    with pytest.raises(ValueError, match=f"x_init holds token id {MASK + 3}"):
        make(embedding).sample(x, seed=0)
    calls = []

    def growing(x, t):
        calls.append(1)
        return torch.randn(*x.shape, MASK + len(calls))

    with pytest.raises(ValueError, match="earlier in this run"):
        make(growing, window=2).sample(_x(prompt=0), seed=0)


@pytest.mark.parametrize("rule", list(RULES))
def test_a_denoiser_that_writes_into_its_input_cannot_corrupt_the_chain(rule):
    make, x = RULES[rule], _x()

    def vandal(x, t):
        out = ORACLE(x, t)
        x.fill_(0)  # a model that reuses its input buffer
        return out

    want = make(ORACLE).sample(x, seed=3)
    for window in (None, 4):
        extra = {} if window is None else {"window": window}
        clean = make(ORACLE, **extra).sample(x, seed=3).tokens
        assert torch.equal(make(vandal, **extra).sample(x, seed=3).tokens, clean)
    assert not bool((want.tokens == MASK).any())


@pytest.mark.parametrize("sync_every", [1, 4])
@pytest.mark.parametrize("rule", list(RULES))
def test_nan_logits_raise_at_the_first_poll(rule, sync_every):
    """The sequential sampler reads errors at its polls too: a model that returns NaN everywhere stops
    the run after at most ``sync_every`` rounds, not after the whole run."""
    calls = Recorder(lambda x, t: torch.full((*x.shape, MASK + 1), float("nan")))
    with pytest.raises(ValueError, match="NaN/inf"):
        RULES[rule](calls, vocab_size=MASK + 1, sync_every=sync_every).sample(_x(prompt=0), seed=0)
    assert len(calls.rows) <= sync_every


def test_auto_learns_from_every_round_not_from_poll_averages():
    """``E[min(k, W)] != min(E[k], W)``: with ``sync_every=8`` the device tallies each round's acceptance
    and the policy folds in every round (its timed calls count rounds, not polls)."""
    oracle = make_oracle("mixture", seed=1, num_tokens=5, length=64)
    x = torch.full((2, 64), oracle.mask_id)
    kw = dict(mask_id=oracle.mask_id, num_steps=256, grid="uniform", vocab_size=oracle.mask_id + 1)
    out = ps.PITSampler(oracle, sync_every=8, **kw).sample(x, seed=0)
    observed = sum(w["rounds"] for w in out.policy["windows"].values())
    assert out.polls + 1 < len(out.windows) // 2  # several rounds per poll
    assert observed >= len(out.windows) - 8  # all but the run's warm-up and cut-short rounds
    assert torch.equal(out.tokens, ps.TauLeapingSampler(oracle, **kw).sample(x, seed=0).tokens)


def test_top_k_truncates_only_the_rows_the_sweep_reads(monkeypatch):
    """A plain (full-output) model with ``top_k``: the drawn rows are picked from the output and only
    they are truncated, about ``n B`` rows per round instead of ``W B L``."""
    from pit_sampler.steps import tau_leaping

    truncated = []
    real = tau_leaping.truncate_logits

    def counted(logits, *args):
        truncated.append(logits.numel() // logits.shape[-1])  # rows of V logits
        return real(logits, *args)

    monkeypatch.setattr(tau_leaping, "truncate_logits", counted)
    oracle = make_oracle("hmm", seed=3, num_tokens=7, length=64)
    x = torch.full((2, 64), oracle.mask_id)
    kw = dict(mask_id=oracle.mask_id, num_steps=128, top_k=3, vocab_size=oracle.mask_id + 1)
    pit = ps.PITSampler(oracle, window=8, **kw).sample(x, seed=4)
    assert max(truncated) <= 0.25 * 8 * 2 * 64, max(truncated)
    assert torch.equal(pit.tokens, ps.TauLeapingSampler(oracle, **kw).sample(x, seed=4).tokens)


@pytest.mark.parametrize("rule", list(RULES))
def test_a_graphed_round_is_keyed_by_shapes_not_by_the_prompt(rule):
    """What a CUDA-graphed round would capture on (:meth:`GraphedRound._key` of each round's
    arguments): two prompts that differ only in their ids (the same masked positions, so the same
    sequential plan and shapes) give the same keys, so a new prompt replays the last one's graphs."""
    sampler = RULES[rule](ORACLE, vocab_size=MASK + 1)
    real, keys = sampler.engine._round, {}
    for top in (1, 4):
        x = _x(B=2, prompt=3)
        x[0, 2] = top

        def recorded(*args):
            keys.setdefault(top, []).append(GraphedRound._key(args))
            return real(*args)

        sampler.engine._round = recorded
        sampler.sample(x, seed=0)
    assert keys[1] == keys[4]
