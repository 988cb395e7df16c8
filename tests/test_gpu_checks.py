"""tests/benchmarks/gpu_checks.sh, the one script a session lent a GPU runs, works end to end: on a
CPU its --smoke mode runs every step (bench train compiled and eager, a recipe under torchrun) at
toy sizes and writes the summary a GPU run would."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "benchmarks" / "gpu_checks.sh"


@pytest.mark.slow
def test_gpu_checks_script_runs_every_step_on_a_cpu(tmp_path):
    pytest.importorskip("timm")
    done = subprocess.run(["bash", str(SCRIPT), "--smoke"], env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=900)
    log = (tmp_path / "checks.log").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    assert log.count(": exit 0 after") == 3, log  # every step ran and succeeded
    for name in ("bench_compiled", "bench_eager"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert [row["model"] for row in record["rows"]] == ["vitrun", "timm"] and record["precision"] == "bf16"
    stage = json.loads((tmp_path / "recipe_stage.json").read_text())
    assert stage["status"] == "done" and stage["world_size"] == 1 and stage["device"].endswith("bf16 autocast")
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| vitrun |") == 2 and "recipe under torchrun: done" in summary
    assert not (tmp_path / "run").exists()  # the run's folders are removed: $OUT returns only a few files
