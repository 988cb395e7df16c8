"""The paper's numbers as shipped, how sources are recognised, and the metrics' arithmetic."""

from __future__ import annotations

import json
import math
import re

import pytest

from vitrun.paper import AVERAGE5, VTAB_GROUPS, VTAB_TASKS, numbers, paper_dataset, pretrain_compute, section_dataset
from vitrun.paper.metrics import average5, mean_std, vtab
from vitrun.paper.real import RealLabelsError, load_predictions, load_real_labels, predictions_bytes, real_accuracy

# Sentences of /work/shared/PAPER.md (the project's transcription of the paper), quoted as they stand.
PAPER_MD = {
    "Table 5": "pre-trained on ImageNet 77.91, 73.38, 76.53, 71.16, –; ImageNet-21k 83.97, 81.28, 85.15, 80.99, 85.13; JFT-300M 84.15, 80.73, 87.12, 84.37, 88.04.",
    "Table 2 H/14": "Table 2 (ViT-H/14, JFT): ImageNet 88.55, ReaL 90.72, CIFAR-10 99.50, CIFAR-100 94.55, Pets 97.56, Flowers 99.68, VTAB-19 77.63; 2.5k TPUv3-core-days.",
    "Table 2 L/16": "ViT-L/16 JFT 87.76, 90.54, 99.42, 93.90, 97.32, 99.74, 76.28, 0.68k core-days; ViT-L/16 ImageNet-21k 85.30, 88.62, 99.15, 93.25, 94.67, 99.61, 72.72, 0.23k.",
    "Table 6": "R50x1 77.54/50, R152x2 14ep 85.56/1126, R200x3 14ep 87.22/3306; R50+ViT-B/16 85.58/274,",
    "Table 8": "none 0.61382 / – / –; 1-D 0.64206 / 0.63964 / 0.64292; 2-D 0.64001 / 0.64046 / 0.64022; relative 0.64032 / – / –.",
}


def _value(source, model, pretrain, dataset, kind="finetune", metric="accuracy", **condition):
    found = [n for n in numbers() if (n.source, n.model, n.pretrain, n.dataset, n.kind, n.metric) == (source, model, pretrain, dataset, kind, metric) and dict(n.condition) == {k.replace("__", "."): v for k, v in condition.items()}]
    assert len(found) == 1, f"{source} {model} {pretrain} {dataset}: {found}"
    return found[0]


def _floats(text):
    return [float(x) for x in re.findall(r"\d+\.\d+", text)]


def test_table5_matches_paper_md():
    values = _floats(PAPER_MD["Table 5"])
    models = ["ViT-B/16", "ViT-B/32", "ViT-L/16", "ViT-L/32"]
    for model, value in zip(models, values[:4]):
        assert _value("Table 5", model, "ImageNet", "ImageNet").value == value
    for pretrain, chunk in (("ImageNet-21k", values[4:9]), ("JFT-300M", values[9:14])):
        for model, value in zip(models + ["ViT-H/14"], chunk):
            number = _value("Table 5", model, pretrain, "ImageNet")
            assert (number.value, number.resolution, number.approximate) == (value, 384, False)
    assert not [n for n in numbers() if n.source == "Table 5" and n.model == "ViT-H/14" and n.pretrain == "ImageNet"], "the paper has no H/14 on ImageNet"


def test_table2_matches_paper_md():
    datasets = ["ImageNet", "ImageNet-ReaL", "CIFAR-10", "CIFAR-100", "Pets", "Flowers", "VTAB-1k"]
    for (model, pretrain), values in ((("ViT-H/14", "JFT-300M"), _floats(PAPER_MD["Table 2 H/14"])), (("ViT-L/16", "JFT-300M"), _floats(PAPER_MD["Table 2 L/16"])[:7]), (("ViT-L/16", "ImageNet-21k"), _floats(PAPER_MD["Table 2 L/16"])[8:15])):
        assert [_value("Table 2", model, pretrain, d).value for d in datasets] == values[:7]
    assert _value("Table 2", "ViT-H/14", "JFT-300M", "ImageNet").resolution == 518
    assert _value("Table 2", "ViT-H/14", "JFT-300M", "", kind="pretrain", metric="core_days").value == 2500
    assert pretrain_compute("ViT-L/16", "ImageNet-21k") == {"core_days": 230}


def test_table6_and_table8_match_paper_md():
    cells = re.findall(r"(R[\w+/-]+?)(?: 14ep)? (\d+\.\d+)/(\d+)", PAPER_MD["Table 6"])
    assert [c[0] for c in cells] == ["R50x1", "R152x2", "R200x3", "R50+ViT-B/16"]
    for model, accuracy, flops in cells:
        assert _value("Table 6", model, "JFT-300M", "ImageNet").value == float(accuracy)
        assert pretrain_compute(model, "JFT-300M")["exaflops"] == int(flops)
    table8 = _floats(PAPER_MD["Table 8"])
    assert _value("Table 8", "ViT-B/16", "JFT-300M", "ImageNet", kind="fewshot", shots="5", model__pos_embed="none").value == pytest.approx(table8[0] * 100)
    assert _value("Table 8", "ViT-B/16", "JFT-300M", "ImageNet", kind="fewshot", shots="5", model__pos_embed="2d", model__pos_embed_at="every-layer").value == pytest.approx(table8[5] * 100)


def test_every_number_names_its_source():
    rows = numbers()
    assert len(rows) > 60
    for n in rows:
        assert n.source and n.model and n.pretrain in ("ImageNet", "ImageNet-21k", "JFT-300M") and n.kind in ("finetune", "fewshot", "pretrain")
        assert n.unit == ("%" if n.metric == "accuracy" else {"exaflops": "exaFLOPs", "core_days": "TPUv3-core-days"}[n.metric])


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf:timm/imagenet-22k-wds", "ImageNet-21k"), ("wds:/data/imagenet-22k/{0000..4000}.tar", "ImageNet-21k"), ("ImageNet-21k", "ImageNet-21k"),
        ("hf:timm/imagenet-w21-wds", "ImageNet-21k"), ("hf:ILSVRC/imagenet-1k", "ImageNet"), ("imagenet", "ImageNet"), ("ImageNet-ReaL", "ImageNet-ReaL"),
        ("JFT-300M", "JFT-300M"), ("hf:uoft-cs/cifar100", "CIFAR-100"), ("torchvision:CIFAR10", "CIFAR-10"), ("cifar-10", "CIFAR-10"),
        ("torchvision:OxfordIIITPet", "Pets"), ("pets", "Pets"), ("torchvision:Flowers102", "Flowers"), ("vtab/dtd", "VTAB/dtd"),
        ("VTAB-1k clevr_count", "VTAB/clevr_count"), ("vtab/smallnorb-elev", "VTAB/smallnorb_elev"),
        ("fractal", None), ("digits", None), ("shapes", None), ("vtab/unknown", None), (None, None), ("", None),
    ],
)
def test_paper_dataset(source, expected):
    assert paper_dataset(source) == expected


def test_section_dataset_prefers_the_name():
    assert section_dataset({"data": "folder:/data/x", "name": "ImageNet-21k"}) == "ImageNet-21k"
    assert section_dataset({"data": "hf:uoft-cs/cifar10", "name": "my-set"}) == "CIFAR-10"
    assert section_dataset(None) is None


def test_average5():
    accuracy = {"ImageNet-ReaL": 90.0, "Pets": 80.0, "Flowers": 70.0, "CIFAR-10": 60.0, "CIFAR-100": 50.0, "ImageNet": 1.0}
    assert average5(accuracy) == pytest.approx(70.0)
    assert average5({k: v for k, v in accuracy.items() if k != "Pets"}) is None
    assert AVERAGE5 == ("ImageNet-ReaL", "Pets", "Flowers", "CIFAR-10", "CIFAR-100")


def test_vtab_groups_and_mean_over_tasks():
    assert [len(t) for t in VTAB_GROUPS.values()] == [7, 4, 8] and len(set(VTAB_TASKS)) == 19
    accuracy = {f"VTAB/{t}": 90.0 for t in VTAB_GROUPS["natural"]} | {t: 60.0 for t in VTAB_GROUPS["specialized"]} | {f"VTAB/{t}": 30.0 for t in VTAB_GROUPS["structured"]}
    out = vtab(accuracy)
    assert out["VTAB natural"] == (90.0, 7) and out["VTAB specialized"] == (60.0, 4) and out["VTAB structured"] == (30.0, 8)
    assert out["VTAB-1k"][0] == pytest.approx((7 * 90 + 4 * 60 + 8 * 30) / 19), "over tasks, not over groups"
    del accuracy["VTAB/dtd"]
    partial = vtab(accuracy)
    assert "VTAB-1k" not in partial and partial["VTAB natural"] == (90.0, 6)


def test_real_accuracy_on_a_constructed_file(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[3], [1, 2], [], [7], [0, 5]]))
    labels = load_real_labels(path)
    # image 3 (empty list) is skipped: 3 right of 4 scored
    assert real_accuracy([3, 2, 9, 6, 5], labels) == pytest.approx(0.75)
    with pytest.raises(RealLabelsError, match="5 ReaL label lists"):
        real_accuracy([3, 2], labels)
    (tmp_path / "predictions.npy").write_bytes(predictions_bytes([3, 2, 9, 6, 5]))
    assert load_predictions(tmp_path) == [3, 2, 9, 6, 5] and load_predictions(tmp_path / "none") is None
    path.write_text('{"not": "a list"}')
    with pytest.raises(RealLabelsError, match="real.json"):
        load_real_labels(path)


def test_mean_std_over_seeds():
    mean, std, n = mean_std([80.0, 82.0, 84.0])
    assert (mean, n) == (82.0, 3) and std == pytest.approx(2.0)
    assert math.isnan(mean_std([70.0])[1]) and mean_std([70.0])[2] == 1
    assert mean_std([])[2] == 0
