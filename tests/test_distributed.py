"""pit_sampler.distributed on 2 CPU processes (gloo, spawned, bounded time): batch parallel, a
tensor-parallel model, window parallel, and failures. Every mode must give the one-process tokens.

Each scenario runs in ``tests/distributed_workers.py``; the test compares what the ranks saved with
a one-process run of the same samplers here.
"""
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import distributed_workers as workers
import pit_sampler as ps

SIZE = 2
TIMEOUT_S = 240  # the whole spawn; a hang fails the test instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(scenario: str, tmp_path) -> list[dict]:
    ctx = mp.start_processes(workers.main, args=(scenario, SIZE, _free_port(), str(tmp_path)), nprocs=SIZE,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{scenario}: the ranks did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    errors = sorted(tmp_path.glob("rank*.err"))
    assert not errors, errors[0].read_text()
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(SIZE)]


@pytest.fixture(scope="module")
def one_process():
    o = workers.oracle()
    out = {}
    for rule in workers.RULES:
        kw = dict(mask_id=o.mask_id, num_steps=workers.STEPS, rule=rule)
        out[f"seq-{rule}"] = ps.TauLeapingSampler(o, **kw).sample(workers.x_init(), seed=5).tokens
        out[f"seq-seeds-{rule}"] = ps.TauLeapingSampler(o, **kw).sample(workers.x_init(), seed=workers.seeds()).tokens
        out[f"pit8-{rule}"] = ps.PITSampler(o, window=8, **kw).sample(workers.x_init(), seed=workers.seeds())
    return out


def test_batch_parallel_and_a_tensor_parallel_model_equal_one_process(tmp_path, one_process):
    ranks = _run("batch_and_tensor_parallel", tmp_path)
    for rule in workers.RULES:
        for name in ("seq", "pit"):
            for saved in ranks:
                assert torch.equal(saved[f"batch-{rule}-{name}"], one_process[f"seq-{rule}"]), (rule, name)
                assert torch.equal(saved[f"batch-seeds-{rule}-{name}"], one_process[f"seq-seeds-{rule}"]), (rule, name)
            assert [saved[f"local-{rule}-{name}"] for saved in ranks] == [3, 2]  # each rank sampled its share
    o = workers.oracle()
    model = workers.VocabParallelModel(o.vocab_size, o.length).eval()
    kw = dict(mask_id=o.mask_id, num_steps=workers.STEPS, vocab_size=o.vocab_size)
    want = ps.TauLeapingSampler(model, **kw).sample(workers.x_init(), seed=workers.seeds()).tokens
    for saved in ranks:
        assert torch.equal(saved["tp-seq"], want) and torch.equal(saved["tp-pit"], want)


def test_window_parallel_equals_one_process_and_exchanges_tokens_only(tmp_path, one_process):
    ranks = _run("window_parallel", tmp_path)
    B, L = workers.x_init().shape
    for rule in workers.RULES:
        pit = one_process[f"pit8-{rule}"]
        for name in ("plain", "positions"):
            got = [saved[f"{rule}-{name}"] for saved in ranks]
            for g in got:
                assert torch.equal(g["tokens"], one_process[f"seq-seeds-{rule}"]), (rule, name)
                assert g["rounds"] == pit.rounds and g["windows"] == pit.windows, (rule, name)
            # every rank evaluates a share of the window: about half the rows each
            probes = (SIZE - 1) / B  # each rank learns V with one row of its own (x_init has a prompt)
            assert sum(g["nfe"] for g in got) == pytest.approx(pit.nfe + probes), (rule, name)
            assert all(0.3 * pit.nfe <= g["nfe"] <= 0.7 * pit.nfe for g in got), (rule, name, [g["nfe"] for g in got])
            # per round: int32 tokens in the draw budget, the slices' invalid counts and a status word
            for g in got:
                if name == "positions":  # logits_rows is the draw budget here
                    assert g["exchanged"] <= 4 * g["logits_rows"] + 4 * (2 * 8 * B + 1) + 1e-9
                assert g["exchanged"] < 4 * B * L * 2 * 8  # far less than a state per slice


def test_a_failing_rank_or_a_mismatch_stops_every_rank_with_a_clear_error(tmp_path):
    ranks = _run("failures", tmp_path)
    for rank, saved in enumerate(ranks):
        assert "rank 1 failed in round 2" in saved["window-raise"], saved["window-raise"]
        assert "rank 0 failed in round" in saved["batch-raise"], saved["batch-raise"]
        assert "ranks disagree on seeds" in saved["seed-mismatch"], saved["seed-mismatch"]
        assert "ranks disagree on window" in saved["window-mismatch"], saved["window-mismatch"]
    assert "the model broke" in ranks[1]["window-raise"] and "the model broke" in ranks[0]["batch-raise"]


def test_shard_splits_evenly_and_checks_its_arguments():
    """No processes: the shares cover the batch in order, and bad arguments name themselves."""
    from pit_sampler.distributed import shard

    assert [shard(10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert [shard(1, r, 2) for r in range(2)] == [slice(0, 1), slice(1, 1)]  # rank 1 idle
    for args, error, name in [((10, 3, 2), ValueError, "rank"), ((10, -1, 2), ValueError, "rank"),
                              ((-4, 0, 2), ValueError, "batch"), ((5, 0, 0), ValueError, "size"),
                              ((5.0, 0, 1), TypeError, "batch"), ((5, True, 2), TypeError, "rank")]:
        with pytest.raises(error, match=f"^{name} must"):
            shard(*args)


@pytest.mark.parametrize("mode", ["batch", "window"])
def test_the_torchrun_demo(mode, tmp_path):
    """``torchrun --nproc-per-node 2 -m pit_sampler demo --parallel ...`` as the README shows it."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "pit_sampler", "demo", "--model", "hmm", "--parallel", mode, "--steps", "64", "--batch", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"2 ranks ({mode} parallel)" in done.stdout
    assert "tokens identical to the one-process sequential sample: yes" in done.stdout
