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


def test_the_auto_window_bench_runs_and_tables_its_results(monkeypatch):
    """``bench.auto_window`` on one tiny oracle setting: every configuration's tokens are checked
    against sequential inside, the paired speed-ups lie within their ranges, and the network's own
    time is separated from the sampler's."""
    import torch

    from bench import auto_window
    from bench.models import OracleDenoiser, make_transformer
    from pit_sampler.testing import make_oracle

    den = OracleDenoiser(make_oracle("hmm", 0, num_tokens=6, length=16), make_transformer("cost", 16, vocab_size=7))
    setting = ("tiny hmm", "oracle", den, torch.full((1, 16), den.mask_id),
               dict(mask_id=den.mask_id, num_steps=32, vocab_size=den.vocab_size))
    monkeypatch.setattr(auto_window, "settings", lambda: [setting])
    result = auto_window.run(reps=2)
    (row,) = result["rows"]
    for entry in [row["auto"], row["auto (warm)"], *row["fixed"].values()]:
        p = entry["paired"]
        assert len(entry["times"]) == 2 and p["min"] <= p["median"] <= p["max"]
        assert 0 <= entry["outside_per_round"] < max(entry["times"]) / entry["rounds"]
    assert row["best_fixed"]["window"] in row["fixed"]
    assert "| tiny hmm | " in auto_window.markdown(result)
