"""The suite's two tiers, in one place.

* **default** (``python -m pytest -n 2``, README's command; see README for its time):
  every test's cheapest cases that still exercise each branch. Exactness (PIT with ``tol = 0``
  equals sequential) on every CPU backend, the reference, native C++ and Triton (interpreter), for
  both step rules; every backend against the reference on a covering set of rule x parametrization x
  dtype; the statistical tests; the seeded differential fuzz (100 native, 8 Triton cases); compile;
  distributed; the engine's regression tests; the shipped models and adapters.
* **extended** (``python -m pytest -n 2 -m extended``; ``.ci/run`` runs both tiers): the exhaustive sweeps
  the default tier samples: every Triton-interpreter combination (slow: numpy), the full fuzz (400
  native, 30 Triton cases), every Hugging Face class and dtype, both shipped digits models, every
  rule through the positions path on Triton, the cached block sampler's rules on Triton.

A case belongs to the extended tier by carrying the ``extended`` marker; ``pyproject.toml`` deselects
it by default (``-m "not extended"``; a later ``-m`` on the command line replaces that).
"""

import pytest

EXTENDED = pytest.mark.extended


def tiered(values, default) -> list:
    """``values`` as parametrize entries; those not in ``default`` are marked ``extended``
    (a tuple is one entry of several arguments)."""
    out = []
    for v in values:
        if v in default:
            out.append(v)
        else:
            out.append(pytest.param(*v, marks=EXTENDED) if isinstance(v, tuple) else pytest.param(v, marks=EXTENDED))
    return out
