"""``compile=True`` compiles the whole round (denoiser call, sweep, acceptance, slide) with
``torch.compile(fullgraph=True)``: no graph break (``fullgraph`` raises on one), tokens equal to
eager, and a bounded number of compilations over a whole run.

Round shapes change only at poll points and, when compiled, come in powers of two (batch after
compaction, the window's tail, the positions budget), so the compilations of a run are at most
``MAX_COMPILES_PER_WINDOW`` per window size used: the first shape and one recompilation, after which
dynamo's automatic dynamic shapes serve every further size.
"""
import pytest
import torch
import torch._dynamo

import pit_sampler as ps
from pit_sampler import ops
from pit_sampler.testing import Gathered
from tiers import EXTENDED

MAX_COMPILES_PER_WINDOW = 2


class ExactDenoiser:
    """A small batch-invariant denoiser whose float32 arithmetic is exact (small integers scaled by 1/8),
    so compiled and eager code give identical logits in any evaluation order; it depends on ``t``."""

    def __init__(self, vocab: int, length: int, mask_id: int, seed: int = 0, device: str = "cpu"):
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randint(-3, 4, (vocab, 8), generator=g).float().to(device)
        self.position = torch.randint(-3, 4, (length, 8), generator=g).float().to(device)
        self.out = torch.randint(-2, 3, (8, vocab), generator=g).float().to(device)
        self.not_mask = torch.arange(vocab, device=device) != mask_id

    def __call__(self, x, t):
        h = self.embed[x] + self.position
        h = h + h.sum(1, keepdim=True) + (t > 0.5).float()[:, None, None]
        logits = (h @ self.out) * 0.125
        return torch.where(self.not_mask, logits, float("-inf"))


class _CountingBackend:
    """A ``torch.compile`` backend that counts (re)compilations and runs the traced graph as is."""

    def __init__(self):
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return gm.forward


def _x(B=5, L=6, mask_id=8):
    x = torch.full((B, L), mask_id)
    x[0, :2] = torch.tensor([1, 2])
    x[-1, 3:] = torch.tensor([0, 4, 5])
    return x


CASES = [
    ("mean", False, {}),
    ("mean", True, {}),
    ("score", False, dict(parametrization="score", schedule="linear", t_max=0.9)),
    ("score", True, dict(parametrization="score", schedule="linear", t_max=0.9)),
]


@pytest.mark.parametrize("name,positions,extra", CASES, ids=[f"{c[0]}-{'positions' if c[1] else 'full'}" for c in CASES])
@pytest.mark.parametrize("cls,window", [(ps.TauLeapingSampler, None), (ps.PITSampler, 4), (ps.PITSampler, "auto")])
def test_compiled_round_equals_eager_with_bounded_compiles(name, positions, extra, cls, window):
    torch._dynamo.reset()
    den = ExactDenoiser(9, 6, 8)
    den = Gathered(den) if positions else den
    kw = dict(mask_id=8, num_steps=16, vocab_size=9, **extra, **({} if window is None else {"window": window}))
    counter = _CountingBackend()
    with ops.use_backend("reference"):
        compiled = cls(den, compile={"backend": counter}, **kw)
        want = cls(den, **kw).sample(_x(), seed=7)
        got = compiled.sample(_x(), seed=7)
        again = compiled.sample(_x(), seed=8)  # a second run of the same shapes
    assert torch.equal(got.tokens, want.tokens)
    if window != "auto":  # auto's windows follow measured wall time, which compilation changes
        assert got.rounds == want.rounds
    assert not (again.tokens == 8).any()
    used = len(set(got.windows) | set(again.windows))
    # auto also returns to windows it left (W = 1 after a probe of 2): one more specialisation at most
    bound = MAX_COMPILES_PER_WINDOW * (used + (window == "auto"))
    assert 1 <= counter.compiles <= bound, (counter.compiles, used)


def _digits(name):
    from pit_sampler.models import digits
    from pit_sampler.models import load_pretrained

    return load_pretrained(name, dtype=torch.float32), digits.MASK_ID, digits.VOCAB_SIZE, digits.LENGTH, {}


def _bert():
    transformers = pytest.importorskip("transformers")
    from pit_sampler.adapters import HFMaskedLM

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=31, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16)
    model = transformers.BertForMaskedLM(config).eval()
    return HFMaskedLM(model, mask_id=30), 30, 31, 10, {}


def _sedd():
    from pit_sampler.adapters import SEDDScoreModel

    den = ExactDenoiser(9, 6, 8)
    return (SEDDScoreModel(lambda x, sigma: den(x, sigma), mask_id=8, vocab_size=9), 8, 9, 6,
            dict(parametrization="score", schedule="loglinear"))


@pytest.mark.parametrize("make", [lambda: _digits("digits"),
                                  pytest.param(lambda: _digits("digits-time"), marks=EXTENDED), _bert, _sedd],
                         ids=["digits", "digits-time", "hf-bert", "sedd"])
@pytest.mark.parametrize("cls,window", [(ps.TauLeapingSampler, None), (ps.PITSampler, 4)])
def test_compiled_round_on_shipped_models_and_adapters(make, cls, window):
    """The shipped digits models (positions protocol), a real Hugging Face class through ``HFMaskedLM``
    and the SEDD adapter: the whole round traces with ``fullgraph=True``, equals eager, and compiles
    a bounded number of times over a run."""
    torch._dynamo.reset()
    den, mask_id, V, L, extra = make()
    x = torch.full((3, L), mask_id)
    x[0, :2] = torch.tensor([1, 2])
    kw = dict(mask_id=mask_id, num_steps=12, vocab_size=V, **extra, **({} if window is None else {"window": window}))
    counter = _CountingBackend()
    want = cls(den, **kw).sample(x, seed=3)
    got = cls(den, compile={"backend": counter}, **kw).sample(x, seed=3)
    assert torch.equal(got.tokens, want.tokens) and got.rounds == want.rounds
    assert 1 <= counter.compiles <= MAX_COMPILES_PER_WINDOW * len(set(got.windows)), counter.compiles


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("order", ["confidence", "random"])
def test_compiled_maskgit_round_equals_eager_with_bounded_compiles(order, window):
    """The k-per-step rule on the same engine: its round (denoiser call, the fused maskgit sweep,
    acceptance, slide) traces whole with ``fullgraph=True``, equals eager over ragged rows (a prompt,
    steps that unmask nothing), and compiles at most twice per window size used."""
    torch._dynamo.reset()
    den = ExactDenoiser(9, 6, 8)
    kw = dict(mask_id=8, num_steps=8, vocab_size=9, order=order, window=window)
    counter = _CountingBackend()
    with ops.use_backend("reference"):
        compiled = ps.MaskGITSampler(den, compile={"backend": counter}, **kw)
        want = ps.MaskGITSampler(den, **kw).sample(_x(), seed=7)
        got = compiled.sample(_x(), seed=7)
        again = compiled.sample(_x(), seed=8)
    assert torch.equal(got.tokens, want.tokens) and got.rounds == want.rounds
    assert not (again.tokens == 8).any()
    used = len(set(got.windows) | set(again.windows))
    assert 1 <= counter.compiles <= MAX_COMPILES_PER_WINDOW * used, (counter.compiles, used)


@pytest.mark.parametrize("cls,window", [(ps.TauLeapingSampler, None), (ps.PITSampler, 4)])
def test_compiled_trapezoidal_round_equals_eager(cls, window):
    """The trapezoidal rule carries the previous state's logits between rounds: the round traces whole,
    equals eager, and compiles at most once more than the bound (the first round has no carry yet)."""
    torch._dynamo.reset()
    den = ExactDenoiser(9, 6, 8)
    kw = dict(mask_id=8, num_steps=8, vocab_size=9, solver="trapezoidal", grid="uniform",
              **({} if window is None else {"window": window}))
    counter = _CountingBackend()
    want = cls(den, **kw).sample(_x(), seed=1)
    got = cls(den, compile={"backend": counter}, **kw).sample(_x(), seed=1)
    assert torch.equal(got.tokens, want.tokens) and got.rounds == want.rounds
    assert 1 <= counter.compiles <= MAX_COMPILES_PER_WINDOW * len(set(got.windows)) + 1, counter.compiles
