"""Report outputs that standard tools parse back: Markdown, CSV, LaTeX and JSON over several
experiments, labels as integers, files 0644 ending in a newline, and one broken experiment
that does not hide the others."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.stage_records import VIT_B16, pretrain_config, transfer_config, write
from vitrun.cli import main
from vitrun.store import Store

R50 = {"name": "R50x1", "family": "resnet"}


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _tables(root, experiment: str, tables: list[dict]) -> None:
    (root / experiment).mkdir(parents=True, exist_ok=True)
    record = {"name": experiment, "path": f"{experiment}.toml", "recipe": {"name": experiment}, "report": {"tables": tables}}
    (root / experiment / "recipe.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def _three_once(tmp_path_factory):
    """Three experiments: two-level rows, few-shot columns (shots), a name with LaTeX specials.
    Written once (126 records, each fsynced: a second) and copied for each test."""
    root = tmp_path_factory.mktemp("three")
    store = Store(root)
    for experiment in ("alpha", "beta", "gamma_100%"):
        for model in (VIT_B16, R50):
            for seed, size in ((0, 500), (1, 500), (0, 2000)):
                up = pretrain_config(model, "fractal", seed, size=size)
                key = write(store, experiment, "pretrain", up, 0.5)
                for data, acc in (("digits", 0.61), ("shapes_set", 0.27)):
                    write(store, experiment, "finetune", transfer_config(up, data, 32), acc + 0.01 * seed, (key,))
                    for shots in (1, 5):
                        write(store, experiment, "fewshot", {**transfer_config(up, data, 32)}, acc / 2, (key,), shots=shots)
        _tables(root, experiment, [
            {"name": "Fine-tuning (%) & more", "kind": "finetune", "rows": ["data", "model"], "columns": "pretrain.size"},
            {"name": "Few-shot by shots", "kind": "fewshot", "rows": "model", "columns": "fewshot.shots"},
        ])
    return root


@pytest.fixture
def three(_three_once, tmp_path):
    """A private copy of the three experiments, in the test's own folder (tests edit them)."""
    shutil.copytree(_three_once, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_markdown_has_one_flat_header_per_table(three):
    result = _invoke("report", "--results", three, "--format", "markdown")
    assert result.exit_code == 0, result.output
    text = result.output
    assert [line for line in text.splitlines() if line.startswith("## ")] == ["## alpha", "## beta", "## gamma_100%"]
    headers = [line for line in text.splitlines() if line.startswith("| data")]
    assert headers and all("(" not in h and "'" not in h for h in headers), "no Python tuples in headers"
    first = headers[0]
    assert [c.strip() for c in first.strip("|").split("|")] == ["data", "model", "pretrain.size = 500", "pretrain.size = 2000"]
    assert "| fewshot.shots = 1 " in text or "fewshot.shots = 1" in text
    assert "1.0" not in re.findall(r"fewshot\.shots = [\d.]+", text)[0]


def test_csv_is_one_long_table_over_every_experiment(three):
    result = _invoke("report", "--results", three, "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.output))
    assert set(frame["experiment"]) == {"alpha", "beta", "gamma_100%"}
    assert set(frame["table"]) == {"Fine-tuning (%) & more", "Few-shot by shots"}
    cell = frame[(frame["experiment"] == "alpha") & (frame["data"] == "digits") & (frame["model"] == "ViT-B/16") & (frame["pretrain.size"] == 500)]
    assert cell["accuracy"].item() == pytest.approx(61.5) and cell["n"].item() == 2
    assert sorted(frame["fewshot.shots"].dropna().unique()) == [1, 5]


def test_latex_is_escaped_and_balanced(three):
    result = _invoke("report", "--results", three, "--format", "latex", "--experiment", "gamma_100%")
    assert result.exit_code == 0, result.output
    text = result.output
    assert r"Fine-tuning (\%) \& more" in text and r"shapes\_set" in text
    body = re.sub(r"\\[{}%&_#$]", "", text)
    assert body.count("{") == body.count("}")
    assert text.count(r"\begin{table}") == text.count(r"\end{table}") == 2
    unescaped = [line for line in text.splitlines() if not line.startswith("%") and re.search(r"(?<!\\)[%&_#$](?![^{]*\})", line.replace("&", ""))]
    assert not unescaped, unescaped


def test_json_is_always_a_list(three):
    one = json.loads(_invoke("report", "--results", three, "--format", "json", "--experiment", "alpha").output)
    every = json.loads(_invoke("report", "--results", three, "--format", "json").output)
    assert isinstance(one, list) and [d["experiment"] for d in one] == ["alpha"]
    assert [d["experiment"] for d in every] == ["alpha", "beta", "gamma_100%"]
    shots = next(t for t in one[0]["tables"] if t["name"] == "Few-shot by shots")
    assert shots["columns"] == [1, 5]


def test_out_files_are_0644_and_end_with_a_newline(three, tmp_path, monkeypatch):
    from vitrun import figures, report

    # The text files are the point here: no figures (1.3 s a call); tests/test_cli.py and
    # tests/test_report_paper.py check the figures --out writes.
    monkeypatch.setattr(figures, "draw_all", lambda frame, folder, paper=False: [])
    monkeypatch.setattr(report, "save_figure", lambda table, path: None)
    out = tmp_path / "out"
    for fmt in ("markdown", "csv", "table"):
        assert _invoke("report", "--results", three, "--format", fmt, "--out", out, "--experiment", "beta").exit_code == 0
    files = [p for p in (out / "beta").iterdir() if p.suffix in (".md", ".csv", ".txt")]
    assert len(files) == 6
    for path in files:
        assert path.read_bytes().endswith(b"\n") and not path.read_bytes().endswith(b"\n\n"), path
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask(), path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_one_broken_experiment_does_not_hide_the_others(three):
    _tables(three, "beta", [{"name": "bad", "kind": "finetune", "rows": "model", "columns": "shots"}])
    result = _invoke("report", "--results", three, "--format", "markdown")
    assert result.exit_code == 2
    assert "## alpha" in result.output and "## gamma_100%" in result.output
    assert "beta.toml: report.tables[0]: unknown column 'shots' (did you mean 'fewshot.shots'?)" in result.output


def test_two_column_levels_with_seeds(three):
    _tables(three, "alpha", [{"name": "by kind and data", "rows": "model", "columns": ["kind", "data"]}])
    result = _invoke("report", "--results", three, "--experiment", "alpha", "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert "kind · data = finetune · digits" in result.output.replace(" / ", " · ")
