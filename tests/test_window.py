"""``window="auto"``: the policy on simulated cost models, exactness with any window sequence, and a
simulated latency-bound device (timing *ratios* only, with a generous margin)."""
import random
import time

import pytest
import torch

import pit_sampler as ps
from pit_sampler.testing import make_oracle
from pit_sampler.window import WindowPolicy


def _drive(policy, cost, converged, rounds=200, seed=0):
    """Run ``policy`` against a cost model ``cost(rows)`` and a convergence model: in each round the
    first ``converged(rng)`` slices of any window converge, so a window ``W`` accepts ``min(K, W)``
    (the causal structure of a Picard window)."""
    rng = random.Random(seed)
    policy.start(1024)
    chosen = []
    for _ in range(rounds):
        w = policy.choose()
        chosen.append(w)
        policy.observe(w, cost(w), w, [min(converged(rng), w)], [1024])
    return chosen


def test_latency_bound_device_climbs_to_a_large_window():
    chosen = _drive(WindowPolicy(), cost=lambda rows: 1.0 + 0.001 * rows, converged=lambda rng: 40)
    # 1 (warm-up, measured), 2 and 8 and 32 (transition, settling rounds, two measured rounds of the
    # one sample), then 64 for good
    assert chosen[:17] == [1, 1] + [2] * 4 + [8] * 5 + [32] * 5 + [64] and set(chosen[17:]) == {64}


def test_compute_bound_device_stays_sequential_and_probes_rarely():
    chosen = _drive(WindowPolicy(), cost=lambda rows: float(rows), converged=lambda rng: 1 + int(rng.expovariate(0.5)),
                    rounds=500)
    assert chosen[-1] == 1 and sum(w != 1 for w in chosen) <= 2 * 9  # at most ~log2(500 / 8) two-round probes


def test_sublinear_cost_that_never_pays_is_reprobed_with_backoff():
    # cost 0.6 + 0.4 rows: W = 2 looks promising from W = 1's rounds, but accepts only 1.1 steps, so its
    # throughput is 0.79 of W = 1's. The policy keeps returning to W = 1, and its probes stay rare
    # (deterministic: a seeded convergence model; seeds 0-4 give 5-13 probes, 17-61 rounds off W = 1)
    chosen = _drive(WindowPolicy(), cost=lambda rows: 0.6 + 0.4 * rows,
                    converged=lambda rng: 1 + (rng.random() < 0.1), rounds=500)
    probes = [i for i, (a, b) in enumerate(zip(chosen, chosen[1:])) if a == 1 and b != 1]
    assert chosen[-1] == 1 and 1 <= len(probes) <= 16 and sum(w != 1 for w in chosen) <= 80
    assert probes[-1] - probes[-2] > 8  # waits grow past the first backoff


def test_an_interior_optimum_is_found():
    # cost flat up to 8 rows then linear; 6 slices converge per round: the best throughput is at W = 8
    chosen = _drive(WindowPolicy(), cost=lambda rows: max(1.0, rows / 8), converged=lambda rng: 6)
    assert set(chosen[10:]) == {8}


def test_smaller_windows_are_judged_without_probing_them():
    # a round of W = 32 also measures W = 8 and 16 (its first slices): after its probe of 32 the policy
    # moves straight back to 8, without running 16
    policy = WindowPolicy()
    chosen = _drive(policy, cost=lambda rows: max(1.0, rows / 8), converged=lambda rng: 8 + rng.randrange(2))
    assert 32 in chosen and 16 not in chosen and set(chosen[16:]) == {8}
    assert policy.report()["windows"][8]["accepted"] >= 7.9


def test_a_round_measures_every_smaller_window():
    # slices are causal: a round of W = 8 in which a sample accepts k steps is the round W' < 8 would
    # have run, accepting min(k, W')
    policy = WindowPolicy()
    policy.start(1024)
    for k in (1, 5, 5, 5):  # the run's first round, then three rounds of W = 8 (after its transition)
        policy.observe(8, 1.0, 8, [k, 8.0], [100, 100])
    got = {w: v["accepted"] for w, v in policy.report()["windows"].items()}
    assert got[1] == 1.0 and got[2] == 2.0 and got[4] == 4.0 and got[8] == pytest.approx(6.5)


def test_a_probe_whose_measured_cost_rules_it_out_is_aborted_after_one_round():
    # flat cost up to 2 rows, then 10 per call: from W = 2 the policy jumps to 8 on an optimistic
    # estimate, and returns after the one round that measured its cost
    chosen = _drive(WindowPolicy(), cost=lambda rows: 1.0 if rows <= 2 else 10.0, converged=lambda rng: 40)
    first = chosen.index(8)
    assert chosen[first + 1] == 2 and chosen.count(8) <= 3  # later probes back off


def test_warmup_calls_are_not_measured():
    policy = WindowPolicy(warmup=1)
    policy.start(64)
    for seconds in (100.0, 1.0, 1.0):  # the first call of the run (compilation) is not measured
        policy.observe(1, seconds, 1, [1], [10])
    assert policy.report()["windows"][1]["seconds"] == pytest.approx(1.0)


def test_auto_equals_sequential_and_reports_its_choices():
    oracle = make_oracle("hmm", seed=0, num_tokens=8, length=32)
    kw = dict(mask_id=oracle.mask_id, num_steps=128)
    x = torch.full((3, 32), oracle.mask_id)
    seq = ps.TauLeapingSampler(oracle, **kw).sample(x, seed=0)
    sampler = ps.PITSampler(oracle, **kw)
    for _ in range(2):  # the second call starts from what the first learned
        r = sampler.sample(x, seed=0)
        assert torch.equal(r.tokens, seq.tokens) and r.exact
        assert len(r.windows) == r.rounds and set(r.windows) <= {1, 2, 4, 8, 16, 32}
        assert r.policy["chosen"] in {1, 2, 4, 8, 16, 32} and r.policy["windows"]  # the last choice may be unrun
        assert all(w["throughput"] > 0 for w in r.policy["windows"].values() if w["accepted_at"] >= 0)


def test_auto_respects_max_rows():
    oracle = make_oracle("mixture", seed=1, num_tokens=5, length=16)
    calls = []

    def recorded(x, t):
        calls.append(x.shape[0])
        return oracle(x, t)

    kw = dict(mask_id=oracle.mask_id, num_steps=64, vocab_size=oracle.mask_id + 1)
    x = torch.full((4, 16), oracle.mask_id)
    r = ps.PITSampler(recorded, max_rows=6, **kw).sample(x, seed=3)
    assert max(calls) <= 6
    assert torch.equal(r.tokens, ps.TauLeapingSampler(oracle, **kw).sample(x, seed=3).tokens)


class LatencyBound:
    """A simulated latency-bound accelerator: a call costs ``base`` seconds up to ``knee`` rows and grows
    linearly beyond; the logits are an exact oracle's (whose own CPU time is small beside ``base``)."""

    def __init__(self, oracle, base=5e-3, knee=64):
        self.oracle, self.base, self.knee = oracle, base, knee

    def __call__(self, x, t):
        time.sleep(self.base * max(1.0, x.shape[0] / self.knee))
        return self.oracle(x, t)


def _best_wall(make, x, reps=3, warm=False):
    """Best wall time of ``reps`` runs of ``make()`` (a new sampler each run; ``warm``: one sampler,
    run once untimed first, as a user calling ``sample()`` again) and the last result."""
    sampler = make()
    if warm:
        sampler.sample(x, seed=5)
    best = float("inf")
    for _ in range(reps):
        sampler = sampler if warm else make()
        start = time.perf_counter()
        out = sampler.sample(x, seed=5)
        best = min(best, time.perf_counter() - start)
    return best, out


def test_simulated_latency_bound_device():
    oracle = make_oracle("hmm", seed=2, num_tokens=8, length=128)
    den = LatencyBound(oracle)
    kw = dict(mask_id=oracle.mask_id, num_steps=512, vocab_size=oracle.mask_id + 1)
    x = torch.full((1, 128), oracle.mask_id)
    seq_time, seq = _best_wall(lambda: ps.TauLeapingSampler(den, **kw), x)
    fixed = {w: _best_wall(lambda: ps.PITSampler(den, window=w, **kw), x)[0] for w in (4, 8, 16, 32, 64)}
    best = seq_time / min(fixed.values())
    fresh_time, fresh = _best_wall(lambda: ps.PITSampler(den, **kw), x)
    warm_time, warm = _best_wall(lambda: ps.PITSampler(den, **kw), x, warm=True)
    assert torch.equal(fresh.tokens, seq.tokens) and torch.equal(warm.tokens, seq.tokens)
    assert max(fresh.windows) >= 8 and min(warm.windows[:-2]) >= 8  # (the last rounds may be cut short)
    # a warm sampler starts from the window it learned: it reached 0.8 of the best fixed window's
    # speed-up in 4 of 6 runs on 2 shared cores, 0.6 in the others (the 0.8 is not yet
    # reliable: docs/window.md); a fresh one also pays its climb from W = 1 (about 10 of the 12-20
    # rounds of this run). The thresholds leave room for a noisy machine.
    assert seq_time / warm_time >= 0.5 * best, (seq_time / warm_time, best, fixed)
    assert seq_time / fresh_time >= 0.3 * best, (seq_time / fresh_time, best, fixed)
