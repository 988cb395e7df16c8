"""A tiny recipe that runs the real pipeline (both model families, two sizes, two transfer sets) in
seconds, and `run_recipe`, one finished run of a recipe through the CLI for fixtures to share."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class FinishedRun(NamedTuple):
    recipe: Path  # the recipe file
    results: Path  # its --results folder: results/<name>/<stage-key>/...
    output: str  # what `vitrun recipe` printed


def run_recipe(folder: Path, text: str, filename: str = "tiny.toml") -> FinishedRun:
    """Write `text` to folder/filename and run it with `vitrun recipe` (in process); it must succeed."""
    from click.testing import CliRunner

    from vitrun.cli import main

    recipe = folder / filename
    recipe.write_text(text)
    results = folder / "results"
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(results)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return FinishedRun(recipe, results, result.output)


TINY = """
name = "tiny"
seed = 0

[model]
name = "ViT-Mu/4"

[pretrain]
data = "fractal"
classes = 4
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
data = "digits"

[[transfer]]
data = "shapes"
per_class = 8

[sweep]
model = ["ViT-Mu/4", "R14x0.25"]
"pretrain.size" = [16, 32]

[[report.tables]]
name = "transfer"
kind = "finetune"
rows = "model"
columns = "pretrain.size"
"""
