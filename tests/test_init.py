"""Recipes that start from weights (`model.init`) or skip pre-training (`pretrain.steps = 0`)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from vitrun import models
from vitrun.cli import main
from vitrun.engine import checkpoint
from vitrun.interop import to_npz

INIT_RECIPE = """
name = "init"
seed = 0

[model]
name = "ViT-Mu/4"
pre_logits = false
init = "npz:weights/mu4.npz"   # relative to where vitrun runs

[pretrain]
image_size = 16
steps = 0

[finetune]
steps = 3
batch_size = 16
warmup_steps = 1
image_size = 24                 # fine-tuned at a higher resolution: 2-D resampled positions

[fewshot]
shots = [2]
draws = 1

[[transfer]]
data = "digits"
classes = 4                     # a 240-image test split: where the weights come from is the point
"""


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _records(results, kind):
    return [json.loads(p.read_text()) for p in results.glob(f"*/{kind}-*/stage.json")]


def test_npz_init_feeds_transfer_stages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    source = models.create("ViT-Mu/4", num_classes=7, image_size=16, pre_logits=False)
    (tmp_path / "weights").mkdir()
    to_npz(source, tmp_path / "weights" / "mu4.npz")
    recipe = tmp_path / "init.toml"
    recipe.write_text(INIT_RECIPE)
    results = tmp_path / "results"
    result = _invoke("recipe", str(recipe), "--results", str(results))
    assert result.exit_code == 0, result.output

    (pre,) = _records(results, "pretrain")
    assert pre["config"]["init"] == "npz:weights/mu4.npz"
    assert pre["metrics"]["steps"] == 0 and pre["metrics"]["accuracy"] is None
    stored = checkpoint.load_weights(results / "init" / pre["key"] / "weights.pt")
    for name, tensor in source.state_dict().items():
        if not name.startswith("head."):  # a new zero head; everything else is the checkpoint's
            assert torch.allclose(stored[name], tensor, atol=1e-6), name
    assert {r["kind"] for r in _records(results, "*")} == {"pretrain", "finetune_dev", "finetune", "fewshot"}, "the default: learning rate picked on the dev split"


def test_steps_zero_without_init_is_a_seeded_random_model(write_recipe, tmp_path):
    recipe = write_recipe(INIT_RECIPE.replace('init = "npz:weights/mu4.npz"   # relative to where vitrun runs', ""))
    results = tmp_path / "results"
    # One learning rate: no dev trials; the point here is the pre-training stage's weights.
    assert _invoke("recipe", str(recipe), "--results", str(results), "--set", "fewshot.shots=[1]", "--set", "finetune.lr=0.01").exit_code == 0
    (pre,) = _records(results, "pretrain")
    stored = checkpoint.load_weights(results / "init" / pre["key"] / "weights.pt")
    torch.manual_seed(0)
    fresh = models.create("ViT-Mu/4", num_classes=1, image_size=16, pre_logits=False)
    assert all(torch.equal(stored[k], v) for k, v in fresh.state_dict().items())


def test_bad_init_is_a_one_line_error_before_anything_runs(write_recipe, tmp_path):
    for init, expected in (("npz:missing.npz", "no checkpoint file"), ("hub:vit", "expected 'timm:NAME'")):
        recipe = write_recipe(INIT_RECIPE.replace("npz:weights/mu4.npz", init))
        run = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(tmp_path / "out")])
        assert run.exit_code == 2 and isinstance(run.exception, SystemExit), run.output
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "model.init" in lines[0] and expected in lines[0], run.stderr
        assert not (tmp_path / "out").exists()
