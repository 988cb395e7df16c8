"""`vitrun bench model`: our model and its timm twin timed in one run."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from vitrun.benchmark import bench_model
from vitrun.cli import main
from vitrun.engine.device import place


@pytest.mark.parametrize("name", ["ViT-Mu/4", "R14x0.5"])
def test_bench_model_times_both_sides(name):
    pytest.importorskip("timm")
    timings = bench_model(name, place("cpu"), image_size=32, batch_size=2, repeats=1, warmup=1)
    assert {(t.model, t.work) for t in timings} == {(m, w) for m in ("vitrun", "timm") for w in ("inference", "train step")}
    assert all(t.images_per_s > 0 for t in timings)


def test_bench_model_cli():
    pytest.importorskip("timm")
    result = CliRunner().invoke(main, ["bench", "model", "ViT-Mu/4", "--image-size", "32", "--batch-size", "2", "--repeats", "1", "--option", "classifier=gap"])
    assert result.exit_code == 0, result.output
    assert "vitrun / timm" in result.output and "train step" in result.output
    bad = CliRunner().invoke(main, ["bench", "model", "ViT-Mu/4", "--option", "clasifier=gap"])
    assert bad.exit_code == 2 and "did you mean 'classifier'" in bad.output
