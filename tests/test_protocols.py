"""The paper's evaluation protocols, run for real on a tiny recipe: the fine-tuning learning
rate picked on the dev split, few-shot l2 picked on held-out data, and scratch vs
masked-patch vs supervised pre-training compared in one report."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tests.tiny import run_recipe
from vitrun.cli import main
from vitrun.engine import Interrupted
from vitrun.engine.device import place
from vitrun.plan import plan
from vitrun.recipe import load
from vitrun.schema import RunConfig
from vitrun.stages import Context, run_stage
from vitrun.store import Store

OBJECTIVES = """
name = "objectives"

[model]
name = "ViT-Mu/4"

[pretrain]
data = "fractal"
classes = 4
size = 64
image_size = 16
steps = 6
batch_size = 16
warmup_steps = 2

[finetune]
steps = 4
batch_size = 16
lr = [0.003, 0.03]
warmup_steps = 1
image_size = 24          # higher than pre-training: positions resampled in 2-D

[fewshot]
shots = [2]
draws = 2
l2_reg = [1.0, 1024.0]

[[transfer]]
data = "digits"
classes = 4              # a test split of 240 images, not 599: the protocols, not the accuracy, are checked
per_class = 20

[sweep]
"pretrain.objective" = ["scratch", "masked-patch", "supervised"]

[[report.tables]]
name = "objectives"
kind = "finetune"
rows = "pretrain.objective"
columns = "data"
"""


def _records(results, kind):
    return [json.loads(p.read_text()) for p in (results / "objectives").glob(f"{kind}-*/stage.json")]


@pytest.fixture(scope="module")
def objectives_run(tmp_path_factory):
    run = run_recipe(tmp_path_factory.mktemp("objectives"), OBJECTIVES, "objectives.toml")
    return run.results, run.output


def test_every_objective_runs_and_is_reported(objectives_run):
    results, _ = objectives_run
    report = CliRunner().invoke(main, ["report", "--results", str(results), "--format", "json"], catch_exceptions=False)
    (table,) = json.loads(report.output)[0]["tables"]
    assert sorted(table["index"]) == ["masked-patch", "scratch", "supervised"]
    assert all(0.0 <= row[0] <= 100.0 for row in table["data"])
    pretrains = {r["config"]["pretrain"]["objective"]: r for r in _records(results, "pretrain")}
    assert pretrains["scratch"]["metrics"]["steps"] == 0 and "data" not in pretrains["scratch"]["config"]["pretrain"]
    masked = pretrains["masked-patch"]["metrics"]
    assert 0.0 <= masked["masked_patch_accuracy"] <= 1.0 and masked["masked_patch_loss"] > 0
    assert masked["accuracy"] is None and masked["steps"] == 6


def test_finetuning_picks_the_best_dev_rate_and_retrains(objectives_run):
    results, _ = objectives_run
    trials = {r["key"]: r for r in _records(results, "finetune_dev")}
    finals = _records(results, "finetune")
    assert len(finals) == 3 and len(trials) == 6
    for final in finals:
        mine = [trials[key]["metrics"] for key in final["parents"][1:]]
        dev = {str(m["lr"]): m["accuracy"] for m in mine}
        assert final["metrics"]["dev_accuracy"] == dev, "stage.json keeps every rate's dev accuracy"
        assert dev[str(final["metrics"]["lr"])] == max(dev.values())
        assert final["config"]["finetune"]["image_size"] == 24 and final["metrics"]["steps"] == 4
        # the trial trains on the training split less the dev share; the final run on all of it
        assert all(m["train_images"] + m["dev_images"] == final["metrics"]["train_images"] for m in mine)
        assert all(m["dev_fraction"] == 0.10 for m in mine)


def test_fewshot_picks_l2_on_held_out_data(objectives_run):
    results, _ = objectives_run
    for record in _records(results, "fewshot"):
        metrics = record["metrics"]
        assert set(metrics["dev_accuracy"]) == {"1.0", "1024.0"}
        assert metrics["dev_accuracy"][str(metrics["l2_reg"])] == max(metrics["dev_accuracy"].values())
        assert len(metrics["accuracy_per_draw"]) == 2


def test_killed_masked_patch_pretraining_resumes_to_identical_weights(tmp_path, write_recipe):
    """The corruption is a pure function of (seed, step), so a resumed run corrupts as the
    uninterrupted one did and ends with the same weights, bit for bit."""
    text = OBJECTIVES.replace('"pretrain.objective" = ["scratch", "masked-patch", "supervised"]', "").replace("[sweep]", "")
    (stage,) = [s for s in plan(load(str(write_recipe(text)), ['pretrain.objective="masked-patch"']).variants) if s.kind == "pretrain"]

    def run(root, on_step=None):
        store = Store(root)
        store.stage("e", stage.key).path.mkdir(parents=True, exist_ok=True)
        ctx = Context(store=store, experiment="e", placement=place("cpu"), run=RunConfig(checkpoint_seconds=1e9), on_step=on_step)
        run_stage(stage, ctx)
        return torch.load(store.stage("e", stage.key).weights_file, weights_only=True)

    def kill_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    straight = run(tmp_path / "straight")
    with pytest.raises(Interrupted, match="stopped at step 3"):
        run(tmp_path / "killed", kill_at_3)
    resumed = run(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_a_dev_split_too_small_to_choose_says_so():
    from vitrun.stages import _dev_warning

    assert "10 images, too few" in _dev_warning({"0.01": 0.2, "0.03": 0.1}, 10, 0.01)
    assert "tie" in _dev_warning({"0.01": 0.5, "0.03": 0.5}, 200, 0.01)
    assert _dev_warning({"0.01": 0.55, "0.03": 0.5}, 200, 0.01) is None
