"""A fine-tuning stage with every training option, run through the real CLI: the weights it
saves are the evaluated (Polyak-averaged) weights of the best held-out step."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from vitrun import stages
from vitrun.cli import main
from vitrun.engine import checkpoint

RECIPE = """
name = "options"

[model]
name = "ViT-Mu/4"

[pretrain]
data = "fractal"
classes = 4
image_size = 16
steps = 0

[finetune]
steps = 3
batch_size = 8
lr = 0.01
warmup_steps = 1
save_weights = true
dropout = 0.1
drop_path = 0.1
label_smoothing = 0.1
ema = 0.5
eval_every = 1
keep = "best"

[[transfer]]
data = "shapes"
per_class = 10

[run]
tensorboard = true
"""


@pytest.mark.slow  # ~15 s on a shared 2-core CPU (the test set's predictions dominate)
def test_finetune_keeps_and_saves_the_best_averaged_weights(tmp_path, monkeypatch):
    scores, seen = iter([0.1, 0.9, 0.5]), []

    def scripted(model, images, image_size, ctx, view="center"):  # the held-out evaluations, in step order
        assert abs(model.blocks[-1].drop_path.rate - 0.1) < 1e-6 and model.pos_drop.p == 0.1, "the stage's regularisation is set"
        seen.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, len(images)))
        return next(scores)

    monkeypatch.setattr(stages, "accuracy", scripted)
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(tmp_path / "results")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "results" / "options").glob("finetune-*"))
    metrics = json.loads((folder / "stage.json").read_text())["metrics"]
    assert metrics["eval_curve"] == [[1, 0.1], [2, 0.9], [3, 0.5]]
    assert (metrics["best_step"], metrics["best_accuracy"], metrics["kept_step"]) == (2, 0.9, 2)
    dev_images = seen[0][1]
    assert metrics["train_images"] == 10 * 10 - dev_images, "the dev share is held out of training"
    saved = checkpoint.load_weights(folder / "weights.pt")
    best = seen[1][0]
    assert all(torch.equal(saved[k], best[k]) for k in best), "weights.pt holds the weights scored at the best step"
    assert not all(torch.equal(saved[k], seen[2][0][k]) for k in best)
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_pretraining_evaluates_on_a_held_out_slice(tmp_path):
    text = RECIPE.replace("steps = 0\n", 'steps = 4\nbatch_size = 8\nwarmup_steps = 1\nsize = 40\ndropout = 0.1\nema = 0.9\neval_every = 2\nkeep = "best"\n', 1)
    text = text[: text.index("[finetune]")] + "[run]\ntensorboard = true\n"
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(results)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next((results / "options").glob("pretrain-*"))
    metrics = json.loads((folder / "stage.json").read_text())["metrics"]
    assert [step for step, _ in metrics["eval_curve"]] == [2, 4]
    assert metrics["kept_step"] == metrics["best_step"] and metrics["best_accuracy"] == max(acc for _, acc in metrics["eval_curve"])
    assert metrics["train_images"] == 36, "10% of the 40 images (the default dev_fraction) is held out"
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
