"""Damage a finished tiny run as a user (or a full disk, or a kill) would: every case ends with
a correct table or one line naming the file, never a traceback, never a silently shifted mean."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vitrun import durable, plan, stages
from vitrun.cli import main
from vitrun.engine import Diverged
from vitrun.recipe import load

SMALL = """
name = "small"
seed = 0
[model]
name = "ViT-Mu/4"
[pretrain]
data = "fractal"
classes = 4
size = 16
image_size = 16
steps = 6
batch_size = 16
warmup_steps = 2
[finetune]
steps = 4
batch_size = 16
lr = 0.01
warmup_steps = 1
[fewshot]
shots = [2]
draws = 2
[[transfer]]
data = "shapes"
classes = 4  # 400 test images, not 1,000: evaluation was most of each run
per_class = 8
[run]
threads = 1  # two threads on a busy 2-core machine are slower than one
"""


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _report(results, *extra):
    return _invoke("report", "--results", results, "--format", "json", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(recipe, results, report JSON, {kind: stage key}) of one clean run."""
    folder = tmp_path_factory.mktemp("finished")
    recipe = folder / "small.toml"
    recipe.write_text(SMALL)
    results = folder / "results"
    run = _invoke("recipe", recipe, "--results", results)
    assert run.exit_code == 0, run.output
    keys = {s.kind: s.key for s in plan.plan(load(str(recipe)).variants)}
    return recipe, results, json.loads(_report(results).stdout), keys


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished run to damage."""
    recipe, results, table, keys = finished
    shutil.copytree(results, tmp_path / "results")
    return recipe, tmp_path / "results", table, keys


def _one_line_error(result, *words):
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


# Every kind of damage is told apart in tests/test_store.py; here the flow, end to end.
@pytest.mark.parametrize("damage", [
    pytest.param(lambda b: b[:20] + b"\xff" + b[21:], id="byte-0xff"),
    pytest.param(lambda b: b.replace(b'"accuracy": 0.', b'"accuracy": 0.9', 1), id="edited-number"),
])
def test_damaged_record_is_listed_then_rerun(copy, damage):
    recipe, results, table, keys = copy
    stage_file = results / "small" / keys["finetune"] / "stage.json"
    stage_file.write_bytes(damage(stage_file.read_bytes()))
    report = _report(results)
    assert report.exit_code == 1
    assert str(stage_file) in report.stderr and "Traceback" not in report.output
    assert json.loads(report.stdout) != table, "the table without the stage is printed, and flagged"
    assert _report(results, "--allow-missing").exit_code == 0
    rerun = _invoke("recipe", recipe, "--results", results)
    assert rerun.exit_code == 0, rerun.output
    assert "set aside" in rerun.output and "Running 1 stages" in rerun.output
    again = _report(results)
    assert again.exit_code == 0 and json.loads(again.stdout) == table


def test_flipped_bit_in_weights_is_never_used(copy, finished):
    recipe, results, _, keys = copy
    weights = results / "small" / keys["pretrain"] / "weights.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    weights.write_bytes(bytes(raw))
    # a new few-shot stage needs the pre-trained weights: the pre-training re-runs first
    rerun = _invoke("recipe", recipe, "--results", results, "--set", "fewshot.draws=3")
    assert rerun.exit_code == 0, rerun.output
    assert "fails its sha256 checksum" in rerun.output and "Running 2 stages" in rerun.output
    clean = _invoke("recipe", recipe, "--results", finished[1], "--set", "fewshot.draws=3")
    assert clean.exit_code == 0
    new_key = next(s.key for s in plan.plan(load(str(recipe), ["fewshot.draws=3"]).variants) if s.kind == "fewshot")
    accuracy = [json.loads((r / "small" / new_key / "stage.json").read_text())["metrics"]["accuracy"] for r in (results, finished[1])]
    assert accuracy[0] == accuracy[1]


def test_failing_stage_is_contained_then_retried(write_recipe, tmp_path, monkeypatch):
    recipe = write_recipe(SMALL)
    results = tmp_path / "results"

    def broken(stage, ctx):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(stages, "finetune", broken)
    run = _invoke("recipe", recipe, "--results", results)
    assert run.exit_code == 1 and "Traceback" not in run.output
    keys = {s.kind: s.key for s in plan.plan(load(str(recipe)).variants)}
    failed = results / "small" / keys["finetune"]
    record = json.loads((failed / "stage.json").read_text())
    assert record["status"] == "failed" and record["error"] == "RuntimeError: simulated bug"
    assert "Traceback" in (failed / "error.log").read_text() and "simulated bug" in (failed / "error.log").read_text()
    assert f"traceback in {failed / 'error.log'}" in run.output.replace("\n", "")
    assert json.loads((results / "small" / keys["fewshot"] / "stage.json").read_text())["status"] == "done", "an independent stage still ran"
    monkeypatch.undo()
    retry = _invoke("recipe", recipe, "--results", results)
    assert retry.exit_code == 0 and "Running 1 stages" in retry.output
    assert json.loads((failed / "stage.json").read_text())["status"] == "done" and not (failed / "error.log").exists()


def test_fail_fast_stops_at_the_first_failure(write_recipe, tmp_path, monkeypatch):
    recipe = write_recipe(SMALL)
    monkeypatch.setattr(stages, "finetune", lambda stage, ctx: 1 / 0)
    run = _invoke("recipe", recipe, "--results", tmp_path / "r", "--fail-fast")
    assert run.exit_code == 1 and "--fail-fast" in run.output
    keys = {s.kind: s.key for s in plan.plan(load(str(recipe)).variants)}
    assert not (tmp_path / "r" / "small" / keys["fewshot"] / "stage.json").exists()


def test_diverged_stage_is_a_result_and_its_children_wait(write_recipe, tmp_path, monkeypatch):
    recipe = write_recipe(SMALL)

    def diverging(stage, ctx):
        raise Diverged(3, float("nan"))

    monkeypatch.setattr(stages, "pretrain", diverging)
    run = _invoke("recipe", recipe, "--results", tmp_path / "r")
    assert run.exit_code == 1
    keys = {s.kind: s.key for s in plan.plan(load(str(recipe)).variants)}
    record = json.loads((tmp_path / "r" / "small" / keys["pretrain"] / "stage.json").read_text())
    assert record["status"] == "diverged" and record["metrics"]["diverged_at_step"] == 3 and record["metrics"]["loss"] == "nan"
    assert "2 skipped" in run.output
    monkeypatch.undo()
    again = _invoke("recipe", recipe, "--results", tmp_path / "r")
    assert again.exit_code == 1 and "Running" in again.output and "diverged" in again.output
    assert json.loads((tmp_path / "r" / "small" / keys["pretrain"] / "stage.json").read_text())["status"] == "diverged", "not retried"


def test_full_disk_is_one_line_and_leaves_nothing_half_written(write_recipe, tmp_path, monkeypatch, finished):
    recipe = write_recipe(SMALL)
    results = tmp_path / "r"
    written = {"bytes": 0}
    real_write = durable._HashingWriter.write

    def filling(self, data):
        written["bytes"] += len(data)
        if written["bytes"] > 100_000:  # the disk fills up inside the first weights file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(durable._HashingWriter, "write", filling)
    run = _invoke("recipe", recipe, "--results", results)
    assert run.exit_code == 1
    _one_line_error(run, "No space left on device", "free space")
    assert not list(results.rglob("*.tmp")) and not list(results.rglob("stage.json"))
    monkeypatch.undo()
    resumed = _invoke("recipe", recipe, "--results", results)
    assert resumed.exit_code == 0
    assert json.loads(_report(results).stdout) == finished[2]


def test_results_under_a_file(write_recipe, tmp_path):
    (tmp_path / "file").write_text("x")
    run = _invoke("recipe", write_recipe(SMALL), "--results", tmp_path / "file" / "results")
    assert run.exit_code == 1
    _one_line_error(run, str(tmp_path / "file"), "is a file")


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written to, for real: a read-only mount when the tests run as root
    (root ignores permissions), else a folder without write permission."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder, "Permission denied"
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without the right to mount a read-only file system")
    try:
        yield folder, "Read-only file system"
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_results(write_recipe, read_only_folder):
    folder, reason = read_only_folder
    run = _invoke("recipe", write_recipe(SMALL), "--results", folder / "results")
    assert run.exit_code == 1
    _one_line_error(run, str(folder / "results"), reason, "--results")
    assert list(folder.iterdir()) == []


def test_nothing_to_run_writes_nothing(write_recipe, tmp_path):
    run = _invoke("recipe", write_recipe(SMALL), "--results", tmp_path / "r", "--shard", "2/2")
    assert run.exit_code == 0 and "Nothing to run" in run.output
    assert not (tmp_path / "r").exists()


def test_unreadable_checkpoint_torn_log_and_orphans_heal(write_recipe, tmp_path, finished):
    recipe = write_recipe(SMALL)
    results = tmp_path / "r"
    keys = {s.kind: s.key for s in plan.plan(load(str(recipe)).variants)}
    stage = results / "small" / keys["pretrain"]
    stage.mkdir(parents=True)
    (stage / "checkpoint.pt").write_bytes(b"")
    (stage / "metrics.jsonl").write_text('{"step": 2, "loss": 1.3}\n{"step": 4, "lo')
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = stage / f".checkpoint.pt.{durable.HOST}.{dead}.abcdef.tmp"
    orphan.write_bytes(b"half a checkpoint")
    run = _invoke("recipe", recipe, "--results", results)
    assert run.exit_code == 0, run.output
    text = " ".join(run.output.split())
    assert "unreadable checkpoint" in text and "removed" in text and not orphan.exists()
    assert list(stage.glob("checkpoint.pt.unreadable-*"))
    assert json.loads(_report(results).stdout) == finished[2]
    assert (stage / "metrics.jsonl").read_text() == (finished[1] / "small" / keys["pretrain"] / "metrics.jsonl").read_text()
    assert (stage / "stage.json").stat().st_mode & 0o777 == durable.file_mode()


def test_doctor_lists_and_fixes(copy):
    recipe, results, table, keys = copy
    (results / "small" / keys["finetune"] / "stage.json").write_bytes(b"")
    orphan = results / "small" / keys["pretrain"] / f".weights.pt.{durable.HOST}.999999999.x.tmp"
    orphan.write_bytes(b"x")
    stale = results / "small" / keys["fewshot"] / ".lock"
    stale.write_text(f"{durable.HOST} 999999999\n")  # its runner died
    found = _invoke("doctor", "--results", results)
    assert found.exit_code == 1
    text = " ".join(found.output.split())
    assert "broken" in text and "orphaned" in text and "stale lock" in text and "--fix would" in text
    fixed = _invoke("doctor", "--results", results, "--fix")
    assert fixed.exit_code == 0 and not orphan.exists() and not stale.exists()
    assert list((results / "small" / keys["finetune"]).glob("stage.json.broken-*"))
    assert _invoke("doctor", "--results", results).exit_code == 0
    assert "versions" in fixed.output and "torch" in fixed.output
