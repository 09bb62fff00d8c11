"""``python -m pit_sampler demo`` with small settings: digits (PNG + metrics) and the oracles."""

import os
import subprocess
import sys

import pytest
import torch

from pit_sampler.__main__ import main
from pit_sampler.models import PRETRAINED, WEIGHTS_DIR


def test_demo_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    if not (WEIGHTS_DIR / PRETRAINED["digits"]).is_file():
        pytest.skip("digits weights not shipped")
    out = tmp_path / "grid.png"
    res = main(["demo", "--batch", "4", "--steps", "32", "--window", "4", "--out", str(out), "--no-progress"])
    assert res["identical"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = res["metrics"]
    seq, pit = (metrics[name] for name in res["runs"])
    assert seq == pit  # identical tokens, identical scores
    assert set(metrics) == {*res["runs"], "real (held-out)"}
    assert set(seq) == {"confidence", "class_entropy", "precision", "nn_distance", "copies"}
    assert metrics["real (held-out)"]["copies"] == 0.0  # held-out images are not in the training split
    text = capsys.readouterr().out
    assert "rounds ratio" in text and "confidence" in text and "precision" in text and "NN distance" in text


def test_demo_checks_the_output_folder_before_sampling(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--batch", "2", "--steps", "8", "--out", str(tmp_path / "missing" / "x.png"), "--no-progress"])
    err = capsys.readouterr()
    assert "does not exist" in err.err and "rounds" not in err.out  # nothing was sampled


def test_demo_window_auto_says_what_it_chose(capsys):
    res = main(["demo", "--model", "mixture", "--batch", "8", "--steps", "32", "--no-progress"])
    assert res["identical"]
    assert "window='auto' chose W=" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--window", "0"])


@pytest.mark.parametrize("model", ["mixture", "hmm", "independent"])
def test_demo_oracles(model, capsys):
    res = main(["demo", "--model", model, "--batch", "16", "--steps", "32", "--window", "8", "--no-progress"])
    assert res["identical"]
    seq, pit = res["runs"].values()
    assert torch.equal(seq["result"].tokens, pit["result"].tokens)
    assert res["ratio"] == seq["result"].rounds / pit["result"].rounds
    assert set(res["loglik"]) == {*res["runs"], "exact samples"}
    text = capsys.readouterr().out
    assert "exact samples (oracle.sample)" in text and "mean log-lik" in text


def test_demo_entry_point_and_bad_arguments():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "pit_sampler", "demo", "--model", "independent", "--batch", "4", "--steps", "8", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "identical" in done.stdout and "yes" in done.stdout
    with pytest.raises(SystemExit):
        main(["demo", "--batch", "0"])
    with pytest.raises(SystemExit):
        main(["demo", "--model", "gpt2"])


def test_demo_prompt_options_need_the_text_model(monkeypatch, capsys):
    """``--prompt``/``--max-new-tokens`` are refused (exit 2) where they would be ignored; no demo runs."""
    import pit_sampler.__main__ as cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("a demo ran, ignoring --prompt/--max-new-tokens")

    for name in ("demo_digits", "demo_oracle", "demo_text", "demo_text_prompt"):
        monkeypatch.setattr(cli, name, must_not_run)
    for argv, message in [
        (["demo", "--prompt", "x"], "--prompt and --max-new-tokens need --model text (not --model digits)"),
        (["demo", "--max-new-tokens", "4"], "need --model text"),
        (["demo", "--model", "mixture", "--prompt", "x"], "need --model text (not --model mixture)"),
        (["demo", "--model", "text", "--max-new-tokens", "4"], "--max-new-tokens goes with --prompt"),
        (["demo", "--model", "text", "--prompt", "x", "--max-new-tokens", "-1"], "must be an int >= 0"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv


def test_digit_metrics_and_validation():
    pytest.importorskip("sklearn")
    from pit_sampler.models import digits

    data = digits.digits_split()
    train = data["train_tokens"]
    assert train.shape == (1437, 64) and data["test_tokens"].shape == (360, 64)
    classifier = digits.DigitClassifier(train, data["train_labels"])
    copies = digits.digit_metrics(train[:50], classifier, train)
    assert copies["copies"] == 1.0 and copies["nn_distance"] == 0.0 and copies["precision"] == 1.0
    real = digits.digit_metrics(data["test_tokens"], classifier, train)
    assert real["confidence"] > 0.9 and real["class_entropy"] > 3.3 and real["precision"] > 0.8 and real["copies"] == 0
    noise = torch.randint(0, 17, (50, 64), generator=torch.Generator().manual_seed(0))
    assert digits.digit_metrics(noise, classifier, train)["precision"] == 0.0
    with pytest.raises(ValueError, match="0..16"):
        digits.digit_metrics(torch.full((2, 64), digits.MASK_ID), classifier, train)
    with pytest.raises(ValueError, match=r"\[N, 64\]"):
        classifier.predict_proba(train[:, :10])
