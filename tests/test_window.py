"""``window="auto"``: the policy on simulated cost models, exactness with any window sequence, and
simulated devices (a modelled clock injected as the engine's timer: no wall-clock timing here)."""
import random

import pytest
import torch

import pit_sampler as ps
from pit_sampler.testing import make_oracle
from pit_sampler.engine.policy import WindowPolicy
from pit_sampler.engine.window import acceptance_tally


def observe(policy, window, seconds, rows, accepted, left):
    """Feed ``policy`` one round as the engine does: sample ``b`` had ``left[b]`` steps to go and
    accepted ``accepted[b]``; the policy sees the round's acceptance tally (computed on the device)."""
    k = torch.tensor(accepted, dtype=torch.float64).round().to(torch.int64)
    tally = acceptance_tally(k, torch.tensor(left), window).tolist()
    policy.observe(window, seconds, rows, tally, max(r - a for a, r in zip(accepted, left)))


def _drive(policy, cost, converged, rounds=200, seed=0, left=1024):
    """Run ``policy`` against a cost model ``cost(rows)`` and a convergence model: in each round the
    first ``converged(rng)`` slices of any window converge, so a window ``W`` accepts ``min(K, W)``
    (the causal structure of a Picard window); the one sample always has ``left`` steps to go."""
    rng = random.Random(seed)
    policy.start(1024)
    chosen = []
    for _ in range(rounds):
        w = policy.choose()
        chosen.append(w)
        observe(policy, w, cost(w), w, [min(converged(rng), w)], [left])
    return chosen


def test_latency_bound_device_climbs_to_a_large_window():
    chosen = _drive(WindowPolicy(), cost=lambda rows: 1.0 + 0.001 * rows, converged=lambda rng: 40)
    # 1 (warm-up, measured), then 2, 8, 32 and 64, one round each: a window whose call costs no more
    # than the one before cannot accept fewer steps, so its probe is won as soon as its cost is timed
    # and the next is probed at once
    assert chosen[:6] == [1, 1, 2, 8, 32, 64] and set(chosen[6:]) == {64}


def test_a_probe_that_pays_less_than_it_promised_is_kept():
    # 8 was probed on a promise of 2x (the cost looked flat from 1 and 2 rows); its transition round
    # does 1.6x the work per second of 2: less than a 4x jump needs to start, more than the gain a
    # window needs to stay (and 16, at 40 per call, is aborted after its one round)
    chosen = _drive(WindowPolicy(), cost=lambda rows: 1.0 if rows <= 2 else 2.5 if rows <= 8 else 40.0,
                    converged=lambda rng: 40)
    assert chosen[:9] == [1, 1, 2] + [8] * 5 + [16] and set(chosen[9:]) == {8}


def test_a_hard_step_that_stops_every_window_does_not_lose_a_probe():
    # every 5th round only one slice converges, whatever the window (a step whose token changes the
    # rest): a(W) / a(W / 2) is measured on the same rounds, and a window is judged on two rounds at
    # least, so a probe that meets it still climbs (judged on its own acceptance in one round, W = 2
    # looks worse than 1 and the policy falls back every 5th round)
    rounds = iter(range(10 ** 6))
    chosen = _drive(WindowPolicy(), cost=lambda rows: rows ** 0.25, converged=lambda rng: 1 if next(rounds) % 5 == 4 else 40)
    assert set(chosen[20:]) == {64} and all(a <= b for a, b in zip(chosen, chosen[1:]))


def test_a_larger_window_is_compared_with_a_smaller_one_on_the_same_rounds():
    # W = 4 accepted 4 steps in every round; then two measured rounds of W = 8 accept 8 and 1 (a hard
    # step). On those rounds W = 4 would have accepted 4 and 1: doubling gained (8 + 1) / (4 + 1) = 1.8,
    # whatever a(4) averaged over earlier rounds
    policy = WindowPolicy()
    policy.start(1024)
    for w, k in [(4, 4.0)] * 8 + [(8, 4.0), (8, 4.0), (8, 8.0), (8, 1.0)]:  # (transition, settling, measured)
        observe(policy, w, 1.0, w, [k], [100])
    assert policy.accepted(8) / policy.accepted(4) == pytest.approx(1.8)


def test_a_probe_is_skipped_when_it_could_cost_more_than_the_run_has_left():
    # cost 0.6 + 0.4 rows: from W = 1's rounds alone, W = 2 promises a gain and is probed; with 10 steps
    # left, one round of W = 2 at the cost a probe risks (in proportion to rows) is 1.0, more than
    # `risk` (5%) of the 10 rounds left
    cost, one = (lambda rows: 0.6 + 0.4 * rows), (lambda rng: 1)
    assert _drive(WindowPolicy(), cost, one, rounds=20)[2] == 2
    assert set(_drive(WindowPolicy(), cost, one, rounds=20, left=10)) == {1}


def test_samples_near_their_end_do_not_measure_larger_windows():
    # a sample with 3 steps left accepts at most 3: it says nothing of W = 4 or 8
    policy = WindowPolicy()
    policy.start(1024)
    for _ in range(5):  # the run's first round (a transition from W = 1), two settling rounds, measured ones
        observe(policy, 8, 1.0, 8, [8.0], [100])
    observe(policy, 8, 1.0, 8, [3.0], [3])
    assert policy.accepted(8) == pytest.approx(8.0) and policy.accepted(2) == pytest.approx(2.0)


def test_the_cost_model_never_decreases_with_rows():
    # timing noise on a flat device: 16 rows measured faster than 8; pooled, they cost the same, so
    # acceptance alone ranks them
    policy = WindowPolicy()
    policy.start(1024)
    for w, seconds in ((1, 1.0), (1, 1.0), (8, 1.2), (16, 1.0)):
        observe(policy, w, seconds, w, [1.0], [100])
    assert policy.cost(8) == policy.cost(16) == pytest.approx(1.1) and policy.cost(4) < 1.1


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
        observe(policy, 8, 1.0, 8, [k, 8.0], [100, 100])
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
        observe(policy, 1, seconds, 1, [1], [10])
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
        assert all(w["throughput"] > 0 for w in r.policy["windows"].values() if w["measured"] > 0)


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


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_auto_climbs_on_a_simulated_latency_bound_device(noise):
    """A latency-bound accelerator (a call costs the same up to 64 rows) on a simulated clock
    (bench.auto_window_sim: deterministic, with optional seeded log-normal jitter per call), the
    mixture oracle's real acceptance at L = 128, N = 512. The best fixed window (64) is 28x; a fresh
    sampler climbs 1, 2, 8, 32, 64 (measured 0.57 of the best without noise, 0.44 with), a warm one
    starts high (1.00 and 0.91)."""
    from bench.auto_window_sim import evaluate

    flat = evaluate("mixture L=128", "latency64", noise=noise, seed=0)
    best = flat["best_fixed"]["speedup"]
    assert max(flat["auto"]["windows"]) >= 32 and min(flat["auto (warm)"]["windows"][:-1]) >= 8
    assert flat["auto (warm)"]["speedup"] >= 0.8 * best and flat["auto"]["speedup"] >= 0.35 * best


def test_auto_on_simulated_devices_with_real_acceptance():
    # the HMM oracle's real acceptance, a modelled clock (bench.auto_window_sim: deterministic). Measured:
    # compute-bound, fresh 0.99x sequential (one probe round of W = 2); latency-bound, best fixed
    # W = 64 at 13.1x, warm 0.78 of it, fresh 0.64 (it climbs 1, 2, 8, 32 in its first rounds)
    from bench.auto_window_sim import evaluate

    linear = evaluate("hmm L=128", "linear", noise=0.0, seed=0)
    assert linear["auto"]["speedup"] >= 0.97 and linear["auto (warm)"]["speedup"] >= 0.97
    flat = evaluate("hmm L=128", "latency64", noise=0.0, seed=0)
    best = flat["best_fixed"]["speedup"]
    assert flat["auto (warm)"]["speedup"] >= 0.7 * best and flat["auto"]["speedup"] >= 0.5 * best
