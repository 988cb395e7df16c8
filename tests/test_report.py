"""Report: the long DataFrame and the recipe's pivots."""

from __future__ import annotations

import pytest

from vitrun.report import ReportError, build_tables, default_tables, load_frame, to_json
from vitrun.schema import TableSpec
from vitrun.store import Store


def _record(kind, model, size, data, accuracy, seed=0):
    config = {"seed": seed, "model": {"name": model}, "pretrain": {"data": "fractal", "size": size}}
    if kind != "pretrain":
        config["transfer"] = {"data": data, "name": data}
    return {"key": f"{kind}-{model}-{size}-{data}-{seed}", "kind": kind, "experiment": "exp", "config": config, "metrics": {"accuracy": accuracy, "accuracy_per_draw": [accuracy]}}


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path)
    accuracies = {("ViT", 100, "digits"): 0.5, ("ViT", 100, "shapes"): 0.7, ("ViT", 200, "digits"): 0.6, ("ViT", 200, "shapes"): 0.8, ("R50", 100, "digits"): 0.9, ("R50", 100, "shapes"): 0.3}
    for (model, size, data), acc in accuracies.items():
        for seed, delta in ((0, 0.0), (1, 0.02)):
            record = _record("finetune", model, size, data, acc + delta, seed)
            store.stage("exp", record["key"]).finish(record)
    record = _record("pretrain", "ViT", 100, None, 0.4)
    store.stage("exp", record["key"]).finish(record)
    return store


def test_frame_has_one_row_per_stage_and_aliases(store):
    frame = load_frame(store)
    assert len(frame) == 13
    assert {"model", "data", "pretrain.size", "accuracy", "kind", "seed"} <= set(frame.columns)
    assert "accuracy_per_draw" not in frame.columns, "list metrics stay out of the table"


def test_mean_transfer_accuracy_pivot(store):
    spec = TableSpec(name="mean", kind="finetune", rows="model", columns="pretrain.size")
    (table,) = build_tables(load_frame(store), [spec])
    frame = table.frame
    # mean over datasets and seeds, in percent
    assert frame.loc["ViT", 100] == pytest.approx(61.0)
    assert frame.loc["ViT", 200] == pytest.approx(71.0)
    assert frame.loc["R50", 100] == pytest.approx(61.0)
    assert frame.isna().loc["R50", 200]


def test_where_and_per(store):
    spec = TableSpec(name="t", kind="finetune", rows="model", columns="pretrain.size", where={"seed": 0}, per="data")
    tables = build_tables(load_frame(store), [spec])
    assert [t.name for t in tables] == ["t — data = digits", "t — data = shapes"]
    assert tables[0].frame.loc["R50", 100] == pytest.approx(90.0)


def test_unknown_column_is_named(store):
    with pytest.raises(ReportError, match=r"unknown column 'modle' \(did you mean 'model'\?\)"):
        build_tables(load_frame(store), [TableSpec(name="x", rows="modle")])


def test_defaults_and_json(store):
    frame = load_frame(store)
    specs = default_tables(frame)
    assert [s.kind for s in specs] == ["finetune", "pretrain"]
    doc = to_json("exp", build_tables(frame, specs))
    first = doc["tables"][0]
    assert doc["experiment"] == "exp" and first["index"] == ["R50", "ViT"] and first["columns"] == [100, 200]
    assert first["data"][0][1] is None, "missing cells are null"


def test_defaults_without_sizes_pivot_on_datasets(tmp_path):
    """A recipe without pretrain.size (e.g. `init` weights, steps = 0) still gets tables."""
    store = Store(tmp_path)
    for model, data, acc in (("ViT", "digits", 0.5), ("ViT", "shapes", 0.7), ("R50", "digits", 0.9)):
        record = _record("finetune", model, None, data, acc)
        store.stage("exp", record["key"]).finish(record)
    frame = load_frame(store)
    (spec,) = default_tables(frame)
    assert spec.columns == "data"
    (table,) = to_json("exp", build_tables(frame, [spec]))["tables"]
    assert table["index"] == ["R50", "ViT"] and table["columns"] == ["digits", "shapes"]
    assert table["data"] == [[90.0, None], [50.0, 70.0]]


@pytest.mark.parametrize("columns,drawn", [("pretrain.size", "plot"), ("data", "bar")])
def test_figures_draw_sizes_as_lines_and_categories_as_bars(store, tmp_path, monkeypatch, columns, drawn):
    """A size or learning-rate axis is a curve (Figure 4); datasets or objectives are groups of bars."""
    import matplotlib.axes

    from vitrun.report import save_figure

    calls = []
    for name in ("plot", "bar"):
        original = getattr(matplotlib.axes.Axes, name)
        monkeypatch.setattr(matplotlib.axes.Axes, name, lambda self, *a, _name=name, _original=original, **k: calls.append(_name) or _original(self, *a, **k))
    (table,) = build_tables(load_frame(store), [TableSpec(name="t", kind="finetune", rows="model", columns=columns)])
    save_figure(table, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    assert calls == [drawn] * 2, "one series per model"
