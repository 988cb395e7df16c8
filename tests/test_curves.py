"""Training curves from metrics.jsonl (`vitrun report --curves`)."""

from __future__ import annotations

import json

from vitrun.curves import curves_frame, read_metrics, save_curves
from vitrun.store import Store


def _stage(root, key, kind, rows, config, torn=""):
    folder = root / "exp" / key
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)
    (folder / "stage.json").write_text(json.dumps({"key": key, "kind": kind, "config": config}))


def test_curves_read_every_training_stage_and_skip_a_torn_line(tmp_path):
    config = {"model": {"name": "ViT-Mu/4"}, "pretrain": {"data": "fractal", "size": 16}}
    _stage(tmp_path, "pretrain-a", "pretrain", [{"step": s, "loss": 2.0 / s, "lr": 0.001, "grad_norm": 1.0} for s in (10, 20)], config, torn='{"step": 30, "lo')
    _stage(tmp_path, "finetune-b", "finetune", [{"step": 5, "loss": 1.0, "lr": 0.01, "grad_norm": 0.5}], {**config, "transfer": {"name": "digits"}, "finetune": {"lr": 0.01}})
    _stage(tmp_path, "fewshot-c", "fewshot", [{"step": 1, "loss": 0.0}], config)
    frame = curves_frame(Store(tmp_path), "exp")
    assert sorted(frame["key"].unique()) == ["finetune-b", "pretrain-a"]
    assert list(frame[frame["key"] == "pretrain-a"]["step"]) == [10, 20]
    assert set(frame["label"]) == {"ViT-Mu/4 · fractal · 16", "ViT-Mu/4 · digits · lr 0.01"}
    written = save_curves(frame, tmp_path / "out")
    assert [p.name for p in written] == ["curves-pretrain.png", "curves-finetune.png"]
    assert all(p.stat().st_size > 2000 for p in written)


def test_read_metrics_ignores_garbage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 1.0}\n\xff\xfe\n[1, 2]\n{"step": 2, "loss": 0.5}\n')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_eval_curve_from_stage_json_is_a_panel(tmp_path):
    config = {"model": {"name": "ViT-Mu/4"}, "pretrain": {"data": "fractal"}}
    _stage(tmp_path, "pretrain-a", "pretrain", [{"step": s, "loss": 1.0 / s, "lr": 0.001, "grad_norm": 1.0} for s in (2, 4, 6)], config)
    record = json.loads((tmp_path / "exp" / "pretrain-a" / "stage.json").read_text())
    record["metrics"] = {"eval_curve": [[3, 0.25], [6, 0.5]]}
    (tmp_path / "exp" / "pretrain-a" / "stage.json").write_text(json.dumps(record))
    frame = curves_frame(Store(tmp_path), "exp")
    evaluated = frame.dropna(subset=["eval_accuracy"])
    assert list(zip(evaluated["step"], evaluated["eval_accuracy"])) == [(3, 0.25), (6, 0.5)]
    assert frame["loss"].notna().sum() == 3, "the training rows are unchanged"
    assert [p.name for p in save_curves(frame, tmp_path / "out")] == ["curves-pretrain.png"]
