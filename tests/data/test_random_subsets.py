"""Plain random training subsets and dev splits (`[[transfer]] train_size`, `dev_size`): VTAB-1k's protocol."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from vitrun import data
from vitrun.cli import main
from vitrun.data import sampling
from vitrun.plan import plan
from vitrun.recipe import RecipeError, load


def test_random_subset_is_nested_deterministic_and_ascending():
    small, large = sampling.random_subset(5000, 800, seed=3), sampling.random_subset(5000, 1000, seed=3)
    assert len(small) == 800 and len(set(large.tolist())) == 1000
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.equal(small, sampling.random_subset(5000, 800, seed=3))
    assert not torch.equal(small, sampling.random_subset(5000, 800, seed=4))
    assert torch.all(small[1:] > small[:-1])
    with pytest.raises(ValueError, match="outside"):
        sampling.random_subset(10, 11, seed=0)


def test_random_subset_follows_the_class_mix_instead_of_balancing_it():
    labels = torch.tensor([0] * 9000 + [1] * 1000)  # 90% / 10%
    picked = labels[sampling.random_subset(len(labels), 1000, seed=0)]
    balanced = labels[sampling.balanced_subset(labels, 1000, seed=0)]
    assert 0.85 < (picked == 0).float().mean() < 0.95  # VTAB-1k: whatever classes the draw holds
    assert (balanced == 0).sum() == 500  # what a class-balanced subset would have done


def test_random_split_is_disjoint_covering_and_seeded():
    train, dev = sampling.random_split(1000, 200, seed=0)
    assert (len(train), len(dev)) == (800, 200)
    assert sorted(train.tolist() + dev.tolist()) == list(range(1000))
    assert torch.equal(dev, sampling.random_split(1000, 200, seed=0)[1])
    for bad in (0, 1000):
        with pytest.raises(ValueError, match="dev size"):
            sampling.random_split(1000, bad, seed=0)


def test_load_takes_a_random_subset_of_the_training_split_only():
    full = data.load("digits", image_size=8)
    ds = data.load("digits", image_size=8, train_size=300)
    assert len(ds.train) == 300 and len(ds.test) == len(full.test)
    smaller = data.load("digits", image_size=8, train_size=100)
    as_rows = lambda s: {tuple(x.flatten().tolist()) for x in s.train.images}  # noqa: E731
    assert as_rows(smaller) <= as_rows(ds)  # nested, as the indices
    with pytest.raises(ValueError, match="train_size 5000"):
        data.load("digits", image_size=8, train_size=5000)


RECIPE = """
name = "vtab-like"
[model]
name = "ViT-Mu/4"
[pretrain]
data = "fractal"
classes = 4
image_size = 16
steps = 2
batch_size = 8
warmup_steps = 1
[finetune]
steps = 2
batch_size = 8
lr = [0.01, 0.03]
warmup_steps = 1
[[transfer]]
data = "digits"
{keys}
"""


def test_dev_size_holds_out_random_images_of_the_subset():
    from vitrun.stages import _dev_split

    ds = data.load("digits", image_size=8, train_size=100)
    fraction, (train, dev) = _dev_split({"data": "digits", "dev_size": 20}, ds.train)
    assert (fraction, len(train), len(dev)) == (0.2, 80, 20)
    again = _dev_split({"data": "digits", "dev_size": 20}, ds.train)[1][1]
    assert torch.equal(dev.images, again.images)  # the same dev images for every trial and model
    assert _dev_split({"data": "digits"}, ds.train)[1][1].labels.numel() != 20  # unset: dev_fraction as before


@pytest.mark.slow
def test_train_and_dev_size_run_the_vtab_protocol(write_recipe, tmp_path):
    """800/200 in miniature: trials train on train_size - dev_size and score on dev_size random
    images; the final run trains on all train_size."""
    path = write_recipe(RECIPE.format(keys="train_size = 100\ndev_size = 20"))
    result = CliRunner().invoke(main, ["recipe", str(path), "--results", str(tmp_path / "r")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "r" / "vtab-like").glob("*/stage.json")}
    trials = [s["metrics"] for k, s in stages.items() if k.startswith("finetune_dev")]
    final = next(s["metrics"] for k, s in stages.items() if k.startswith("finetune-"))
    assert len(trials) == 2 and all((t["train_images"], t["dev_images"], t["dev_fraction"]) == (80, 20, 0.2) for t in trials)
    assert final["train_images"] == 100


def test_unset_subset_keys_keep_stage_keys_and_set_ones_change_them(write_recipe):
    plain = [s for s in plan(load(str(write_recipe(RECIPE.format(keys=""), "a.toml"))).variants) if s.kind != "pretrain"]
    assert all("train_size" not in s.config["transfer"] and "dev_size" not in s.config["transfer"] for s in plain)
    subset = [s for s in plan(load(str(write_recipe(RECIPE.format(keys="train_size = 100"), "b.toml"))).variants) if s.kind != "pretrain"]
    assert {s.key for s in plain}.isdisjoint(s.key for s in subset)
    assert all(s.config["transfer"]["train_size"] == 100 for s in subset)


@pytest.mark.parametrize("keys, message", [
    ("train_size = 100\ndev_size = 100", "dev_size = 100 leaves none of train_size = 100"),
    ("dev_size = 20\ndev_fraction = 0.1", "dev_size and dev_fraction both"),
    ("train_size = 5000", r"transfer\[0\].train_size: 5,000 images, but digits has 1,198"),
    ("train_size = 100\nper_class = 5\nclasses = 10", "more than per_class × classes = 50"),
    ("train_size = 0", "train_size"),
])
def test_subset_sizes_that_cannot_work_are_recipe_errors(write_recipe, keys, message):
    with pytest.raises(RecipeError, match=message):
        load(str(write_recipe(RECIPE.format(keys=keys))))


def test_a_torchvision_class_without_splits_gets_a_carved_test_share(tmp_path):
    """EuroSAT (a VTAB-1k task) has no train/test split in torchvision: the whole set trains and
    a stratified share is the test set, as for hub sets without a test split."""
    from tests.data.conftest import CLASSES, write_tree
    from vitrun.data import SourceError, SourceOptions

    write_tree(tmp_path / "eurosat" / "2750", 10)
    ds = data.load("torchvision:EuroSAT", image_size=16, options=SourceOptions(root=str(tmp_path), test_fraction=0.2))
    assert (len(ds.train), len(ds.test), ds.num_classes) == (8 * len(CLASSES), 2 * len(CLASSES), len(CLASSES))
    assert set(ds.train.rows.tolist()).isdisjoint(ds.test.rows.tolist())
    assert len(data.load("torchvision:EuroSAT", image_size=16, options=SourceOptions(root=str(tmp_path)), train_size=12).train) == 12
    with pytest.raises(SourceError, match="no splits to choose from"):
        data.load("torchvision:EuroSAT", image_size=16, options=SourceOptions(root=str(tmp_path), test_split="val"))
