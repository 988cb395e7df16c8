"""`vitrun analyze` through the real CLI: a tiny pre-trained experiment, a timm checkpoint, an npz."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitrun.cli import main
from vitrun.evals.analyze import WHATS

PRETRAIN_ONLY = """
name = "inside"
seed = 0

[model]
name = "ViT-Mu/4"
depth = 2

[pretrain]
data = "fractal"
classes = 4
size = 16
image_size = 16
steps = 2
batch_size = 8
warmup_steps = 1

[sweep]
"model.classifier" = ["token", "gap"]
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    recipe = root / "inside.toml"
    recipe.write_text(PRETRAIN_ONLY)
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(root / "results")])
    assert result.exit_code == 0, result.output
    return root / "results"


@pytest.mark.slow  # about 25 s on 2 cores: two pre-trainings, then every figure of each
def test_experiment_gets_every_figure_and_an_index(experiment):
    result = CliRunner().invoke(main, ["analyze", "inside", "--results", str(experiment), "--images", "4"])
    assert result.exit_code == 0, result.output
    folder = experiment / "inside"
    index = json.loads((folder / "analysis" / "index.json").read_text())
    stages = sorted(p.parent.name for p in folder.glob("pretrain-*/stage.json"))
    assert len(stages) == 2
    assert sorted((e["target"], e["what"]) for e in index) == sorted((s, w) for s in stages for w in WHATS)
    for entry in index:
        assert set(entry) == {"what", "target", "title", "png", "csv"}
        assert entry["png"] == f"analysis/{entry['target']}/{entry['what']}.png"
        assert (folder / entry["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (folder / entry["csv"]).read_text().count("\n") > 1
    distance = (folder / index[0]["png"]).parent / "attention-distance.csv"
    lines = distance.read_text().splitlines()
    assert lines[0] == "layer,head,mean_distance_px,images" and len(lines) == 1 + 2 * 4  # 2 layers x 4 heads
    assert all(0 <= float(line.split(",")[2]) <= 16 * 2**0.5 for line in lines[1:])
    # Again for one stage and one analysis: its entry is replaced, the others kept.
    again = CliRunner().invoke(main, ["analyze", stages[0], "--what", "rollout", "--results", str(experiment), "--images", "2"])
    assert again.exit_code == 0, again.output
    assert len(json.loads((folder / "analysis" / "index.json").read_text())) == len(index)


def test_bad_targets_exit_2_with_one_line(tmp_path):
    runner, experiment = CliRunner(), tmp_path
    unknown = runner.invoke(main, ["analyze", "nope", "--results", str(experiment)])
    assert unknown.exit_code == 2 and "not a finished stage key nor an experiment" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1
    missing = runner.invoke(main, ["analyze", "npz:/no/such.npz", "--results", str(experiment)])
    assert missing.exit_code == 2 and "no checkpoint file" in missing.output


def test_npz_checkpoint_and_resnet_refusal(tmp_path):
    import torch

    from vitrun import interop, models

    torch.manual_seed(0)
    interop.to_npz(models.create("ViT-Mu/4", num_classes=5, image_size=16, depth=1), tmp_path / "vit.npz")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["analyze", f"npz:{tmp_path / 'vit.npz'}", "--what", "posemb-similarity", "--what", "embedding-filters",
                                         "--what", "attention-distance", "--images", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    entries = json.loads((out / "index.json").read_text())
    assert {e["what"] for e in entries} == {"posemb-similarity", "embedding-filters", "attention-distance"}
    assert all((out.parent / e["png"]).is_file() for e in entries)
    interop.to_npz(models.create("R14x0.25", num_classes=5, image_size=16), tmp_path / "bit.npz")
    refused = CliRunner().invoke(main, ["analyze", f"npz:{tmp_path / 'bit.npz'}", "--what", "rollout", "--out", str(out)])
    assert refused.exit_code == 2 and "is a ResNet" in refused.output


@pytest.mark.slow  # about 10 s on 2 cores (timm's import, digits, four figures)
def test_timm_checkpoint_from_a_local_cache(tmp_path, monkeypatch):
    """A timm model built and saved here, loaded by `timm:` from the hub's cache with no network."""
    timm = pytest.importorskip("timm")
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: as offline
    snapshot = tmp_path / "hub" / "models--vitrun--tiny-vit" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    args = {"img_size": 16, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4}
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 10, "model_args": args, "pretrained_cfg": {}}))
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=10, **args).state_dict(), str(snapshot / "model.safetensors"))

    out = tmp_path / "analysis"
    result = CliRunner().invoke(main, ["analyze", "timm:hf-hub:vitrun/tiny-vit", "--out", str(out), "--images", "3", "--data", "digits"])
    assert result.exit_code == 0, result.output
    entries = json.loads((out / "index.json").read_text())
    assert sorted(e["what"] for e in entries) == sorted(WHATS)
    assert {e["target"] for e in entries} == {"timm:hf-hub:vitrun/tiny-vit"}
    assert all(Path(out.parent / e["png"]).is_file() for e in entries)


INITIAL_WEIGHTS = """
name = "looked-at"

[model]
name = "ViT-Mu/4"
depth = 1

[pretrain]
image_size = 16
steps = 0

[[analysis]]
what = "rollout"
data = "digits"
images = 2

[[analysis]]
what = "embedding-filters"
"""


def test_recipe_analysis_runs_after_the_stages_and_is_kept_on_a_rerun(write_recipe, tmp_path):
    recipe, results = write_recipe(INITIAL_WEIGHTS), tmp_path / "results"
    first = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(results)])
    assert first.exit_code == 0, first.output
    assert "Drew 2 analyses" in first.output
    index = json.loads((results / "looked-at" / "analysis" / "index.json").read_text())
    assert sorted(e["what"] for e in index) == ["embedding-filters", "rollout"]
    again = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(results)])
    assert again.exit_code == 0 and "Drew" not in again.output  # same settings: kept


@pytest.mark.parametrize("table, message", [
    ('what = "rolout"', "analysis[0].what"),
    ('what = "rollout"\nimages = 0', "analysis[0].images"),
    ('what = "rollout"\ndata = "digitz"', "analysis[0].data: unknown data source 'digitz' (did you mean 'digits'?)"),
])
def test_recipe_analysis_errors_are_one_line(write_recipe, table, message):
    text = INITIAL_WEIGHTS.split("[[analysis]]")[0] + "[[analysis]]\n" + table + "\n"
    result = CliRunner().invoke(main, ["validate", str(write_recipe(text))])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_recipe_analysis_listed_twice(write_recipe):
    result = CliRunner().invoke(main, ["validate", str(write_recipe(INITIAL_WEIGHTS + '\n[[analysis]]\nwhat = "rollout"\n'))])
    assert result.exit_code == 2 and "lists rollout more than once" in result.output


def test_index_keeps_one_entry_per_analysis_and_target(tmp_path):
    from vitrun.evals.analyze import Written, update_index

    folder = tmp_path / "exp" / "analysis"

    def written(what, target, title):
        return Written(what, target, title, folder / target / f"{what}.png", folder / target / f"{what}.csv")

    update_index(folder, [written("rollout", "a", "old"), written("rollout", "b", "b")])
    update_index(folder, [written("rollout", "a", "new")])
    entries = json.loads((folder / "index.json").read_text())
    assert [(e["target"], e["title"]) for e in entries] == [("b", "b"), ("a", "new")]
    assert entries[1] == {"what": "rollout", "target": "a", "title": "new", "png": "analysis/a/rollout.png", "csv": "analysis/a/rollout.csv"}
