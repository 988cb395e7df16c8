"""Kill loops: SIGTERM, SIGINT and SIGKILL at random moments of a real `vitrun recipe` run;
resuming each time must end bit-identical (weights, records, logs) to an uninterrupted run.

The default suite forks the test process for each run (torch is already imported, so a run
costs only its work) and kills each child once with each signal; `pytest -m slow` runs a
longer random loop of `python -m vitrun recipe` subprocesses, as a user would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = """
name = "preempt"
seed = 0
[model]
name = "ViT-Mu/4"
[pretrain]
data = "fractal"
classes = 4
size = 32
image_size = 16
steps = 40
batch_size = 16
warmup_steps = 4
[finetune]
steps = 12
batch_size = 16
lr = 0.01
warmup_steps = 2
[fewshot]
shots = [2]
draws = 2
[[transfer]]
data = "shapes"
per_class = 8
[run]
threads = 1
log_every = 3
checkpoint_seconds = 0.05
"""
# Record fields that differ between any two runs (timing, clocks): everything else must match.
VARYING = {"wall_time_s", "finished_at", "checksum"}


def _command(recipe: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "vitrun", "recipe", str(recipe), "--results", str(results)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _run(recipe: Path, results: Path) -> None:
    proc = subprocess.run(_command(recipe, results), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _killed_run(recipe: Path, results: Path, signum: int, delay: float) -> int:
    """Start a run, wait until it works on stages (imports done), then `delay` s more, then signal it."""
    proc = subprocess.Popen(_command(recipe, results), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("Running") or "already done" in line:
            break
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signum)
    proc.stdout.read()
    return proc.wait(timeout=120)


def _forked(recipe: Path, results: Path) -> int:
    """Run `vitrun recipe` in a forked child; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:  # the child: the real CLI, with the default signal dispositions of a fresh process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        from vitrun.cli import main

        main(["recipe", str(recipe), "--results", str(results)], prog_name="vitrun")
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        code = 98
    finally:
        os._exit(code)


def _wait(pid: int, timeout: float = 180.0) -> int:
    """The child's exit code; a child that hangs is killed and the test fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked run {pid} hung for {timeout} s")


def _snapshot(results: Path) -> dict[str, object]:
    """Every stage's record (less timings), weights and log."""
    out: dict[str, object] = {}
    for stage in sorted((results / "preempt").iterdir()):
        if not stage.is_dir():
            continue
        record = json.loads((stage / "stage.json").read_text())
        record.pop("files")  # the weights' hash: the zip container may differ, the tensors may not
        out[f"{stage.name}/record"] = {k: v for k, v in record.items() if k not in VARYING}
        if (stage / "weights.pt").exists():
            out[f"{stage.name}/weights"] = {k: v.numpy().tobytes() for k, v in torch.load(stage / "weights.pt", weights_only=True).items()}
        if (stage / "metrics.jsonl").exists():
            out[f"{stage.name}/log"] = (stage / "metrics.jsonl").read_text()
        leftovers = [p.name for p in stage.iterdir() if p.name.endswith(".tmp") or p.name.startswith("checkpoint.pt")]
        assert not leftovers, f"{stage.name}: {leftovers}"
    return out


def _kill_loop(tmp_path: Path, kills: list[tuple[int, float]]) -> None:
    recipe = tmp_path / "preempt.toml"
    recipe.write_text(RECIPE)
    _run(recipe, tmp_path / "straight")
    for signum, delay in kills:
        code = _killed_run(recipe, tmp_path / "killed", signum, delay)
        assert code in (0, 1, 130, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL), code
    _run(recipe, tmp_path / "killed")
    straight, killed = _snapshot(tmp_path / "straight"), _snapshot(tmp_path / "killed")
    assert straight.keys() == killed.keys()
    for key in straight:
        assert straight[key] == killed[key], f"{key} differs after kills {kills}"


def test_each_signal_once_ends_bit_identical(tmp_path):
    """Forked runs (cheap); each kill lands at a random moment once the child has started."""
    import vitrun.cli, vitrun.report, vitrun.runner, vitrun.stages  # noqa: F401  (imported once, before the forks)

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (seconds)

    recipe = tmp_path / "preempt.toml"
    shorter = RECIPE.replace("steps = 40", "steps = 16").replace("steps = 12", "steps = 4").replace("checkpoint_seconds = 0.05", "checkpoint_seconds = 0.2")
    recipe.write_text(shorter.replace('data = "shapes"\n', 'data = "shapes"\nclasses = 4\n'))  # 400 test images, not 1,000: evaluation was most of each run
    started = time.monotonic()
    assert _wait(_forked(recipe, tmp_path / "straight")) == 0
    took = time.monotonic() - started  # kills land anywhere in a run's span
    rng = random.Random(14)
    kills = [(signum, rng.uniform(0.05, 0.9) * took) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)]
    for signum, delay in kills:
        pid = _forked(recipe, tmp_path / "killed")
        time.sleep(delay)
        os.kill(pid, signum)
        assert _wait(pid) in (0, 1, 130, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL)
    assert _wait(_forked(recipe, tmp_path / "killed")) == 0
    straight, killed = _snapshot(tmp_path / "straight"), _snapshot(tmp_path / "killed")
    assert straight.keys() == killed.keys()
    for key in straight:
        assert straight[key] == killed[key], f"{key} differs after kills {kills}"


@pytest.mark.slow
def test_each_signal_once_as_a_subprocess_ends_bit_identical(tmp_path):
    rng = random.Random(14)
    _kill_loop(tmp_path, [(signum, rng.uniform(0.1, 0.8)) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_random_kill_loop_ends_bit_identical(tmp_path, seed):
    rng = random.Random(seed)
    kills = [(rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGKILL]), rng.uniform(0.0, 3.0)) for _ in range(12)]
    _kill_loop(tmp_path, kills)
