"""Schedules (alpha, rate, sigma, exact integral), time grids, and the integer rule tables."""
import math

import pytest
import torch

import pit_sampler as ps
from pit_sampler.steps.tau_leaping import make_plan
from pit_sampler.rules import FIRST, REJECT, TWEEDIE, UNREACHABLE, step_tables
from pit_sampler.schedules import Schedule, get_schedule, time_grid

SCHEDULES = [ps.LogLinear(), ps.LogLinear(eps=0.05), ps.Linear(), ps.Cosine()]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_schedule_derivatives_and_integral(sched):
    t = torch.linspace(0.01, 0.99, 37, dtype=torch.float64)
    assert float(sched.alpha(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1.0)
    assert (sched.alpha(t[1:]) < sched.alpha(t[:-1])).all()
    h = 1e-6
    numeric = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(sched.alpha_prime(t), numeric, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sched.rate(t), -numeric / (1 - sched.alpha(t)), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(sched.sigma(t), -numeric / sched.alpha(t), rtol=1e-5, atol=1e-8)
    # exact integral of r against a fine trapezoid rule
    lo, hi = 0.05, 0.8
    grid = torch.linspace(lo, hi, 200001, dtype=torch.float64)
    trapz = torch.trapezoid(sched.rate(grid), grid)
    assert float(sched.integral(hi, lo)) == pytest.approx(float(trapz), rel=1e-8)


def test_loglinear_rate_is_one_over_t():
    t = torch.tensor([0.001, 0.1, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ps.LogLinear().rate(t), 1 / t)
    torch.testing.assert_close(ps.Linear().rate(t), 1 / t)


@pytest.mark.parametrize("grid", ["uniform", "geometric", "cosine"])
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_time_grid(grid, n):
    ts = ps.time_grid(n, grid, t_max=0.9, t_min=0.002)
    assert ts.shape == (n + 1,) and ts.dtype == torch.float64
    assert ts[0] == 0.9 and ts[-1] == 0.002 and (ts[1:] < ts[:-1]).all()
    if grid == "geometric" and n > 1:
        ratio = ts[1:] / ts[:-1]
        torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()))
    elif grid == "cosine":  # (t - t_min) / (t_max - t_min) = cos(pi j / 2N): small steps first
        s = torch.arange(n + 1, dtype=torch.float64) / n
        torch.testing.assert_close((ts - 0.002) / (0.9 - 0.002), torch.cos(0.5 * math.pi * s), rtol=0, atol=1e-15)
        d = ts[:-1] - ts[1:]
        assert (d[1:] > d[:-1]).all()
    elif n > 1:
        d = ts[:-1] - ts[1:]
        torch.testing.assert_close(d, torch.full_like(d, d[0].item()))


@pytest.mark.parametrize("kwargs", [dict(num_steps=0), dict(num_steps=2.5), dict(num_steps=4, t_min=0.0),
                                    dict(num_steps=4, t_min=1.0), dict(num_steps=4, t_min=-1e-3),
                                    dict(num_steps=4, grid="log"), dict(num_steps=4, t_max=1.5)])
def test_time_grid_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ps.time_grid(**kwargs)


def _u(x):
    return (x.double() + 0.5) / 2**32


@pytest.mark.parametrize("grid", ["uniform", "geometric", "cosine"])
@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_poisson_thresholds_are_the_inverse_cdf(sched, grid):
    """K = #{k : x >= T[j, k]} equals the float64 Poisson inverse CDF at U = (x + 0.5) / 2**32."""
    times = ps.time_grid(12, grid)
    tab = step_tables(sched, times, "first")
    assert tab.rule == FIRST and tab.cdf.shape[0] == 13 and (tab.cdf[-1, 0] == 0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2**32, (4000,), generator=g, dtype=torch.int64)
    edges = torch.tensor([0, 1, 2**31, 2**32 - 2, 2**32 - 1], dtype=torch.int64)
    x = torch.cat([x, edges])
    for j in range(12):
        lam = float((times[j] - times[j + 1]) * sched.rate(times[j]))
        # around each threshold too: the integer boundaries are where float and integer forms could disagree
        near = tab.cdf[j][tab.cdf[j] < UNREACHABLE]
        xs = torch.cat([x, (near - 1).clamp(min=0), near.clamp(max=2**32 - 1)])
        k = (xs[:, None] >= tab.cdf[j][None]).sum(1)
        cdf, p, expect = math.exp(-lam), math.exp(-lam), torch.zeros_like(xs)
        u = _u(xs)
        for i in range(1, 60):
            expect += (u > cdf).long()
            p *= lam / i
            cdf += p
        assert torch.equal(k, expect), (j, lam)


def test_tweedie_and_reject_tables():
    sched, times = ps.Cosine(), ps.time_grid(9, "uniform")
    tw = step_tables(sched, times, "tweedie")
    assert tw.rule == TWEEDIE and tw.cdf.shape == (10, 1)
    for j in range(9):
        a0, a1 = sched.alpha(times[j]), sched.alpha(times[j + 1])
        p = float((a1 - a0) / (1 - a0))
        thr = int(tw.cdf[j, 0])
        assert _u(torch.tensor(thr)) > 1 - p >= _u(torch.tensor(thr - 1))
        assert float(tw.rate[j]) == pytest.approx(float(a1 / a0 - 1), rel=1e-6)
    rj = step_tables(sched, times, "reject")
    assert rj.rule == REJECT and torch.equal(rj.cdf, step_tables(sched, times, "first").cdf)
    with pytest.raises(ValueError):
        step_tables(sched, times, "poisson")


def test_score_rates():
    sched, times = ps.LogLinear(), ps.time_grid(5, "geometric")
    tab = step_tables(sched, times, "reject")
    expect = (times[:-1] - times[1:]) * sched.sigma(times[:-1])
    torch.testing.assert_close(tab.rate[:-1], expect.float())
    assert tab.rate.dtype == torch.float32


class _alarm:
    """Turn a hang into a test failure (SIGALRM; the loops it guards are interruptible Python)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        import signal

        def fail(*_):
            raise TimeoutError(f"did not finish in {self.seconds} s")

        self.previous = signal.signal(signal.SIGALRM, fail)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        import signal

        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


@pytest.mark.parametrize("schedule", ["loglinear", "linear", "cosine"])
@pytest.mark.parametrize("rule", ["reject", "first", "tweedie"])
@pytest.mark.parametrize("t_min", [5e-9, 1e-17, 1e-300])
def test_tiny_t_min_neither_hangs_nor_corrupts_the_tables(schedule, rule, t_min):
    """Used to hang (1 - alpha rounded to 0, rate inf, p = 0 * inf = NaN) or give -2**63 thresholds."""
    with _alarm(30):
        if schedule == "cosine" and t_min == 1e-300:  # 2 sin^2(pi t / 4) underflows: say so
            with pytest.raises(ValueError, match="t_min"):
                step_tables(get_schedule(schedule), time_grid(64, "geometric", 1.0, t_min), rule)
            return
        tables = step_tables(get_schedule(schedule), time_grid(64, "geometric", 1.0, t_min), rule)
    cdf = tables.cdf
    assert (cdf >= 0).all() and (cdf <= 2**32).all()
    assert (cdf[:, 1:] >= cdf[:, :-1]).all()  # thresholds of a CDF increase
    assert cdf[-1, 0] == 0  # the final fill


def test_parameters_that_cannot_be_computed_are_rejected():
    with pytest.raises(ValueError, match="rate"):
        step_tables(get_schedule("loglinear"), time_grid(8, "uniform", 1e-310, 5e-324), "reject")

    class Increasing(Schedule):  # alpha grows with t: nothing would ever unmask before the final fill
        def alpha(self, t):
            return 0.5 + 0.4 * torch.as_tensor(t, dtype=torch.float64)

        def alpha_prime(self, t):
            return torch.full_like(torch.as_tensor(t, dtype=torch.float64), 0.4)

    with pytest.raises(ValueError, match="decrease"):
        step_tables(Increasing(), time_grid(8), "reject")


def test_cosine_rate_does_not_cancel_at_small_t():
    cos = get_schedule("cosine")
    for t in (1e-7, 1e-8, 1e-12):
        exact = 2.0 * math.sin(math.pi * t / 4) ** 2  # 1 - cos(pi t / 2), cancellation-free
        assert float(cos.masked(t)) == pytest.approx(exact, rel=1e-14)
        assert float(cos.rate(t)) * t == pytest.approx(2.0, rel=1e-9)  # r(t) ~ 2 / t near 0


def test_tables_and_plans_cost_what_is_used():
    """num_steps = 10**6 builds its tables vectorised (was a 38 s Python loop); the plan holds at most
    L + 1 steps per sample with skip-inactive and is a broadcast view without it; a window longer than
    the steps left is cut to them, rounded up to a power of two (window = 2e5 used to allocate 2e5 states)."""
    with _alarm(60):
        tables = step_tables(get_schedule("loglinear"), time_grid(10**6), "reject")
    assert tables.cdf.shape[0] == 10**6 + 1
    L, B = 6, 64
    x = torch.full((B, L), 7)

    def den(x, t):
        return torch.randn(x.shape[0], L, 8, generator=torch.Generator().manual_seed(0))

    sampler = ps.PITSampler(den, mask_id=7, num_steps=10**5, window=200_000, vocab_size=8)
    seeds = torch.arange(B)
    plan = make_plan(x, seeds, sampler.engine.rule.spec, 7, 10**5, skip_inactive=True, need_rank=False)
    assert plan.steps.shape[1] <= L + 1 and (plan.total <= L + 1).all()
    plan = make_plan(x, seeds, sampler.engine.rule.spec, 7, 10**5, skip_inactive=False, need_rank=False)
    assert plan.steps.stride(0) == 0 and (plan.total == 10**5 + 1).all()  # no [B, N] copy
    out = sampler.sample(x, seed=1)
    assert not (out.tokens == 7).any() and max(out.windows) <= 2 * L  # steps left, rounded up to a power of 2
