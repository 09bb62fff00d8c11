"""``cuda_graph=True`` on a GPU (skipped without one): each round shape is captured once
(:class:`pit_sampler.engine.graphs.GraphedRound`) and replayed.

A graphed run gives the tokens and rounds of an eager run, for both samplers, a fixed and the auto
window, both parametrizations, the full and the positions forms, prompts and ``sync_every > 1``; a
second run of the same shapes replays what the first captured (no new capture); graphs and
``compile=True`` combine; and the shipped digits model and the SEDD adapter run captured.
"""
import pytest
import torch

import pit_sampler as ps
from pit_sampler.testing import Gathered

from test_compile import CASES, ExactDenoiser, _x

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SAMPLERS = [(ps.TauLeapingSampler, None), (ps.PITSampler, 4), (ps.PITSampler, "auto")]


def _kwargs(extra: dict, window, **more) -> dict:
    return dict(mask_id=8, num_steps=16, vocab_size=9, sync_every=3, **extra, **more,
                **({} if window is None else {"window": window}))


@pytest.mark.parametrize("name,positions,extra", CASES, ids=[f"{c[0]}-{'positions' if c[1] else 'full'}" for c in CASES])
@pytest.mark.parametrize("cls,window", SAMPLERS, ids=["sequential", "pit-4", "pit-auto"])
def test_graphed_round_equals_eager(name, positions, extra, cls, window):
    den = ExactDenoiser(9, 6, 8, device="cuda")
    den = Gathered(den) if positions else den
    x = _x().cuda()
    want = cls(den, **_kwargs(extra, window)).sample(x, seed=7)
    sampler = cls(den, **_kwargs(extra, window, cuda_graph=True))
    got = sampler.sample(x, seed=7)
    captured = len(sampler.engine._round.graphs)
    again = sampler.sample(x, seed=7)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(again.tokens, want.tokens)
    assert 1 <= captured
    if window != "auto":  # auto's windows follow measured time; a fixed window's run repeats its shapes
        assert got.rounds == want.rounds
        assert len(sampler.engine._round.graphs) == captured, "the second run captured new graphs"


def test_graphed_and_compiled_round_equals_eager():
    den = Gathered(ExactDenoiser(9, 6, 8, device="cuda"))
    x = _x().cuda()
    want = ps.PITSampler(den, **_kwargs({}, 4)).sample(x, seed=5)
    got = ps.PITSampler(den, **_kwargs({}, 4, cuda_graph=True, compile=True)).sample(x, seed=5)
    assert torch.equal(got.tokens, want.tokens) and got.rounds == want.rounds


@pytest.mark.parametrize("cls,window", SAMPLERS[:2], ids=["sequential", "pit-4"])
def test_graphed_rounds_on_the_shipped_model_and_the_sedd_adapter(cls, window):
    """The digits model (positions protocol) and the SEDD adapter run captured. Their logits may
    depend on the batch shape on a GPU (cuBLAS picks kernels by shape), so the reference is a run
    with the same bucketed shapes without capture: ``compile`` with dynamo's eager backend."""
    from pit_sampler.adapters import SEDDScoreModel
    from pit_sampler.models import digits, load_pretrained

    model = load_pretrained("digits").cuda()
    exact = ExactDenoiser(9, 6, 8, device="cuda")
    sedd = SEDDScoreModel(lambda x, sigma: exact(x, sigma), mask_id=8, vocab_size=9)
    cases = [(model, torch.full((5, digits.LENGTH), digits.MASK_ID, device="cuda"),
              dict(mask_id=digits.MASK_ID, vocab_size=digits.VOCAB_SIZE)),
             (sedd, _x().cuda(), dict(mask_id=8, vocab_size=9, parametrization="score", schedule="loglinear"))]
    for den, x, kw in cases:
        kw = dict(num_steps=24, sync_every=2, **kw, **({} if window is None else {"window": window}))
        want = cls(den, compile={"backend": "eager"}, **kw).sample(x, seed=11)
        got = cls(den, cuda_graph=True, **kw).sample(x, seed=11)
        assert torch.equal(got.tokens, want.tokens) and got.rounds == want.rounds


@pytest.mark.parametrize("make", [
    lambda den, **kw: ps.TauLeapingSampler(den, **_kwargs({}, None), **kw),
    lambda den, **kw: ps.MaskGITSampler(den, mask_id=8, num_steps=8, vocab_size=9, sync_every=3, **kw),
], ids=["sequential", "maskgit"])
def test_a_new_prompt_replays_the_graphs_of_the_last(make):
    """Rounds are keyed by shapes only: a prompt with other ids at the same masked positions (the same
    sequential plan, so the same shapes) captures no new graph; every graph shares one memory pool."""
    den = ExactDenoiser(9, 6, 8, device="cuda")
    x = _x().cuda()
    sampler = make(den, cuda_graph=True)
    first = sampler.sample(x, seed=7)
    assert torch.equal(first.tokens, make(den).sample(x, seed=7).tokens)
    captured = len(sampler.engine._round.graphs)
    y = x.clone()
    y[0, 0] = 7  # another prompt id, the same masked positions
    sampler.sample(y, seed=7)
    assert len(sampler.engine._round.graphs) == captured
    assert sampler.engine._round.pool is not None
