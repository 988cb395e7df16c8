"""The paper's protocol where the official code decides it (issue 12): each test pins one choice."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from vitrun import models
from vitrun.cli import main
from vitrun.data import augment, loader, transforms
from vitrun.plan import plan
from vitrun.recipe import load
from vitrun.schema import Recipe, finetune_warmup


def _recipe(**sections) -> Recipe:
    raw = {"name": "p", "model": {"name": "ViT-Mu/4"}, "pretrain": {"data": "fractal", "image_size": 16, "steps": 10, "warmup_steps": 1}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return Recipe.model_validate(raw)


def test_masked_patch_models_have_no_pre_logits_layer():
    """Few-shot reads the representation: after masked-patch pre-training it must be the pooled
    token, not an untrained tanh layer; supervised pre-training keeps the pre-logits."""
    masked = _recipe(pretrain={"objective": "masked-patch"}, fewshot={"shots": [1]}, transfer=[{"data": "digits"}])
    supervised = _recipe(fewshot={"shots": [1]}, transfer=[{"data": "digits"}])
    assert all(s.config["model"]["pre_logits"] is False for s in plan([masked]))
    assert all(s.config["model"]["pre_logits"] is True for s in plan([supervised]))
    spec = models.ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan([masked])[0].config["model"].items()})
    assert isinstance(models.build(spec, 1, 16).pre_logits, torch.nn.Identity)


def test_masked_patch_recipe_uses_appendix_b12_optimiser():
    (variant, *_) = load("masked_patch").variants
    p = variant.pretrain
    assert (p.lr, p.schedule) == (2e-4, "cosine")
    assert p.warmup_steps == round(p.steps * 10_000 / 1_000_000)  # 10k of 1M steps, scaled


@pytest.mark.parametrize("section, values", [("pretrain", "steps = 10\nwarmup_steps = 10"), ("finetune", "steps = 5\nwarmup_steps = 7")])
def test_warmup_as_long_as_the_run_is_a_recipe_error(write_recipe, section, values):
    text = f"""
    name = "w"
    [model]
    name = "ViT-Mu/4"
    [pretrain]
    image_size = 16
    {'steps = 10' + chr(10) + 'warmup_steps = 1' if section != 'pretrain' else values}
    [{section if section != 'pretrain' else 'fewshot'}]
    {values if section != 'pretrain' else 'shots = [1]'}
    [[transfer]]
    data = "digits"
    """
    result = CliRunner().invoke(main, ["validate", str(write_recipe(text))])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert f"{section}: warmup_steps" in line and "below steps" in line


@pytest.mark.parametrize("steps, expected", [(20_000, 500), (10_000, 500), (501, 500), (500, 100), (101, 100), (100, 10), (5, 0)])
def test_finetune_warmup_default_follows_the_official_code(steps, expected):
    assert finetune_warmup(steps, None) == expected
    assert finetune_warmup(steps, 3) == 3


def test_writing_the_default_warmup_out_keeps_stage_keys():
    unset = _recipe(finetune={"steps": 10_000, "lr": 0.01}, transfer=[{"data": "digits"}])
    written = _recipe(finetune={"steps": 10_000, "lr": 0.01, "warmup_steps": 500}, transfer=[{"data": "digits"}])
    short = _recipe(finetune={"steps": 500, "lr": 0.01}, transfer=[{"data": "digits"}])
    assert [s.key for s in plan([unset])] == [s.key for s in plan([written])]
    assert plan([short])[-1].config["finetune"]["warmup_steps"] == 100


def test_finetune_resolution_defaults_to_384_for_real_datasets():
    transfers = [{"data": "digits"}, {"data": "folder:/nowhere"}]
    stages = [s for s in plan([_recipe(finetune={"steps": 10, "lr": 0.01, "warmup_steps": 1}, transfer=transfers)]) if s.kind == "finetune"]
    assert [s.config["finetune"]["image_size"] for s in stages] == [16, 384]
    h14 = _recipe(model={"name": "ViT-Ti/14"}, pretrain={"image_size": 224}, finetune={"steps": 10, "lr": 0.01, "warmup_steps": 1}, transfer=transfers[1:])
    assert plan([h14])[-1].config["finetune"]["image_size"] == 378  # whole 14-px patches


def test_finetune_evaluation_view_resizes_the_whole_image():
    """vit_jax evaluates fine-tuned models on the whole image resized to the square target."""
    assert transforms.plan(40, 20, "full", None) == ((0.0, 0.0, 40.0, 20.0), False)
    square = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    assert torch.equal(augment.full(square, 10), augment.center(square, 10))
    wide = torch.zeros(1, 3, 10, 20, dtype=torch.uint8)
    wide[..., :10] = 255  # left half white: the full view keeps it, the centre crop cuts into it
    assert augment.full(wide, 10)[0, 0, 0].mean().item() == pytest.approx(0.0, abs=0.05)
    assert augment.center(wide, 10)[0, 0, 0].mean().item() == pytest.approx(0.0, abs=0.05)
    assert augment.full(wide, 10)[0, 0, 0, 0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown evaluation view"):
        next(loader.eval_batches(None, 10, 1, view="crop"))


def test_finetuning_trains_on_inception_crops_and_scores_the_full_view(tmp_path, write_recipe, monkeypatch):
    crops, views = [], []
    train_batches, eval_batches = loader.train_batches, loader.eval_batches
    monkeypatch.setattr(loader, "train_batches", lambda *a, **k: crops.append(a[5]) or train_batches(*a, **k))
    monkeypatch.setattr(loader, "eval_batches", lambda *a, **k: views.append(k.get("view", "center")) or eval_batches(*a, **k))
    text = """
    name = "ft"
    [model]
    name = "ViT-Mu/4"
    [pretrain]
    image_size = 16
    objective = "scratch"
    [finetune]
    steps = 2
    batch_size = 8
    lr = 0.01
    [[transfer]]
    data = "digits"
    per_class = 4
    """
    result = CliRunner().invoke(main, ["recipe", str(write_recipe(text)), "--results", str(tmp_path / "results")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert crops == ["inception"] and views == ["full"]


def test_embedding_dropout_acts_whatever_the_position_embedding():
    """Table 8's arms differ in position information only: "none" and "relative" get the same
    dropout after the embeddings as "1d"."""
    for pos in ("none", "relative", "1d"):
        spec = models.registry.spec("ViT-Mu/4", pos_embed=pos, dropout=0.5)
        model = models.build(spec, 3, 16).train()
        seen = []
        model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        torch.manual_seed(0)
        model(torch.randn(4, 3, 16, 16))
        zeros = (seen[0] == 0).float().mean().item()
        assert 0.4 < zeros < 0.6, (pos, zeros)
