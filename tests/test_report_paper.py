"""The report beside the paper: the join, aggregation over seeds, statuses, [[expect]] and
--check, the figures and the HTML page, through the real CLI on hand-built stage records."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.stage_records import VIT_B16, pretrain_config, smoke_b16, transfer_config, write
from vitrun import figures, reporting
from vitrun.cli import main
from vitrun.paper.join import add_paper_columns
from vitrun.paper.join import paper_table
from vitrun.report import build_tables, load_frame
from vitrun.schema import TableSpec
from vitrun.store import Store


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _recipe(store: Store, experiment: str, expect=None, tables=()) -> None:
    recipe = {"name": experiment, **({"expect": expect} if expect is not None else {})}
    (store.root / experiment).mkdir(parents=True, exist_ok=True)
    (store.root / experiment / "recipe.json").write_text(json.dumps({"name": experiment, "path": f"{experiment}.toml", "recipe": recipe, "report": {"tables": list(tables)}}))


def test_smoke_run_meets_table5(tmp_path):
    """ViT-B/16, ImageNet-21k → ImageNet at 384: the paper's 83.97 beside ours, with the delta."""
    store = Store(tmp_path)
    smoke_b16(store)
    result = _invoke("report", "--results", tmp_path, "--paper", "--format", "json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)[0]["paper"]
    assert row["model"] == "ViT-B/16" and row["pre-training"] == "ImageNet-21k" and row["dataset"] == "ImageNet" and row["resolution"] == 384
    assert row["paper"] == 83.97 and row["ours"] == pytest.approx(80.5) and row["n"] == 2 and row["std"] == pytest.approx(0.71)
    assert row["delta"] == pytest.approx(80.5 - 83.97, abs=0.01) and row["source"].startswith("Table 5")
    markdown = _invoke("report", "--results", tmp_path, "--paper", "--format", "markdown").output
    assert "83.97" in markdown and "-3.47" in markdown


@pytest.mark.parametrize("source", ["wds:/data/imagenet-22k/{0000..0099}.tar", "folder:/data/in21k"])
def test_smoke_join_by_source_or_name(tmp_path, source):
    store = Store(tmp_path)
    upstream = pretrain_config(VIT_B16, source, name="ImageNet-21k") if source.startswith("folder") else pretrain_config(VIT_B16, source)
    key = write(store, "e", "pretrain", upstream, None)
    write(store, "e", "finetune", transfer_config(upstream, "hf:ILSVRC/imagenet-1k"), 0.83, (key,))
    (row,) = paper_table(load_frame(store)).to_dict("records")
    assert row["paper"] == 83.97


def test_join_needs_the_papers_settings(tmp_path):
    """A masked-patch pre-training meets §4.6, not Table 5; 2-D embeddings at every layer meet Table 8's cell."""
    store = Store(tmp_path)
    upstream = pretrain_config(VIT_B16, "JFT-300M", objective="masked-patch")
    key = write(store, "e", "pretrain", upstream, None)
    write(store, "e", "finetune", transfer_config(upstream, "imagenet"), 0.79, (key,))
    model = {**VIT_B16, "pos_embed": "2d", "pos_embed_at": "every-layer"}
    upstream = pretrain_config(model, "JFT-300M")
    key = write(store, "e", "pretrain", upstream, None)
    write(store, "e", "fewshot", {**upstream, "transfer": {"data": "imagenet", "name": "imagenet"}}, 0.60, (key,), shots=5)
    write(store, "e", "fewshot", {**upstream, "transfer": {"data": "imagenet", "name": "imagenet"}}, 0.50, (key,), shots=10)
    rows = {r["kind"]: r for r in paper_table(load_frame(store)).to_dict("records")}
    assert set(rows) == {"finetune", "5-shot linear"}, "no paper number for 10 shots"
    assert rows["finetune"]["paper"] == 79.9 and rows["finetune"]["source"].startswith("Section 4.6")
    assert rows["5-shot linear"]["paper"] == 64.046 and rows["5-shot linear"]["source"].startswith("Table 8")


def test_average5_row_and_its_paper_value(tmp_path):
    store = Store(tmp_path)
    model = {"name": "ViT-L/16", "family": "vit", "classifier": "token", "pos_embed": "1d", "pos_embed_at": "stem"}
    upstream = pretrain_config(model, "ImageNet-21k")
    key = write(store, "e", "pretrain", upstream, None, flops=3e18)
    for data, acc in (("imagenet-real", 0.9), ("pets", 0.8), ("flowers", 0.7), ("cifar10", 0.6), ("cifar100", 0.5)):
        write(store, "e", "finetune", transfer_config(upstream, data), acc, (key,))
    frame = load_frame(store)
    assert set(frame.loc[frame["kind"] == "finetune", "pretrain_exaflops"]) == {3.0}, "each transfer row carries its pre-training's exaFLOPs"
    (result,) = json.loads(_invoke("report", "--results", tmp_path, "--paper", "--format", "json").output)
    summary = next(t for t in result["tables"] if t["name"].startswith("The paper's summaries"))
    assert summary["columns"] == ["average-5"] and summary["data"] == [[70.0]]
    avg = next(r for r in result["paper"] if r["dataset"] == "average-5")
    assert avg["paper"] == pytest.approx((88.62 + 94.67 + 99.61 + 99.15 + 93.25) / 5, abs=1e-3) and "Table 2" in avg["source"]


def _seeded(store, statuses=()):
    for seed, acc in enumerate((0.60, 0.62, 0.64)):
        upstream = pretrain_config({"name": "ViT-Mu/4"}, "fractal", seed, size=500)
        key = write(store, "e", "pretrain", upstream, None)
        for data, offset in (("digits", 0.0), ("shapes", 0.1)):
            write(store, "e", "finetune", transfer_config(upstream, data, 32), acc + offset, (key,))
    for status in statuses:
        upstream = pretrain_config({"name": "R14x0.25"}, "fractal", 0, size=500)
        write(store, "e", "finetune", transfer_config(upstream, "digits", 32), None, status=status)


def test_mean_std_n_over_seeds(tmp_path):
    store = Store(tmp_path)
    _seeded(store)
    (table,) = build_tables(load_frame(store), [TableSpec(name="t", kind="finetune")])
    # per seed: mean over the two datasets (65, 67, 69); then mean ± std over the 3 seeds
    assert table.frame.loc["ViT-Mu/4", 500] == pytest.approx(67.0)
    assert table.std.loc["ViT-Mu/4", 500] == pytest.approx(2.0) and table.count.loc["ViT-Mu/4", 500] == 3
    assert table.cell("ViT-Mu/4", 500) == "67.0 ± 2.0"
    assert table.notes == ("mean ± std over seeds (n = 3 per cell)",)


def test_failed_and_diverged_are_shown_and_counted(tmp_path):
    store = Store(tmp_path)
    _seeded(store, statuses=("diverged", "failed", "diverged"))
    (store.root / "e" / "finetune-0123456789ab").mkdir()  # started, no stage.json
    (table,) = build_tables(load_frame(store), [TableSpec(name="t", kind="finetune")])
    assert table.cell("R14x0.25", 500) == "diverged, failed", "a cell with nothing finished says why"
    assert table.frame.loc["ViT-Mu/4", 500] == pytest.approx(67.0), "never averaged in"
    assert "not averaged in: 2 diverged, 1 failed stages" in table.notes
    output = _invoke("report", "--results", tmp_path, "--format", "markdown").output
    assert "diverged, failed" in output and "not averaged in: 2 diverged, 1 failed stages" in output
    assert "1 unfinished stage (no stage.json yet, not in the tables): finetune-0123456789ab" in output


def test_only_failed_stages_still_make_a_table(tmp_path):
    store = Store(tmp_path)
    write(store, "e", "finetune", transfer_config(pretrain_config({"name": "ViT-Mu/4"}, "fractal", size=500), "digits", 32), None, status="failed")
    (table,) = build_tables(load_frame(store), [TableSpec(name="t", kind="finetune")])
    assert table.cell("ViT-Mu/4", 500) == "failed" and table.notes == ("not averaged in: 1 failed stage",)


def test_expect_and_check(tmp_path):
    store = Store(tmp_path)
    smoke_b16(store, "e")
    cell = {"model": "ViT-B/16", "pretrain": "ImageNet-21k", "data": "ImageNet", "image_size": 384, "target": 83.97, "tolerance": 0.5}
    _recipe(store, "e", expect=[cell])
    result = _invoke("report", "--results", tmp_path, "--check")
    assert result.exit_code == 1
    assert "check failed: e: ViT-B/16 · ImageNet-21k → ImageNet @384 (finetune): ours 80.50 (n=2), target 83.97 ± 0.5: FAIL" in result.output
    _recipe(store, "e", expect={**cell, "target": 80.7, "name": "B/16 smoke"})  # [expect] as one table
    result = _invoke("report", "--results", tmp_path, "--check", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["expect"] == [{"cell": "B/16 smoke", "ours": 80.5, "n": 2, "target": 80.7, "tolerance": 0.5, "delta": -0.2, "result": "pass"}]
    _recipe(store, "e", expect=[{**cell, "data": "CIFAR-10"}])
    result = _invoke("report", "--results", tmp_path, "--check")
    assert result.exit_code == 1 and "no finished result" in result.output, "a cell without results fails"


def test_expect_is_validated_with_the_recipe(tmp_path):
    path = tmp_path / "r.toml"
    base = 'name = "r"\n[model]\nname = "ViT-Mu/4"\n[pretrain]\nsteps = 1\nwarmup_steps = 0\n'
    path.write_text(base + '[[expect]]\nmodel = "ViT-Mu/4"\ntarget = 50.0\ntolerance = 1.0\ntolerence = 1.0\n')
    result = _invoke("validate", path)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "expect[0].tolerence" in result.output
    path.write_text(base + "[expect]\ntarget = 50.0\ntolerance = 1.0\n")
    assert _invoke("validate", path).exit_code == 0


def _all_figures(store):
    """Records that every figure can draw on: sizes, families, compute, position embeddings, classifiers."""
    for family, name in (("vit", "ViT-Mu/4"), ("resnet", "R14x0.25"), ("hybrid", "R14x0.25+ViT-Mu/8")):
        for size, acc in ((500, 0.3), (2000, 0.4)):
            upstream = pretrain_config({"name": name, "family": family}, "fractal", size=size)
            key = write(store, "e", "pretrain", upstream, None, flops=size * 1e12)
            write(store, "e", "finetune", transfer_config(upstream, "digits", 32), acc, (key,))
            write(store, "e", "fewshot", {**upstream, "transfer": {"data": "digits", "name": "digits"}}, acc - 0.1, (key,), shots=5)
    for pos, at in (("none", "stem"), ("1d", "stem"), ("2d", "every-layer")):
        upstream = pretrain_config({**VIT_B16, "pos_embed": pos, "pos_embed_at": at}, "fractal", size=100)
        key = write(store, "e", "pretrain", upstream, None)
        write(store, "e", "fewshot", {**upstream, "transfer": {"data": "digits", "name": "digits"}}, 0.5, (key,), shots=5)
    for classifier, lr in (("token", 1e-3), ("gap", 1e-4)):
        for steps in (100, 200):
            upstream = pretrain_config({**VIT_B16, "classifier": classifier}, "fractal", size=100, lr=lr, steps=steps)
            key = write(store, "e", "pretrain", upstream, None)
            write(store, "e", "fewshot", {**upstream, "transfer": {"data": "digits", "name": "digits"}}, 0.4, (key,), shots=5)


def test_every_figure_is_written(tmp_path):
    store = Store(tmp_path)
    _all_figures(store)
    drawn = figures.draw_all(add_paper_columns(load_frame(store)), tmp_path / "figs", paper=True)
    assert [f.what for f in drawn] == ["figure3", "figure4", "figure5", "table8", "figure9"]
    for figure in drawn:
        assert figure.png.read_bytes()[:4] == b"\x89PNG" and figure.png.stat().st_size > 5000, figure.png
        assert figure.svg.read_text().lstrip().startswith("<?xml") and figure.svg.stat().st_size > 5000, figure.svg


@pytest.mark.slow
def test_out_and_figures_options_write_files(tmp_path):
    store = Store(tmp_path / "results")
    _all_figures(store)
    result = _invoke("report", "--results", tmp_path / "results", "--paper", "--out", tmp_path / "out", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "e").glob("*.svg"))) == 5 and list((tmp_path / "out" / "e").glob("*.csv"))
    assert _invoke("report", "--results", tmp_path / "results", "--figures").exit_code == 0
    assert len(list((tmp_path / "results" / "e" / "report").glob("*.png"))) == 5


def test_html_page_is_self_contained(tmp_path):
    store = Store(tmp_path / "results")
    smoke_b16(store, "e")
    _recipe(store, "e", expect=[{"model": "ViT-B/16", "data": "ImageNet", "target": 80.0, "tolerance": 1.0}])
    analysis = tmp_path / "results" / "e" / "analysis"
    analysis.mkdir()
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
    (analysis / "attention.png").write_bytes(png)
    (analysis / "index.json").write_text(json.dumps([{"what": "attention_distance", "target": "ViT-B/16", "title": "Mean attention distance", "png": "analysis/attention.png", "csv": "analysis/attention.csv"}]))
    result = _invoke("report", "--results", tmp_path / "results", "--paper", "--format", "html", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "e" / "report.html").read_text()
    for title in ("Fine-tuning accuracy (%)", "The paper beside ours", "Expectations", "Mean attention distance (ViT-B/16)", "Figure 3", "Versions and devices", "Recipe", "torch 2.x", "cpu (fp32)", "83.97"):
        assert title in page, title
    assert base64.b64encode(png).decode() in page, "the analysis PNG is embedded"
    assert not re.search(r"(src|href)=\"(?!data:)", page), "nothing loaded from outside the page"
    assert "<script" not in page


def test_report_never_imports_torch(tmp_path):
    smoke_b16(Store(tmp_path))
    code = f"import sys; from vitrun.cli import main\ntry:\n    main(['report', '--results', {str(tmp_path)!r}, '--paper', '--format', 'json'])\nexcept SystemExit as e:\n    assert not e.code, e.code\nassert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium from the OS packages (apt-get install chromium)")
def test_html_page_in_a_headless_browser(tmp_path):
    """The page loads offline with no console message and shows every table and figure."""
    store = Store(tmp_path / "results")
    smoke_b16(store, "e")
    _all_figures(store)
    _recipe(store, "e", expect=[{"model": "ViT-B/16", "data": "ImageNet", "target": 80.0, "tolerance": 1.0}])
    result = _invoke("report", "--results", tmp_path / "results", "--paper", "--format", "html", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    page = tmp_path / "out" / "e" / "report.html"
    built = reporting.build(store, "e", paper=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--enable-logging=stderr", "--v=0", "--dump-dom"]
    proc = subprocess.run([str(CHROMIUM), *flags, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = proc.stdout
    captions = re.findall(r"<caption>(.*?)</caption>", dom)
    expected = [t.name for t in built.tables] + [title for title, _, _ in built.listings()]
    assert [html.unescape(c) for c in captions] == expected
    assert dom.count('src="data:image/png;base64,') == 5


def test_real_scores_imagenet_stages_from_their_predictions(tmp_path):
    from vitrun.paper.real import PREDICTIONS_FILE, predictions_bytes

    store = Store(tmp_path)
    smoke_b16(store, "e", accuracies=(0.5,))
    key = next(p.name for p in (tmp_path / "e").iterdir() if p.name.startswith("finetune"))
    (tmp_path / "e" / key / PREDICTIONS_FILE).write_bytes(predictions_bytes([1, 2, 3, 4]))
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[1], [5], [], [4, 9]]))  # 2 of 3 scored images right
    (doc,) = json.loads(_invoke("report", "--results", tmp_path, "--real", real, "--format", "json").output)
    table = doc["tables"][0]
    assert table["columns"] == ["ImageNet-ReaL", "imagenet"] and table["data"][0][0] == pytest.approx(66.7)
    real.write_text(json.dumps([[1], [2]]))
    output = _invoke("report", "--results", tmp_path, "--real", real, "--format", "markdown").output
    assert f"ImageNet-ReaL not scored for {key}: it has 4 test predictions for 2 ReaL label lists" in output
    real.write_text("{}")
    result = _invoke("report", "--results", tmp_path, "--real", real)
    assert result.exit_code == 2 and "real.json" in result.output
