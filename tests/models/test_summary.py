"""Table 1 rows (`vitrun.models.describe`) and the `vitrun models` command, on a few models."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vitrun import models
from vitrun.cli import main


def test_describe_paper_rows():
    # Counting is cached per spec: these three cost nothing more after test_models' FLOP tests.
    rows = {r["name"]: r for r in models.describe(["ViT-B/16", "R50x1", "R50+ViT-B/16"])}
    b16, r50, hybrid = rows["ViT-B/16"], rows["R50x1"], rows["R50+ViT-B/16"]
    assert (b16["layers"], b16["width"], b16["mlp"], b16["heads"], b16["patch"]) == (12, 768, 3072, 12, 16)
    assert (b16["params"], b16["tokens"]) == (86_567_656, 197)
    assert b16["gmacs"] == pytest.approx(b16["gflops"] / 2)
    assert b16["gmacs"] == pytest.approx(16.85 * 1.042, rel=0.01), "timm's 16.85 G plus attention's matmuls"
    assert (r50["layers"], r50["width"], r50["params"], r50["tokens"], r50["blocks"]) == (50, 2048, 25_549_352, None, [3, 4, 6, 3])
    assert r50["gmacs"] == pytest.approx(4.09, rel=0.01)
    assert (hybrid["params"], hybrid["tokens"], hybrid["patch"], hybrid["blocks"]) == (98_659_112, 197, 16, [3, 4, 9])


def test_describe_defaults_to_every_registered_name(monkeypatch):
    monkeypatch.setattr(models.summary, "registered_names", lambda: ["ViT-Mu/4", "R14x0.25"])
    rows = models.describe(image_size=32)
    assert [r["name"] for r in rows] == ["ViT-Mu/4", "R14x0.25"]
    assert rows[0]["tokens"] == 1 + 8 * 8 and rows[0]["image_size"] == 32


def test_cli_models_json_and_table():
    runner = CliRunner()
    result = runner.invoke(main, ["models", "--format", "json", "--model", "ViT-Mu/4", "--model", "R14x0.25+ViT-Mu/8", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert isinstance(rows, list) and [r["name"] for r in rows] == ["ViT-Mu/4", "R14x0.25+ViT-Mu/8"]
    assert {"layers", "width", "mlp", "heads", "params", "tokens", "gflops", "gmacs"} <= set(rows[0])

    result = runner.invoke(main, ["models", "--model", "ViT-Mu/4", "--model", "R14x0.25", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert "ViT-Mu/4" in result.output and "GMACs" in result.output and "GFLOPs" in result.output
    assert f"{rows[0]['params']:,}" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.mark.parametrize("args,message", [
    (["--model", "ViT-X/16"], "unknown model 'ViT-X/16'"),
    (["--model", "ViT-B/16", "--image-size", "200"], "not a multiple of the patch size"),
])
def test_cli_models_errors(args, message):
    result = CliRunner().invoke(main, ["models", *args])
    assert result.exit_code == 2 and message in result.output


STALE = "table1.json is stale: run python -c 'from vitrun.models.summary import write_precounted; write_precounted()'"


def test_every_registered_model_is_precounted():
    precounted = models.summary._precounted()
    assert list(precounted) == models.registry.names(), STALE


@pytest.mark.parametrize("name", ["ViT-Ti/16", "R50x1", "R14x0.25+ViT-Mu/8"])
def test_precounted_rows_equal_a_recount(name):
    assert models.summary._row(name, 224, 1000) == models.summary._precounted()[name], STALE


@pytest.mark.slow
def test_every_precounted_row_equals_a_recount():
    for name, row in models.summary._precounted().items():
        assert models.summary._row(name, 224, 1000) == row, f"{name}: {STALE}"
