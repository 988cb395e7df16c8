"""Real stages on real-format data through the CLI: an image folder for pre-training, a
save_to_disk dataset and Parquet files for transfer; the report reads them back."""

from __future__ import annotations

import json

from click.testing import CliRunner

from vitrun.cli import main

RECIPE = """
name = "real"

[model]
name = "ViT-Mu/4"

[pretrain]
data = "folder:{folder}"
size = 30               # class-balanced subset of the 48 training images
image_size = 16
steps = 4
batch_size = 12
warmup_steps = 1

[finetune]
steps = 3
batch_size = 12
lr = [0.01, 0.03]       # dev trials on lazily decoded sets
warmup_steps = 1
image_size = 16         # real sets default to 384 (Table 4): too big for a test

[fewshot]
shots = [2]
draws = 1

[[transfer]]
name = "arrow"
data = "arrow:{arrow}"

[[transfer]]
name = "parquet"
data = "parquet:{parquet}/*.parquet"
label_column = "fine_label"
crop = "inception"

[run]
workers = {workers}

[[report.tables]]
name = "transfer"
kind = "finetune"
rows = "data"
columns = "model"
"""


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_recipe_on_folder_arrow_and_parquet(tmp_path, image_folder, hf_arrow, hf_parquet):
    recipe = tmp_path / "real.toml"
    recipe.write_text(RECIPE.format(folder=image_folder, arrow=hf_arrow, parquet=hf_parquet, workers=1))
    results = tmp_path / "results"
    run = _invoke("recipe", str(recipe), "--results", str(results))
    assert run.exit_code == 0, run.output
    records = [json.loads(p.read_text()) for p in (results / "real").glob("*/stage.json")]
    assert sorted(r["kind"] for r in records) == ["fewshot"] * 2 + ["finetune"] * 2 + ["finetune_dev"] * 4 + ["pretrain"]
    pretrain = next(r for r in records if r["kind"] == "pretrain")
    assert pretrain["metrics"]["train_images"] == 30 and pretrain["metrics"]["num_classes"] == 3
    assert "image_column" not in pretrain["config"]["pretrain"], "unset source options stay out of stage keys"
    finetune = {r["config"]["transfer"]["name"]: r for r in records if r["kind"] == "finetune"}
    assert finetune["parquet"]["config"]["transfer"]["label_column"] == "fine_label"
    assert finetune["arrow"]["metrics"]["train_images"] == 48
    trials = [r["metrics"] for r in records if r["kind"] == "finetune_dev" and r["config"]["transfer"]["name"] == "arrow"]
    assert [(t["train_images"], t["dev_images"]) for t in trials] == [(43, 5)] * 2, "10% of 48 held out"

    (doc,) = json.loads(_invoke("report", "--results", str(results), "--format", "json").output)
    (table,) = doc["tables"]
    assert sorted(table["index"]) == ["arrow", "parquet"] and table["columns"] == ["ViT-Mu/4"]
    assert all(0 <= v <= 100 for row in table["data"] for v in row)

    # [run] workers never changes a stage key (every stage is found done) nor a result.
    recipe.write_text(RECIPE.format(folder=image_folder, arrow=hf_arrow, parquet=hf_parquet, workers=0))
    again = _invoke("recipe", str(recipe), "--results", str(results))
    assert "9 of 9 stages already done" in again.output
    fresh = tmp_path / "fresh"
    assert _invoke("recipe", str(recipe), "--results", str(fresh)).exit_code == 0
    for record in records:
        other = json.loads((fresh / "real" / record["key"] / "stage.json").read_text())
        assert other["metrics"] == record["metrics"], f"{record['kind']} differs with 0 workers"


def test_missing_data_fails_before_anything_is_written(tmp_path, image_folder, hf_arrow, hf_parquet):
    recipe = tmp_path / "real.toml"
    text = RECIPE.format(folder=image_folder, arrow=hf_arrow, parquet=hf_parquet, workers=0)
    recipe.write_text(text.replace(f"folder:{image_folder}", f"folder:{tmp_path / 'photos'}"))
    results = tmp_path / "results"
    # In process (tests/test_cli.py runs a usage error as a real process): exit 2, one line on stderr.
    run = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(results)])
    assert run.exit_code == 2 and isinstance(run.exception, SystemExit), run.output
    (line,) = run.stderr.strip().splitlines()
    assert f"{recipe}: pretrain.data: folder:{tmp_path / 'photos'}: no such folder" in line
    assert not results.exists()
    recipe.write_text(text.replace('label_column = "fine_label"', 'label_column = "label"'))
    check = _invoke("validate", str(recipe))
    assert check.exit_code == 2


def test_bench_data_reports_images_per_second(image_folder):
    result = _invoke("bench", "data", f"folder:{image_folder}", "--image-size", "16", "--batch-size", "8", "--workers", "0", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output and "48 training images" in result.output
    bad = _invoke("bench", "data", "folder:/no/such/folder")
    assert bad.exit_code == 2
