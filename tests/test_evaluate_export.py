"""`vitrun evaluate` and `vitrun export` on a tiny run whose fine-tuned weights are kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitrun import trained
from vitrun.cli import main
from vitrun.evals.evaluate import Evaluation, evaluate
from vitrun.engine.device import place
from vitrun.store import Store

RECIPE = """
name = "kept"

[model]
name = "ViT-Mu/4"

[pretrain]
data = "fractal"
classes = 4
size = 16
image_size = 16
steps = 4
batch_size = 16
warmup_steps = 1

[finetune]
steps = 3
batch_size = 16
lr = 0.01
warmup_steps = 1
image_size = 24
save_weights = true

[[transfer]]
data = "digits"
per_class = 6
"""


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kept")
    (folder / "kept.toml").write_text(RECIPE)
    results = folder / "results"
    result = _invoke("recipe", folder / "kept.toml", "--results", results)
    assert result.exit_code == 0, result.output
    record = json.loads(next((results / "kept").glob("finetune-*/stage.json")).read_text())
    return results, record


def test_evaluate_reproduces_the_stage_accuracy(kept_run, tmp_path):
    results, record = kept_run
    out = tmp_path / "eval"
    result = _invoke("evaluate", record["key"], "--data", "digits", "--results", results, "--format", "json", "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["image_size"] == 24 and doc["images"] == 599
    # The same model on the same test split: the stage's own accuracy, to the image.
    assert doc["top1"] == pytest.approx(record["metrics"]["accuracy"], abs=1e-12)
    assert doc["top5"] >= doc["top1"]
    assert [c["class"] for c in doc["per_class"]] == [str(d) for d in range(10)]
    assert np.array(doc["confusion"]).sum() == 599
    assert (out / "confusion.png").stat().st_size > 1000 and json.loads((out / "evaluation.json").read_text()) == doc


def test_evaluate_table_and_default_folder(kept_run):
    results, record = kept_run
    result = _invoke("evaluate", record["key"], "--data", "digits", "--results", results)
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and "Per-class accuracy" in result.output
    assert (results / "kept" / record["key"] / "evaluation" / "digits-test" / "confusion.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["pretrain-000000000000", "--data", "digits"], "no such stage"),
    (["npz:/nowhere/x.npz", "--data", "digits"], "x.npz"),
])
def test_evaluate_errors_are_one_line(kept_run, args, message):
    results, _ = kept_run
    result = _invoke("evaluate", *args, "--results", results)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_evaluate_refuses_a_class_mismatch(kept_run):
    results, record = kept_run
    pretrain_key = record["parents"][0]  # a 4-class fractal model against 10-class digits
    result = _invoke("evaluate", pretrain_key, "--data", "digits", "--results", results)
    assert result.exit_code == 2 and "the model has 4 classes but the data has 10" in result.output


def test_export_timm_gives_the_same_logits(kept_run, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    from vitrun.interop.export import timm_recipe

    results, record = kept_run
    path = tmp_path / "model.safetensors"
    result = _invoke("export", record["key"], path, "--to", "timm", "--results", results)
    assert result.exit_code == 0, result.output
    ours = trained.load(record["key"], Store(results)).model
    name, kwargs = timm_recipe(ours)
    theirs = timm.create_model(name, **kwargs).eval()
    theirs.load_state_dict(load_file(str(path)))
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=1e-5)
    assert name in result.output


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_export_round_trips_through_evaluate(kept_run, tmp_path, fmt):
    results, record = kept_run
    path = tmp_path / f"model.{fmt}"
    assert _invoke("export", record["key"], path, "--to", fmt, "--results", results).exit_code == 0
    ours = trained.load(record["key"], Store(results)).model
    if fmt == "npz":
        back = trained.load(f"npz:{path}", Store(results)).model
    else:
        from vitrun.interop.export import load_safetensors

        back = load_safetensors(path).eval()
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=0, atol=1e-5)


def test_export_without_kept_weights_says_how(tmp_path):
    Store(tmp_path).stage("exp", "finetune-abc").finish({"key": "finetune-abc", "kind": "finetune", "status": "done", "config": {}, "metrics": {}})
    result = _invoke("export", "finetune-abc", tmp_path / "x.npz", "--to", "npz", "--results", tmp_path)
    assert result.exit_code == 2 and "save_weights = true" in result.output


def test_weights_changed_on_disk_are_refused(kept_run, tmp_path):
    results, record = kept_run
    weights = results / "kept" / record["key"] / "weights.pt"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-8] + bytes(8))
        result = _invoke("export", record["key"], tmp_path / "x.npz", "--to", "npz", "--results", results)
        assert result.exit_code == 2 and "sha256" in result.output
    finally:
        weights.write_bytes(original)


def test_evaluation_counts_on_a_constructed_model():
    from vitrun.data import ImageSet

    class OffByOne(torch.nn.Module):
        """Reads the label from the pixels; ranks class (label + 1) % 3 first, the label second."""

        num_classes = 3

        def forward(self, x):
            label = x[:, 0, 0, 0].round().long() + 1  # pixels 0, 128, 255 view as -1, 0, 1
            rows = torch.arange(len(x))
            logits = torch.zeros(len(x), 3)
            logits[rows, (label + 1) % 3] = 2.0
            logits[rows, label] = 1.0
            return logits

    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = torch.tensor([0, 128, 255])[labels][:, None, None].to(torch.uint8)
    result = evaluate(OffByOne(), ImageSet(images, labels, ("a", "b", "c")), 8, place("cpu", "fp32"), batch_size=4)
    assert isinstance(result, Evaluation) and result.images == 6
    assert result.top1 == 0.0 and result.top5 == 1.0
    np.testing.assert_array_equal(result.confusion, [[0, 2, 0], [0, 0, 1], [3, 0, 0]])
    np.testing.assert_array_equal(result.per_class, [0.0, 0.0, 0.0])


def test_evaluate_scores_the_view_it_is_given():
    """A wide image whose class is drawn in its left quarter: the whole-image view ("full", what
    fine-tuning tests) keeps it, the centre crop cuts it away."""
    from vitrun.data.imageset import ImageSet

    class LeftEdge(torch.nn.Module):
        num_classes = 2

        def forward(self, x):  # class 1 when the left column is bright
            bright = (x[:, 0, :, 0].mean(1) > 0).long()
            return torch.nn.functional.one_hot(bright, 2).float()

    images = torch.zeros(4, 3, 8, 32, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    images[labels == 1, :, :, :8] = 255
    cpu = place("cpu", "fp32")
    assert evaluate(LeftEdge(), ImageSet(images, labels, ("dark", "bright")), 8, cpu).top1 == 1.0
    assert evaluate(LeftEdge(), ImageSet(images, labels, ("dark", "bright")), 8, cpu, view="center").top1 == 0.5


def test_evaluate_defaults_to_the_fine_tuning_view(kept_run, tmp_path):
    from vitrun.cli import evaluate_cmd
    from vitrun.plan import FINETUNE_VIEWS

    view = next(p for p in evaluate_cmd.params if p.name == "view")
    assert view.default == FINETUNE_VIEWS["test"] == "full"
    results, record = kept_run
    center = _invoke("evaluate", record["key"], "--data", "digits", "--results", results, "--format", "json", "--out", tmp_path, "--view", "center")
    assert json.loads(center.output)["view"] == "center"
    assert _invoke("evaluate", record["key"], "--data", "digits", "--results", results, "--view", "crop").exit_code == 2
