"""Training hyper-parameters per stage ([pretrain]/[finetune]) and per-dataset fine-tuning overrides."""

from __future__ import annotations

import hashlib

import pytest

from tests.tiny import TINY
from vitrun.plan import plan
from vitrun.recipe import RecipeError, load

# TINY with a learning-rate grid and save_weights: dev trials, final runs, few-shot, both families.
GRID = TINY.replace("[finetune]", "[finetune]\nlr = [0.01, 0.03]\nsave_weights = true").replace("lr = 0.01\n", "", 1)
# Every stage key of GRID as computed on main before these options existed (36 stages), then
# moved on purpose once: shapes version 2 put `data_version` in its stages' keys ("fab73e4a3d5750ea" before).
GRID_KEYS_ON_MAIN = "fc55a36ec5455f31"


def _stages(write_recipe, text=GRID, overrides=()):
    return plan(load(str(write_recipe(text)), overrides).variants)


def _digest(stages) -> str:
    return hashlib.sha256(" ".join(s.key for s in stages).encode()).hexdigest()[:16]


def test_recipes_without_the_new_keys_keep_every_stage_key(write_recipe):
    assert _digest(_stages(write_recipe)) == GRID_KEYS_ON_MAIN


def test_new_keys_at_their_defaults_keep_every_stage_key(write_recipe):
    defaults = "dropout = 0.0\ndrop_path = 0.0\nlabel_smoothing = 0.0\nkeep = \"last\"\n"
    text = GRID.replace("[pretrain]\n", "[pretrain]\n" + defaults).replace("[finetune]\n", "[finetune]\n" + defaults)
    assert _digest(_stages(write_recipe, text)) == GRID_KEYS_ON_MAIN


def test_training_options_key_only_their_stages(write_recipe):
    base = {s.key: s for s in _stages(write_recipe)}
    tuned = _stages(write_recipe, overrides=["finetune.dropout=0.1", "finetune.ema=0.9999"])
    changed = [s for s in tuned if s.key not in base]
    assert {s.kind for s in changed} == {"finetune", "finetune_dev"}, "pre-training and few-shot keep their keys"
    vit = [s for s in changed if s.config["model"]["family"] == "vit"]
    assert all(s.config["finetune"]["dropout"] == 0.1 and s.config["finetune"]["ema"] == 0.9999 for s in vit)
    resnet = [s for s in changed if s.config["model"]["family"] == "resnet"]
    assert resnet and all("dropout" not in s.config["finetune"] for s in resnet), "a ResNet has no dropout: not in its key"
    assert {s.config["model"]["dropout"] for s in tuned} == {0.0, None}, "the architecture no longer carries it (ResNets: None)"


def test_model_dropout_is_refused_with_where_it_went(write_recipe):
    text = GRID.replace('[model]\nname = "ViT-Mu/4"', '[model]\nname = "ViT-Mu/4"\ndropout = 0.1')
    with pytest.raises(RecipeError, match=r"model: dropout is a training hyper-parameter.*\[pretrain\]") as err:
        load(str(write_recipe(text)))
    assert "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="drop_path"):
        load(str(write_recipe(GRID)), ["model.drop_path=0.1"])


def test_transfer_override_merges_into_its_finetune_stages_only(write_recipe):
    text = GRID.replace('[[transfer]]\ndata = "digits"', '[[transfer]]\ndata = "digits"\nfinetune = { steps = 9, lr = 0.003, image_size = 32 }')
    stages = _stages(write_recipe, text)
    base = {s.key for s in _stages(write_recipe)}
    digits = [s for s in stages if s.kind == "finetune" and s.data == "digits"]
    assert {(s.config["finetune"]["steps"], s.config["finetune"]["lr"], s.config["finetune"]["image_size"]) for s in digits} == {(9, 0.003, 32)}
    assert all(len(s.parents) == 1 for s in digits), "one rate: no dev trials for digits"
    shapes = [s for s in stages if s.kind in ("finetune", "finetune_dev") and s.data == "shapes"]
    assert shapes and all(s.key in base for s in shapes), "the other dataset keeps its keys"
    fewshot = [s for s in stages if s.kind == "fewshot"]
    assert all(s.key in base for s in fewshot) and all("finetune" not in s.config["transfer"] for s in fewshot)
    assert all(s.key not in base for s in digits)


@pytest.mark.parametrize("override,message", [
    ("{ stepz = 3 }", r"\[\[transfer\]\] digits: finetune.stepz is not a \[finetune\] key \(did you mean 'steps'\?\)"),
    ("{ steps = 0 }", r"\[\[transfer\]\] digits: finetune.steps: Input should be greater than 0"),
    ('{ keep = "best" }', r"\[\[transfer\]\] digits: .*eval_every"),
    ("{ image_size = 18 }", r"digits: finetune.image_size = 18 is not a multiple of ViT-Mu/4's patch size 4"),
])
def test_transfer_override_errors_name_the_transfer_and_key(write_recipe, override, message):
    text = GRID.replace('[[transfer]]\ndata = "digits"', f'[[transfer]]\ndata = "digits"\nfinetune = {override}')
    with pytest.raises(RecipeError, match=message) as err:
        load(str(write_recipe(text)))
    assert "\n" not in str(err.value)


def test_transfer_override_needs_a_finetune_table(write_recipe):
    text = GRID.replace('[[transfer]]\ndata = "digits"', '[[transfer]]\ndata = "digits"\nfinetune = { steps = 3 }')
    start, end = text.index("[finetune]"), text.index("[fewshot]")
    with pytest.raises(RecipeError, match=r"digits: finetune = \{…\} overrides \[finetune\], but the recipe has no \[finetune\] table"):
        load(str(write_recipe(text[:start] + text[end:])))


@pytest.mark.parametrize("overrides,message", [
    (['pretrain.keep="best"'], "keep = \"best\" chooses on the evaluation curve: set eval_every"),
    (["pretrain.dropout=1.0"], "dropout"),
    (["finetune.ema=1.0"], "ema"),
    (['pretrain.objective="masked-patch"', "pretrain.label_smoothing=0.1"], "label_smoothing applies to a supervised pre-training"),
    (['pretrain.objective="masked-patch"', "pretrain.eval_every=2"], "eval_every applies to a supervised pre-training"),
])
def test_bad_training_options_are_one_line_errors(write_recipe, overrides, message):
    text = GRID.replace('model = ["ViT-Mu/4", "R14x0.25"]', 'model = ["ViT-Mu/4"]')
    with pytest.raises(RecipeError, match=message) as err:
        load(str(write_recipe(text)), overrides)
    assert "\n" not in str(err.value)
