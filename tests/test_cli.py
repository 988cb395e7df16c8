"""The real CLI, end to end on a tiny recipe: run, skip on re-run, report, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.tiny import TINY
from vitrun.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_run_prints_report(tiny_run):
    _, results, output = tiny_run
    assert "transfer" in output and "ViT-Mu/4" in output and "R14x0.25" in output
    stages = list((results / "tiny").glob("*/stage.json"))
    assert len(stages) == 20
    record = json.loads(next(iter((results / "tiny").glob("finetune-*/stage.json"))).read_text())
    assert record["status"] == "done" and 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert {"config", "parents", "wall_time_s", "flops", "device", "versions"} <= set(record)
    assert record["versions"]["vitrun"] and record["flops"] > 0


def test_rerun_skips_everything(tiny_run):
    recipe, results, _ = tiny_run
    result = _invoke("recipe", str(recipe), "--results", str(results))
    assert result.exit_code == 0
    assert "20 of 20 stages already done" in result.output
    assert "Running" not in result.output


def test_report_json_matches_records(tiny_run):
    _, results, _ = tiny_run
    result = _invoke("report", "--results", str(results), "--format", "json")
    (doc,) = json.loads(result.output)  # always a list, one entry per experiment
    assert doc["experiment"] == "tiny"
    (table,) = doc["tables"]
    records = [json.loads(p.read_text()) for p in (results / "tiny").glob("finetune-*/stage.json")]
    vit_16 = [r["metrics"]["accuracy"] for r in records if r["config"]["model"]["name"] == "ViT-Mu/4" and r["config"]["pretrain"]["size"] == 16]
    row = table["index"].index("ViT-Mu/4")
    col = table["columns"].index(16)
    assert table["data"][row][col] == pytest.approx(round(100 * sum(vit_16) / len(vit_16), 1))


@pytest.mark.parametrize("fmt,marker", [("markdown", "|"), ("csv", ","), ("latex", "\\begin{tabular}")])
def test_report_formats(tiny_run, fmt, marker):
    _, results, _ = tiny_run
    result = _invoke("report", "--results", str(results), "--format", fmt)
    assert result.exit_code == 0 and marker in result.output


def test_report_out_writes_tables_figures_and_curves(tiny_run, tmp_path):
    _, results, _ = tiny_run
    result = _invoke("report", "--results", str(results), "--format", "csv", "--out", str(tmp_path), "--curves")
    assert result.exit_code == 0
    assert list((tmp_path / "tiny").glob("*.csv")) and list((tmp_path / "tiny").glob("*.png"))
    assert (tmp_path / "tiny" / "curves-pretrain.png").stat().st_size > 2000 and (tmp_path / "tiny" / "curves-finetune.png").is_file()


def test_dry_run_shows_status_and_writes_nothing(tiny_run, tmp_path):
    recipe, results, _ = tiny_run
    result = _invoke("recipe", str(recipe), "--results", str(results), "--dry-run", "--set", "finetune.lr=0.03")
    assert result.exit_code == 0
    assert "done" in result.output and "todo" in result.output and "FLOPs" in result.output
    fresh = tmp_path / "fresh"
    assert _invoke("recipe", str(recipe), "--results", str(fresh), "--dry-run").exit_code == 0
    assert not fresh.exists()


def test_bad_recipe_exits_2_and_writes_nothing(write_recipe, tmp_path):
    path = write_recipe(TINY.replace("steps = 6", "steps = -6"))
    results = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "vitrun.cli", "recipe", str(path), "--results", str(results)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrain.steps" in lines[0] and "Traceback" not in proc.stderr
    assert not results.exists()


def test_ls_cp_validate(tmp_path):
    assert "quickstart" in _invoke("ls").output
    assert _invoke("cp", "quickstart", str(tmp_path)).exit_code == 0
    copied = tmp_path / "quickstart.toml"
    assert copied.is_file()
    assert _invoke("cp", "quickstart", str(tmp_path)).exit_code == 2, "never overwrite"
    result = _invoke("validate", str(copied))
    assert result.exit_code == 0 and "valid" in result.output


def test_help_imports_neither_torch_nor_pandas():
    """`vitrun --help` must answer at once: the heavy libraries load inside commands."""
    code = "import sys; from vitrun.cli import main; assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    proc = subprocess.run([sys.executable, "-m", "vitrun.cli", "--help"], check=True, capture_output=True, text=True)
    assert "vitrun recipe quickstart" in proc.stdout


def test_shards_share_one_results_directory(write_recipe, tmp_path):
    """Two pre-trainings (one per model family) with their transfer stages: one tree per shard."""
    small = TINY.replace('"pretrain.size" = [16, 32]', '"pretrain.size" = [16]').replace('[[transfer]]\ndata = "shapes"\nper_class = 8\n\n', "")
    assert small.count("[[transfer]]") == 1
    path = write_recipe(small)
    results = tmp_path / "shared"
    for part in ("1/2", "2/2"):
        assert _invoke("recipe", str(path), "--results", str(results), "--shard", part).exit_code == 0
    assert len(list((results / "tiny").glob("*/stage.json"))) == 6
    again = _invoke("recipe", str(path), "--results", str(results))
    assert "6 of 6 stages already done" in again.output
    assert _invoke("recipe", str(path), "--shard", "3/2").exit_code == 2


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """The README's first command: the built-in quickstart, a 3 × 3 table of accuracies, and
    every number in it means something: each model family, at each pre-training size, is
    above chance (10 classes: 10%) on each transfer set, by fine-tuning and by 5-shot."""
    results = tmp_path / "results"
    assert _invoke("recipe", "quickstart.toml", "--results", str(results)).exit_code == 0
    (doc,) = json.loads(_invoke("report", "--results", str(results), "--format", "json").output)
    first = doc["tables"][0]
    assert len(first["index"]) == 3 and len(first["columns"]) == 3
    records = [json.loads(p.read_text()) for p in (results / "quickstart").glob("*/stage.json")]
    transfers = [r for r in records if r["kind"] in ("finetune", "fewshot")]
    assert len(transfers) == 36
    low = sorted((r["metrics"]["accuracy"], r["kind"], r["config"]["model"]["name"], r["config"]["transfer"]["data"]) for r in transfers)[:3]
    assert low[0][0] >= 0.12, f"near chance (10%; 12% is 2 standard errors above it on 1,000 test images): {low}"


def test_errors_quote_toml_tables_verbatim(write_recipe):
    """`[finetune]` in a message is TOML, not rich markup: it must reach the user as written."""
    path = write_recipe(TINY.split("[[transfer]]")[0])  # fine-tuning without a transfer dataset
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "[finetune] and [fewshot] need at least one [[transfer]] dataset" in result.stderr


def test_finetune_keeps_its_test_predictions(tiny_run):
    """For metrics from other labels later (ImageNet-ReaL: `vitrun report --real`)."""
    from vitrun.paper.real import load_predictions

    _, results, _ = tiny_run
    folder = next(iter((results / "tiny").glob("finetune-*/stage.json"))).parent
    predicted = load_predictions(folder)
    record = json.loads((folder / "stage.json").read_text())
    assert predicted and all(isinstance(p, int) for p in predicted)
    assert record["metrics"]["accuracy"] * len(predicted) == pytest.approx(round(record["metrics"]["accuracy"] * len(predicted)))


def test_a_set_variant_never_blends_into_the_recipe_table(tiny_run, tmp_path):
    import shutil

    recipe, shared, _ = tiny_run
    results = tmp_path / "results"
    shutil.copytree(shared, results)  # the shared run stays as the other tests expect it

    def table(*args):
        (doc,) = json.loads(_invoke("report", "--results", str(results), "--format", "json", *args).output)
        return doc["tables"][0]

    before = table()
    variant = _invoke("recipe", str(recipe), "--results", str(results), "--set", "finetune.lr=0.03")
    assert variant.exit_code == 0, variant.output
    assert "Ran 8 stages" in variant.output
    assert "not in these tables, from other runs of this experiment: as written (8 stages)" in variant.output
    after = table()
    assert after["data"] == before["data"] and after["index"] == before["index"], "the recipe's own table is unchanged"
    plain = _invoke("report", "--results", str(results))
    assert "--set finetune.lr=0.03 (8 stages)" in plain.output and "--all" in plain.output
    both = table("--all")
    runs = {row[0] for row in both["index"]}
    assert runs == {"as written", "--set finetune.lr=0.03"}
    mine = [both["data"][i] for i, row in enumerate(both["index"]) if row[0] == "as written"]
    assert mine == before["data"], "labelled rows of the recipe as written keep their numbers"
