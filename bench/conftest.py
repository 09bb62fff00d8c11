"""Command-line options of the benchmarks: ``--bench-preset`` (sizes) and ``--bench-device``."""

from __future__ import annotations

import pytest
import torch

PRESET_NAMES = ("small", "gpu")


def pytest_addoption(parser):
    group = parser.getgroup("pit-sampler benchmarks")
    group.addoption(
        "--bench-preset",
        default="small",
        choices=PRESET_NAMES,
        help="benchmark sizes: 'small' (CPU/CI, under a few minutes) or 'gpu' (real sizes)",
    )
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> torch.device:
    """The device the op benchmarks run on."""
    name = pytestconfig.getoption("--bench-device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
