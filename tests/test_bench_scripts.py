"""The benchmark scripts run (a dry run at tiny sizes): a change to a result's fields must not break them."""
import pytest


def test_the_end_to_end_bench_runs_its_tiny_preset(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import e2e

    result = e2e.run(tmp_path / "e2e", preset="tiny", device="cpu", budget_s=60.0)
    assert result["errors"] == []
    runs = [r for r in result["rows"] if "time_s" in r]
    assert runs and all(r["identical"] for r in runs if r["sampler"] == "pit")
    assert any(r.get("residual_total") for r in runs)  # the Picard residuals were recorded
