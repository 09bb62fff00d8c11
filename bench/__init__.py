"""Benchmarks of pit-sampler (not part of the test suite; see bench/README.md).

``pytest bench/ --benchmark-only`` runs the op microbenchmarks (:mod:`bench.test_bench_ops`);
:mod:`bench.e2e` compares sequential tau-leaping with PIT end to end; ``bash bench/run_gpu.sh`` runs
everything that needs a GPU in one command and writes ``bench/results/``.
"""
