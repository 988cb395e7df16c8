"""The CPU miniatures (recipes/mini/) and `vitrun recipe FOLDER`, the suite that runs them all (issue 12)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from vitrun import estimate, suite
from vitrun.cli import main
from vitrun.recipe import BUILTIN_DIR, RecipeError, load

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MINI = sorted((BUILTIN_DIR / "mini").glob("*.toml"))
# The paper's experiments the mini suite must cover, by the recipe that does.
COVERS = {"fig3": "mini_fig3_datasets", "fig4": "mini_fig4_sizes", "fig5": "mini_fig5_compute", "table8": "mini_table8_posemb",
          "fig9": "mini_fig9_classifier", "masked patch": "mini_masked_patch"}


def test_the_miniatures_cover_the_paper_experiments():
    assert len(MINI) >= 6, "the glob found no miniatures: it would check nothing"
    assert set(COVERS.values()) <= {p.stem for p in MINI}
    assert suite.members("mini") == MINI


@pytest.mark.parametrize("path", MINI, ids=[p.stem for p in MINI])
def test_each_miniature_is_cpu_sized_and_says_what_it_reproduces(path):
    header = path.read_text().split("\nname = ")[0]
    assert "arXiv 2010.11929" in header and "paper" in header and "measured:" in header, path  # its time, as run
    loaded = load(str(path))
    for variant in loaded.variants:
        assert variant.pretrain.data in ("fractal", "digits", "shapes") and all(t.data in ("fractal", "digits", "shapes") for t in variant.transfer)
        assert variant.pretrain.image_size <= 40 and variant.pretrain.batch_size <= 64
        name = variant.model.name
        assert name in ("ViT-Mu/4", "ViT-Mi/4", "R14x0.25", "R14x0.25+ViT-Mu/8"), f"{path.name}: {name} is not CPU-sized"


def test_the_size_miniature_spans_30x_with_steps_scaled_and_seeds():
    (variants) = load("mini_fig4_sizes").variants
    sizes = sorted({v.pretrain.size for v in variants})
    assert sizes[-1] / sizes[0] >= 30
    steps = {v.pretrain.size: v.pretrain.steps for v in variants}
    assert steps[sizes[-1]] / steps[sizes[0]] >= 30 * 0.9  # budget scaled with the data
    assert len({v.seed for v in variants}) >= 2


def test_the_compute_miniature_has_every_family_at_two_budgets():
    raw = tomllib.loads((BUILTIN_DIR / "mini" / "mini_fig5_compute.toml").read_text())
    assert set(raw["sweep"]["model"]) == {"ViT-Mu/4", "R14x0.25", "R14x0.25+ViT-Mu/8"} and len(raw["sweep"]["pretrain.steps"]) == 2
    assert any(t.get("values") == "pretrain_exaflops" for t in raw["report"]["tables"])


SMALL = """
name = "{name}"
[model]
name = "ViT-Mu/4"
[pretrain]
data = "fractal"
classes = 2
size = 8
image_size = 16
steps = 2
batch_size = 4
warmup_steps = 1
"""


def test_a_folder_runs_every_recipe_in_it(write_recipe, tmp_path):
    write_recipe(SMALL.format(name="one"), "a.toml")
    write_recipe(SMALL.format(name="two"), "b.toml")
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["recipe", str(tmp_path), "--results", str(results)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert 0 <= result.output.index(": a (1/2)") < result.output.index(": b (2/2)")  # in name order
    assert len(list((results / "one").glob("pretrain-*/stage.json"))) == 1 and len(list((results / "two").glob("pretrain-*/stage.json"))) == 1


@pytest.mark.parametrize("second, message", [
    ('name = "bad"\n[model]\nname = "ViT-Xx/4"\n', "b.toml"),
    (None, "is also"),
])
def test_a_suite_with_one_bad_recipe_runs_nothing(write_recipe, tmp_path, second, message):
    write_recipe(SMALL.format(name="one"), "a.toml")
    write_recipe(second or SMALL.format(name="one"), "b.toml")  # None: a second recipe of the same name
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["recipe", str(tmp_path), "--results", str(results)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not results.exists()


def test_an_empty_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(RecipeError, match="no recipes"):
        suite.members(str(tmp_path))
    assert suite.members("quickstart") is None  # a recipe, not a folder


def test_the_mini_suite_plans_every_miniature_in_a_dry_run(monkeypatch):
    """`vitrun recipe mini --dry-run`: each plan with its estimate (the step timing stubbed: its
    speed is not what this checks)."""
    monkeypatch.setattr(estimate, "_step_seconds", lambda spec, size, batch, device: 0.01)
    result = CliRunner().invoke(main, ["recipe", "mini", "--dry-run"])
    assert result.exit_code == 0, result.output
    for path in MINI:
        assert f"mini: {path.stem}" in result.output
    assert result.output.count("here (cpu)") == len(MINI)


@pytest.mark.slow
@pytest.mark.parametrize("path", MINI, ids=[p.stem for p in MINI])
def test_each_miniature_passes_smoke(tmp_path, path):
    result = CliRunner().invoke(main, ["recipe", path.stem, "--smoke", "--results", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
