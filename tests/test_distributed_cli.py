"""`vitrun recipe --nproc-per-node N` through the real CLI: the batch arithmetic, and (slow) real
torchrun runs on gloo that must match one process, survive SIGKILL and stop on one rank's error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vitrun.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """
name = "ddp"
seed = 0
[model]
name = "ViT-Mu/4"
[pretrain]
data = "fractal"
classes = 4
image_size = 16
size = 64
steps = 12
batch_size = 16
warmup_steps = 2
[finetune]
steps = 4
batch_size = 16
lr = 0.01
warmup_steps = 1
[fewshot]
shots = [2]
draws = 1
[[transfer]]
data = "digits"
[run]
log_every = 2
"""


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_dry_run_prints_the_batch_split(tmp_path):
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(RECIPE + "micro_batch = 4\n")
    result = _invoke("recipe", str(recipe), "--results", str(tmp_path / "r"), "--dry-run", "--nproc-per-node", "2")
    assert result.exit_code == 0, result.output
    assert "pretrain.batch_size: 4 per device × 2 devices × 2 accumulation = 16 global batch" in result.output
    assert "finetune.batch_size: 4 per device × 2 devices × 2 accumulation = 16 global batch" in result.output
    assert not (tmp_path / "r").exists()


def test_a_batch_that_does_not_split_is_a_usage_error(tmp_path):
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(RECIPE)
    result = _invoke("recipe", str(recipe), "--results", str(tmp_path / "r"), "--nproc-per-node", "3")  # checked before torchrun starts
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pretrain.batch_size = 16 does not split over 3 processes" in lines[0], result.output
    assert not (tmp_path / "r").exists()


# -- real torchrun runs (slow) -------------------------------------------------------------------

def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _vitrun(recipe: Path, results: Path, *args, **popen):
    return subprocess.run([sys.executable, "-m", "vitrun", "recipe", str(recipe), "--results", str(results), *args], capture_output=True, text=True, env=_env(), timeout=600, **popen)


def _records(results: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["kind"]: json.loads(p.read_text()) for p in results.glob("ddp/*/stage.json")}


def _weights(results: Path) -> dict[str, torch.Tensor]:
    [path] = results.glob("ddp/pretrain-*/weights.pt")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    recipe = root / "ddp.toml"
    recipe.write_text(RECIPE)
    one = _vitrun(recipe, root / "one")
    assert one.returncode == 0, one.stdout + one.stderr
    two = _vitrun(recipe, root / "two", "--nproc-per-node", "2")
    assert two.returncode == 0, two.stdout + two.stderr
    return recipe, root, two.stdout


@pytest.mark.slow
def test_two_processes_match_one(runs):
    recipe, root, output = runs
    one, two = _records(root / "one"), _records(root / "two")
    assert set(one) == set(two) == {"pretrain", "finetune", "fewshot"}
    for kind in one:
        assert two[kind]["world_size"] == 2 and one[kind]["world_size"] == 1
        assert abs(one[kind]["metrics"]["accuracy"] - two[kind]["metrics"]["accuracy"]) <= 0.005, kind
    assert two["pretrain"]["accumulation"] == 1 and two["pretrain"]["micro_batch"] == 8
    a, b = _weights(root / "one"), _weights(root / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert output.count("Ran 3 stages") == 1  # rank 0 alone prints


@pytest.mark.slow
def test_sigkilled_two_process_run_resumes_to_the_same_weights(runs, tmp_path):
    recipe, root, _ = runs
    killed = tmp_path / "ddp.toml"
    killed.write_text(RECIPE + "checkpoint_steps = 1\n")  # [run] keys never change stage keys
    results = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "vitrun", "recipe", str(killed), "--results", str(results), "--nproc-per-node", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(results.glob("ddp/pretrain-*/checkpoint.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a few steps further, mid-step
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, without warning
    proc.wait()
    assert not list(results.glob("ddp/pretrain-*/stage.json")), "killed too late: the stage had finished"
    resumed = _vitrun(killed, results, "--nproc-per-node", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = _weights(root / "two"), _weights(results)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _records(results)["finetune"]["metrics"]["accuracy"] == _records(root / "two")["finetune"]["metrics"]["accuracy"]


@pytest.mark.slow
def test_a_failure_on_rank_1_stops_both_ranks_with_one_message(tmp_path):
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(RECIPE)
    results = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(ROOT / "tests" / "fail_on_rank1.py"),
                           "recipe", str(recipe), "--results", str(results)], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert output.count("failed: on rank 1: RuntimeError: broken on rank 1") == 1, output
    [error_log] = results.glob("ddp/pretrain-*/error.log")
    assert "broken on rank 1" in error_log.read_text() and "Traceback" in error_log.read_text()
    assert _records(results)["pretrain"]["status"] == "failed"


@pytest.mark.slow
def test_a_stage_locked_by_another_runner_is_taken_up_at_the_end(tmp_path, monkeypatch):
    import threading

    from vitrun import lock, runner
    from vitrun.plan import plan
    from vitrun.recipe import load

    recipe = tmp_path / "ddp.toml"
    recipe.write_text(RECIPE.replace("steps = 12", "steps = 2").replace("warmup_steps = 2", "warmup_steps = 1"))
    results = tmp_path / "r"
    finetune = next(s for s in plan(load(str(recipe)).variants) if s.kind == "finetune")
    held, release = threading.Event(), threading.Event()

    def other_runner():  # flock conflicts between two open files even in one process
        with lock.hold(results / "ddp" / finetune.key / ".lock"):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=other_runner)
    thread.start()
    held.wait(10)
    real_run_one = runner._run_one

    def run_one(stage, *args):
        if stage.kind == "fewshot":  # the other runner lets go (having run nothing) meanwhile
            release.set()
        return real_run_one(stage, *args)

    monkeypatch.setattr(runner, "_run_one", run_one)
    try:
        result = _invoke("recipe", str(recipe), "--results", str(results))
    finally:
        release.set()
        thread.join()
    assert result.exit_code == 0, result.output
    assert "on to the next stage, back to it at the end" in result.output
    records = _records(results)
    assert records["finetune"]["status"] == "done"
    assert records["fewshot"]["finished_at"] <= records["finetune"]["finished_at"]  # fewshot did not wait for it
