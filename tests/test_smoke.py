"""`--smoke`, `--dry-run` costs and offline checks, `epochs`, and the built-in recipe catalogue (issue 12)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitrun import epochs, estimate, smoke
from vitrun.catalogue import entries
from vitrun.cli import main
from vitrun.plan import plan
from vitrun.recipe import BUILTIN_DIR, RecipeError, builtin_recipes, load, resolve_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PAPER = sorted((BUILTIN_DIR / "paper").glob("*.toml"))
# Keys the scale-engine issue (10) adds; recipes using them validate once it is merged.
NEEDS_ISSUE_10 = ("dropout = ", "finetune = {", "eval_every = ", "keep = ", "ema = ")


def _needs_issue_10(path: Path) -> bool:
    from vitrun.schema import PretrainConfig

    return "ema" not in PretrainConfig.model_fields and any(line.startswith(NEEDS_ISSUE_10) for line in path.read_text().splitlines())


def test_the_paper_recipes_are_found():
    assert len(PAPER) >= 8, "the glob found no full-scale recipes: it would check nothing"
    assert resolve_path("pretrain_b16") == BUILTIN_DIR / "paper" / "pretrain_b16.toml"
    assert resolve_path("pretrain_b16.toml") == BUILTIN_DIR / "paper" / "pretrain_b16.toml"


@pytest.mark.parametrize("name, tiny", [("ViT-B/16", "ViT-Mu/4"), ("ViT-L/32", "ViT-Mi/8"), ("ViT-H/14", "ViT-Mi/4"), ("ViT-Mu/4", "ViT-Mu/4"), ("ViT-Mi/4", "ViT-Mi/4"),
                                        ("R50x1", "R14x0.25"), ("R152x2", "R14x0.5"), ("R14x0.25", "R14x0.25"),
                                        ("R50+ViT-B/16", "R14x0.25+ViT-Mu/8"), ("R50+ViT-L/32", "R14x0.25+ViT-Mi/8")])
def test_models_shrink_within_their_family(name, tiny):
    assert smoke.shrink_model(name) == tiny


def test_smoke_replaces_datasets_keeps_classes_options_and_labels():
    raw = tomllib.loads((BUILTIN_DIR / "paper" / "pretrain_b16.toml").read_text())
    raw["model"]["classifier"] = "gap"
    small = smoke.shrink(raw)
    assert small["name"] == "pretrain_b16-smoke"
    assert small["model"] == {"name": "ViT-Mu/4", "label": "ViT-B/16", "classifier": "gap"}
    p = small["pretrain"]
    assert (p["data"], p["classes"], p["name"], p["steps"], p["image_size"]) == ("fractal", 10, "ImageNet-21k", smoke.SMOKE_STEPS, smoke.SMOKE_IMAGE)
    assert "epochs" not in p and p["warmup_steps"] < p["steps"]
    labels = [(t["name"], t["data"], t["classes"]) for t in small["transfer"]]
    assert labels == [("ImageNet", "fractal", 10), ("CIFAR-10", "fractal", 10), ("CIFAR-100", "fractal", 10), ("Pets", "fractal", 10), ("Flowers", "fractal", 10)]
    assert all("download" not in t and "label_column" not in t for t in small["transfer"])
    assert small["transfer"][0]["finetune"]["steps"] == smoke.SMOKE_STEPS  # per-dataset overrides shrink too
    assert small["transfer"][0]["per_class"] >= max(raw["fewshot"]["shots"])
    assert "expect" not in small and raw["name"] == "pretrain_b16"  # the original is untouched


def test_smoke_keeps_swept_values_distinct_and_ordered():
    raw = {"name": "s", "model": {"name": "ViT-B/16"}, "pretrain": {"data": "hf:timm/imagenet-22k-wds", "steps": 10},
           "sweep": {"pretrain.size": [9_000_000, 1_000_000, 3_000_000], "model": ["ViT-B/16", "R50x1"]}}
    vit, resnet = smoke.shrink(raw)["sweep"]  # one table per model: each labelled with its full-scale name
    assert vit["pretrain.size"][1] < vit["pretrain.size"][2] < vit["pretrain.size"][0] and vit["pretrain.size"] == resnet["pretrain.size"]
    assert (vit["model.name"], vit["model.label"], resnet["model.name"], resnet["model.label"]) == (["ViT-Mu/4"], ["ViT-B/16"], ["R14x0.25"], ["R50x1"])


def test_smoke_runs_a_full_scale_recipe_end_to_end(tmp_path):
    """masked_patch_full (ImageNet-21k, ViT-B/16, 1M steps), its masked-patch arm: pre-training,
    four dev-split trials and the final fine-tuning on stand-ins (the slow test runs every arm)."""
    results = tmp_path / "results"
    args = ["recipe", "masked_patch_full", "--smoke", "--results", str(results), "--set", 'sweep.pretrain.objective=["masked-patch"]']
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "ImageNet top-1" in result.output
    assert (results / "masked_patch_full-smoke").is_dir() and not (results / "masked_patch_full").exists()
    assert len(list((results / "masked_patch_full-smoke").glob("finetune_dev-*/stage.json"))) == 4


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_every_full_scale_recipe_passes_smoke(tmp_path, path):
    if _needs_issue_10(path):
        pytest.skip("uses keys of the scale-engine issue (10)")
    result = CliRunner().invoke(main, ["recipe", path.stem, "--smoke", "--results", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


HUB = """
name = "hub"
[model]
name = "ViT-Mu/4"
[pretrain]
data = "hf:nobody/not-reachable"
image_size = 16
steps = 4
batch_size = 8
warmup_steps = 1
"""


def test_an_unreachable_hub_dataset_warns_in_a_dry_run_and_stops_a_real_one(write_recipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(write_recipe(HUB))
    dry = CliRunner().invoke(main, ["recipe", path, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "warning:" in dry.output and "hf:nobody/not-reachable" in dry.output and "a real run stops here" in dry.output
    assert "here (cpu)" in dry.output and "NVIDIA A100" in dry.output and "assumed utilisation" in dry.output
    real = CliRunner().invoke(main, ["validate", path])
    assert real.exit_code == 2 and "pretrain.data" in real.output


def test_estimates_state_their_assumptions():
    assert estimate.gpu_seconds(1e18, "h100") == pytest.approx(1e18 / (989e12 * 0.4))
    assert estimate.flops_text(1.3e20) == "130 EFLOPs" and estimate.flops_text(2e12) == "2.00e+12"
    assert [estimate.duration(s) for s in (30, 600, 7200, 86400 * 5, 86400 * 800)] == ["30 s", "10 min", "2.0 h", "5.0 d", "2 years"]


# -- epochs ------------------------------------------------------------------------------

EPOCHS = """
name = "ep"
[model]
name = "ViT-Mu/4"
[pretrain]
data = "fractal"
classes = 10
image_size = 16
{budget}
batch_size = 16
warmup_steps = 2
[finetune]
epochs = 1
batch_size = 8
lr = 0.01
warmup_steps = 1
[[transfer]]
data = "digits"
"""


def test_epochs_become_steps_and_share_their_stage_keys(write_recipe):
    by_epochs = load(str(write_recipe(EPOCHS.format(budget="epochs = 2"), "a.toml")))
    by_steps = load(str(write_recipe(EPOCHS.format(budget="steps = 125"), "b.toml")))
    assert by_epochs.variants[0].pretrain.steps == 125  # ceil(2 × 10 classes × 100 images / 16)
    assert by_epochs.variants[0].finetune.steps == 150  # ceil(1198 digits / 8)
    assert [s.key for s in plan(by_epochs.variants)] == [s.key for s in plan(by_steps.variants)]
    assert any("pretrain.epochs = 2 → steps = 125" in note for note in by_epochs.notes)


def test_epochs_of_known_hub_sets_and_local_folders(tmp_path):
    from tests.data.conftest import write_tree

    image_folder = tmp_path / "tree"
    write_tree(image_folder / "train", 5)
    write_tree(image_folder / "test", 2, offset=100)
    hub = {"pretrain": {"data": "hf:timm/imagenet-22k-wds", "epochs": 90, "batch_size": 4096}}
    epochs.resolve(hub)
    assert hub["pretrain"]["steps"] == 301_559  # 90 × 13,724,282 / 4096, rounded up
    folder = {"pretrain": {"data": f"folder:{image_folder}", "epochs": 1, "batch_size": 1}}
    epochs.resolve(folder)
    assert folder["pretrain"]["steps"] == sum(1 for f in Path(image_folder, "train").rglob("*") if f.is_file()) == 15


@pytest.mark.parametrize("variant, message", [
    ({"pretrain": {"data": "hf:someone/unknown", "epochs": 1}}, "pretrain.epochs: the size of hf:someone/unknown"),
    ({"pretrain": {"data": "fractal", "epochs": 1, "steps": 5}}, "give steps or epochs, not both"),
    ({"pretrain": {"data": "fractal", "epochs": 0}}, "positive number"),
    ({"finetune": {"epochs": 1}, "transfer": [{"data": "digits"}, {"data": "shapes"}]}, "differ in size"),
])
def test_epochs_that_cannot_be_converted_are_one_line_errors(variant, message):
    with pytest.raises(epochs.EpochsError, match=message):
        epochs.resolve(variant)


# -- catalogue ---------------------------------------------------------------------------

def test_ls_lists_every_builtin_recipe_with_its_description():
    listed = entries()
    assert [e.path for e in listed] == builtin_recipes() and len(listed) >= 12
    assert len({e.name for e in listed}) == len(listed), "built-in names must be unique: they are found by name"
    assert all(e.description and "\n" not in e.description for e in listed)
    output = CliRunner().invoke(main, ["ls"]).output
    for e in listed:
        assert e.name in output


def test_every_builtin_recipe_has_a_description_and_a_paper_header():
    for path in builtin_recipes():
        raw = tomllib.loads(path.read_text())
        assert raw.get("description"), path
        if path.parent.name == "paper":
            header = path.read_text().split("\nname = ")[0]
            assert "exaFLOPs" in header and "A100-hours" in header and "paper" in header, path


def test_cp_finds_a_recipe_in_a_subfolder(tmp_path):
    result = CliRunner().invoke(main, ["cp", "pretrain_b16", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pretrain_b16.toml").read_text() == (BUILTIN_DIR / "paper" / "pretrain_b16.toml").read_text()


FLOWERS = """
name = "fl"
[model]
name = "ViT-Mu/4"
[pretrain]
image_size = 16
steps = 4
warmup_steps = 1
[fewshot]
shots = [1, 25]
[[transfer]]
data = "digits"
[[transfer]]
data = "torchvision:Flowers102"
{shots}
"""


def test_shots_a_known_dataset_cannot_give_are_a_recipe_error(write_recipe, monkeypatch):
    from vitrun.data import sources, tv

    monkeypatch.setattr(tv, "check", lambda name, options, cache_dir=None: None)
    sources.check.cache_clear()
    with pytest.raises(RecipeError, match=r"fewshot.shots: 25 shots per class, but transfer\[1\] \(torchvision:Flowers102\) has only 10"):
        load(str(write_recipe(FLOWERS.format(shots=""))))
    loaded = load(str(write_recipe(FLOWERS.format(shots="shots = [1, 5, 10]"))))
    fewshot = [s.config["fewshot"]["shots"] for s in plan(loaded.variants) if s.kind == "fewshot" and "Flowers" in s.data]
    assert fewshot == [1, 5, 10]
    sources.check.cache_clear()


def test_smoke_shrinks_vtab_subsets_to_fit_the_stand_ins():
    """vtab1k's 1,000 random images (200 of them dev) become a subset the stand-in can give, in
    the same proportion; its dev split stays dev_size (no dev_fraction beside it)."""
    raw = tomllib.loads((BUILTIN_DIR / "paper" / "vtab1k.toml").read_text())
    assert [(t["train_size"], t["dev_size"]) for t in raw["transfer"]] == [(1000, 200)] * 9
    for t in smoke.shrink(raw)["transfer"]:
        pool = t["classes"] * t["per_class"]
        assert 0 < t["dev_size"] < t["train_size"] <= pool and "dev_fraction" not in t
        assert t["dev_size"] == round(200 * t["train_size"] / 1000)
    assert len(load(str(BUILTIN_DIR / "paper" / "vtab1k.toml"), smoke=True).variants[0].transfer) == 9
