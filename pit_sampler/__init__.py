"""pit-sampler: fast, exact sampling for masked (absorbing) discrete diffusion models.

``TauLeapingSampler`` (sequential, skip-inactive) and ``PITSampler`` (parallel-in-time Picard
iterations, bit-identical to the sequential sample with ``tol=0``), ``MaskGITSampler`` (k-per-step
unmasking by confidence, margin, entropy or at random, sequential or exact Picard), over the ops in
:mod:`pit_sampler.ops`. The semantic contract: docs/sampler-spec.md.
"""

from . import ops
from .config import MaskGITConfig, PITConfig, SamplerConfig, TauLeapingConfig
from .guidance import ClassifierFreeGuidance
from .maskgit import MaskGITSampler
from .noise import sample_seeds
from .rules import RULES
from .samplers import PITSampler, SampleResult, TauLeapingSampler
from .schedules import Cosine, Linear, LogLinear, Schedule, get_schedule, time_grid

__version__ = "0.1.0"
__all__ = [
    "PITSampler",
    "MaskGITSampler",
    "ClassifierFreeGuidance",
    "TauLeapingSampler",
    "SampleResult",
    "SamplerConfig",
    "TauLeapingConfig",
    "PITConfig",
    "MaskGITConfig",
    "ops",
    "Schedule",
    "LogLinear",
    "Linear",
    "Cosine",
    "get_schedule",
    "time_grid",
    "sample_seeds",
    "RULES",
]
