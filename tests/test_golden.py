"""Golden numbers (torchtune's recipe tests): a tiny recipe through the real CLI, its per-step
losses and learning rates and its accuracies compared with tests/golden/tiny.json.

Tolerances: losses and learning rates rtol 1e-4, atol 1e-4 (float32 on different CPUs and
thread counts, over a handful of steps); accuracies within 0.005 (3 of digits' 599 test images:
a logit near a tie may flip on another CPU). A protocol change
moves them on purpose: regenerate with `VITRUN_REGENERATE_GOLDEN=1 pytest tests/test_golden.py`,
check the diff of tiny.json, and say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitrun.cli import main

GOLDEN = Path(__file__).parent / "golden"
RECIPE, NUMBERS = GOLDEN / "tiny.toml", GOLDEN / "tiny.json"
TOLERANCE = {"rel": 1e-4, "abs": 1e-4}
ACCURACY_TOLERANCE = 0.005


def _label(record: dict) -> str:
    """A stage named by what it is, not by its key (keys change with any config change)."""
    config = record["config"]
    label = f"{record['kind']} {config['model']['name']}"
    if record["kind"] == "finetune_dev":
        label += f" lr={config['finetune']['lr']}"
    if record["kind"] == "fewshot":
        label += f" shots={config['fewshot']['shots']}"
    transfer = config.get("transfer")
    return f"{label} {transfer['name']}" if transfer else label


def _numbers(folder: Path) -> dict:
    out = {}
    for stage in sorted(folder.glob("*/stage.json")):
        record = json.loads(stage.read_text())
        rows = [json.loads(line) for line in (stage.parent / "metrics.jsonl").read_text().splitlines()] if (stage.parent / "metrics.jsonl").exists() else []
        metrics = record["metrics"]
        out[_label(record)] = {
            "loss": [row["loss"] for row in rows],
            "lr": [row["lr"] for row in rows],
            "accuracy": metrics.get("accuracy"),
        }
    return out


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("golden") / "results"
    result = CliRunner().invoke(main, ["recipe", str(RECIPE), "--results", str(results)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return _numbers(results / "golden")


def test_golden_numbers(golden_run):
    if os.environ.get("VITRUN_REGENERATE_GOLDEN"):
        NUMBERS.write_text(json.dumps(golden_run, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {NUMBERS}")
    stored = json.loads(NUMBERS.read_text())
    assert sorted(golden_run) == sorted(stored), "the plan's stages changed"
    for label, want in stored.items():
        got = golden_run[label]
        assert len(got["loss"]) == len(want["loss"]), f"{label}: steps logged"
        assert got["loss"] == pytest.approx(want["loss"], **TOLERANCE), f"{label}: per-step losses"
        assert got["lr"] == pytest.approx(want["lr"], **TOLERANCE), f"{label}: learning-rate curve"
        if want["accuracy"] is not None:
            assert got["accuracy"] == pytest.approx(want["accuracy"], abs=ACCURACY_TOLERANCE), f"{label}: accuracy"
