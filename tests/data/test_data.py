"""Tests for vitrun.data: sampling, augmentation, the embedded sources and their cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitrun import data
from vitrun.data import augment, digits, fractal, shapes
from vitrun.data.imageset import ImageSet
from vitrun.data.sampling import balanced_subset, holdout_split, k_shot

# Small generated sets keep the whole file fast on 2 CPU cores.
FRACTAL = dict(image_size=32, classes=10, per_class=30)
SHAPES = dict(image_size=24, per_class=20)


def _counts(labels: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    return np.bincount(labels[idx].numpy(), minlength=int(labels.max()) + 1)


# --- sampling ---------------------------------------------------------------------------

@pytest.fixture
def uneven_labels() -> torch.Tensor:
    """Class sizes 50, 5, 20, 1: classes run out at different subset sizes."""
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.permutation(np.repeat([0, 1, 2, 3], [50, 5, 20, 1])))


def test_balanced_subset_is_nested_and_deterministic(uneven_labels):
    previous = set()
    for size in [0, 1, 4, 9, 20, 33, 60, 75, 76]:
        idx = balanced_subset(uneven_labels, size, seed=3)
        assert idx.dtype == torch.int64 and len(idx) == size == len(set(idx.tolist()))
        assert previous <= set(idx.tolist())
        assert torch.equal(idx, balanced_subset(uneven_labels, size, seed=3))
        previous = set(idx.tolist())
    assert not torch.equal(balanced_subset(uneven_labels, 20, 3), balanced_subset(uneven_labels, 20, 4))


def test_balanced_subset_balances_then_fills(uneven_labels):
    counts = _counts(uneven_labels, balanced_subset(uneven_labels, 12, seed=0))
    assert sorted(counts.tolist()) == [1, 3, 4, 4]  # one image in class 3, the rest dealt round-robin
    counts = _counts(uneven_labels, balanced_subset(uneven_labels, 40, seed=0))
    assert counts[3] == 1 and counts[1] == 5  # exhausted classes give all they have
    assert abs(counts[0] - counts[2]) <= 1 and counts[0] + counts[2] == 34


def test_balanced_subset_rejects_bad_sizes(uneven_labels):
    with pytest.raises(ValueError, match="outside"):
        balanced_subset(uneven_labels, 77, seed=0)
    with pytest.raises(ValueError):
        balanced_subset(uneven_labels, -1, seed=0)


def test_k_shot_counts_nesting_and_errors():
    labels = torch.arange(5).repeat_interleave(12)
    three, five = k_shot(labels, 3, seed=1), k_shot(labels, 5, seed=1)
    assert _counts(labels, three).tolist() == [3] * 5 and _counts(labels, five).tolist() == [5] * 5
    assert set(three.tolist()) <= set(five.tolist())
    assert not torch.equal(five, k_shot(labels, 5, seed=2))
    with pytest.raises(ValueError, match="fewer than k=13"):
        k_shot(labels, 13, seed=0)


def test_sampling_functions_use_separate_streams():
    labels = torch.arange(4).repeat_interleave(50)
    _, dev = holdout_split(labels, 0.1, seed=0)
    assert not torch.equal(dev, k_shot(labels, 5, seed=0))


def test_holdout_split_is_stratified_disjoint_and_deterministic(uneven_labels):
    train, dev = holdout_split(uneven_labels, 0.2, seed=5)
    assert set(train.tolist()).isdisjoint(dev.tolist())
    assert sorted(train.tolist() + dev.tolist()) == list(range(len(uneven_labels)))
    assert len(dev) == round(0.2 * len(uneven_labels))
    dev_counts, all_counts = _counts(uneven_labels, dev), _counts(uneven_labels, torch.arange(76))
    assert np.all(np.abs(dev_counts - 0.2 * all_counts) < 1)
    assert np.all(_counts(uneven_labels, train) >= 1)  # every class keeps a training image
    again = holdout_split(uneven_labels, 0.2, seed=5)
    assert torch.equal(train, again[0]) and torch.equal(dev, again[1])
    assert not torch.equal(dev, holdout_split(uneven_labels, 0.2, seed=6)[1])
    with pytest.raises(ValueError):
        holdout_split(uneven_labels, 1.0, seed=0)


# --- augmentation -------------------------------------------------------------------------

def _gradient_images(b: int = 64, h: int = 16, w: int = 16) -> torch.Tensor:
    """uint8 (b, 3, h, w), brightness rising left to right: a flip is visible."""
    row = torch.linspace(0, 255, w).round().to(torch.uint8)
    return row.expand(b, 3, h, w).contiguous()


def test_to_float_range():
    x = augment.to_float(torch.tensor([0, 255], dtype=torch.uint8).reshape(1, 1, 1, 2).expand(1, 3, 1, 2))
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0


def test_random_crop_flip_shape_range_determinism():
    images = torch.randint(0, 256, (8, 3, 20, 28), dtype=torch.uint8)
    out = augment.random_crop_flip(images, 16, torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    again = augment.random_crop_flip(images, 16, torch.Generator().manual_seed(0))
    other = augment.random_crop_flip(images, 16, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_random_crop_flip_flips_some_samples():
    images = _gradient_images()
    # Full-image boxes: every output is the image or its mirror, nothing in between.
    out = augment.random_crop_flip(images, 16, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1))
    plain, mirrored = augment.to_float(images[:1]), augment.to_float(images[:1]).flip(-1)
    is_plain = (out - plain).abs().flatten(1).amax(1) < 1e-4
    is_mirrored = (out - mirrored).abs().flatten(1).amax(1) < 1e-4
    assert torch.all(is_plain ^ is_mirrored)
    assert 10 < int(is_mirrored.sum()) < 54  # about half of 64


def test_random_crop_flip_crops_vary_per_sample():
    images = _gradient_images(b=32, w=64)
    out = augment.random_crop_flip(images, 16, torch.Generator().manual_seed(0))
    means = out.mean((1, 2, 3))
    assert means.std() > 0.05  # different boxes see different parts of the gradient


def test_center_resizes_and_crops():
    wide = torch.zeros(2, 3, 20, 40, dtype=torch.uint8)
    wide[:, :, :, 6:34] = 255  # white beyond the centre 20x20 crop by the filter's reach
    out = augment.center(wide, 10)
    assert out.shape == (2, 3, 10, 10) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))
    same = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    assert torch.equal(augment.center(same, 12), augment.to_float(same))
    up = augment.center(same, 30)
    assert up.shape == (2, 3, 30, 30) and up.min() >= -1 and up.max() <= 1


# --- image sets and the source registry --------------------------------------------------

def test_imageset_validates_and_subsets():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    s = ImageSet(images, torch.tensor([0, 1, 0, 1]), ("a", "b"))
    sub = s.subset([3, 1])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 1] and sub.classes == ("a", "b")
    assert s.subset(s.labels == 0).labels.tolist() == [0, 0]
    with pytest.raises(ValueError):
        ImageSet(images.float(), torch.tensor([0, 1, 0, 1]), ("a", "b"))
    with pytest.raises(ValueError):
        ImageSet(images, torch.tensor([0, 1]), ("a", "b"))


def test_unknown_source_suggests_nearest():
    assert set(data.SOURCES) == {"fractal", "digits", "shapes"}
    with pytest.raises(ValueError, match=r"unknown data source 'digts' \(did you mean 'digits'\?\)"):
        data.load("digts", image_size=32)
    with pytest.raises(ValueError, match=r"embedded: fractal, digits, shapes; or KIND:TARGET with KIND one of hf, wds, parquet, arrow, torchvision, folder\)"):
        data.load("imagenet", image_size=32)
    with pytest.raises(data.SourceError, match=r"unknown data source 'digts' \(did you mean 'digits'\?\)"):
        data.check("digts")  # what `vitrun validate` and `vitrun bench data` call


def _check_dataset(ds, name: str, size: int, classes: int, train: int, test: int):
    assert ds.name == name and ds.num_classes == classes
    for split, n in ((ds.train, train), (ds.test, test)):
        assert split.images.shape == (n, 3, size, size) and split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64 and split.labels.shape == (n,)
        assert int(split.labels.min()) == 0 and int(split.labels.max()) == classes - 1
        assert len(split.classes) == classes
        assert int(split.images.max()) > 150 and int(split.images.min()) < 60  # uses the range


# --- digits -------------------------------------------------------------------------------

def test_digits_split_shapes_and_options(tmp_path):
    ds = data.load("digits", image_size=16, cache_dir=tmp_path)
    _check_dataset(ds, "digits", 16, 10, 1198, 599)
    assert torch.equal(ds.test.images, data.load("digits", image_size=16, seed=7).test.images)  # fixed split
    train_counts, test_counts = torch.bincount(ds.train.labels), torch.bincount(ds.test.labels)
    assert torch.all((train_counts - 2 / 3 * (train_counts + test_counts)).abs() < 1)  # stratified
    small = data.load("digits", image_size=8, classes=3, per_class=5, seed=1)
    assert small.num_classes == 3 and torch.bincount(small.train.labels).tolist() == [5, 5, 5]
    assert set(small.test.labels.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="11"):
        data.load("digits", image_size=8, classes=11)
    with pytest.raises(ValueError, match="500"):
        data.load("digits", image_size=8, per_class=500)


# --- generators: fractal and shapes --------------------------------------------------------

@pytest.fixture(scope="module")
def fractal_set(tmp_path_factory):
    return data.load("fractal", seed=0, cache_dir=tmp_path_factory.mktemp("fractal"), **FRACTAL)


def test_fractal_shapes_and_determinism(fractal_set, tmp_path):
    _check_dataset(fractal_set, "fractal", 32, 10, 300, 10 * fractal.TEST_PER_CLASS)
    fresh = data.load("fractal", seed=0, cache_dir=tmp_path / "a", **FRACTAL)  # generated again
    assert torch.equal(fresh.train.images, fractal_set.train.images)
    assert torch.equal(fresh.test.images, fractal_set.test.images)
    other = data.load("fractal", seed=1, cache_dir=tmp_path / "b", image_size=32, classes=2, per_class=3)
    assert not torch.equal(other.train.images, fractal_set.train.images[:6])


def test_fractal_instances_do_not_depend_on_request_size(fractal_set, tmp_path):
    small = data.load("fractal", seed=0, cache_dir=tmp_path, image_size=32, classes=3, per_class=4)
    expected = fractal_set.train.images.reshape(10, 30, 3, 32, 32)[:3, :4].reshape(12, 3, 32, 32)
    assert torch.equal(small.train.images, expected)
    assert torch.equal(small.test.images, fractal_set.test.images[: 3 * fractal.TEST_PER_CLASS])


def test_fractal_train_and_test_instances_differ(fractal_set):
    train = fractal_set.train.images.reshape(10, 30, -1)
    test = fractal_set.test.images.reshape(10, fractal.TEST_PER_CLASS, -1)
    assert not any(torch.equal(train[0, i], test[0, j]) for i in range(30) for j in range(test.shape[1]))


def _pixel_features(images: torch.Tensor) -> np.ndarray:
    """Foreground magnitude on a 16x16 grid: |grey - background level|, unit norm."""
    grey = images.float().mean(1)  # (N, H, W)
    fg = (grey - grey.flatten(1).median(1).values[:, None, None]).abs()
    x = F.adaptive_avg_pool2d(fg[:, None], 16).flatten(1)
    return (x / (x.norm(dim=1, keepdim=True) + 1e-6)).numpy()


def test_fractal_classes_are_distinguishable(fractal_set):
    """A linear model on pixels tells the 10 classes apart (chance: 10%). The model is ridge
    regression onto {-1, 1} targets in closed form (as the paper's few-shot probe; 0.9 here),
    not an iterative logistic regression: the same question in 0.05 s instead of 2 s."""
    train, test = _pixel_features(fractal_set.train.images), _pixel_features(fractal_set.test.images)
    targets = 2 * np.eye(10)[fractal_set.train.labels.numpy()] - 1  # (N, 10)
    weights = np.linalg.solve(train.T @ train + np.eye(train.shape[1]), train.T @ targets)  # (D, 10), l2 = 1
    acc = ((test @ weights).argmax(1) == fractal_set.test.labels.numpy()).mean()
    assert acc > 0.5, f"a linear model on pixels reaches only {acc:.2f} on 10 fractal classes"


def test_fractal_other_sizes():
    for size in (8, 17):  # tiny and odd sizes render through the same 2x grid
        images = fractal.render(0, size, np.array([0, 1]), np.array([0, 0]), split=1)
        assert images.shape == (2, 3, size, size) and images.dtype == np.uint8


def test_shapes_shapes_and_determinism(tmp_path):
    ds = data.load("shapes", seed=0, cache_dir=tmp_path / "a", **SHAPES)
    _check_dataset(ds, "shapes", 24, 10, 200, 10 * shapes.TEST_PER_CLASS)
    assert ds.train.classes == tuple(shapes.SHAPES)
    again = data.load("shapes", seed=0, cache_dir=tmp_path / "b", **SHAPES)
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.test.images, ds.test.images)
    first_two = ds.train.images.reshape(10, 20, 3, 24, 24)[:2, :2].reshape(4, 3, 24, 24)
    small = data.load("shapes", seed=0, cache_dir=tmp_path / "c", image_size=24, classes=2, per_class=2)
    assert torch.equal(small.train.images, first_two)  # generated afresh, same instances
    other = data.load("shapes", seed=1, cache_dir=tmp_path / "d", image_size=24, classes=2, per_class=2)
    assert not torch.equal(other.train.images, first_two)
    with pytest.raises(ValueError, match="10 classes"):
        data.load("shapes", image_size=24, classes=11, cache_dir=tmp_path)


def test_shape_masks_are_distinct_and_fill_their_frame():
    grid = torch.linspace(-1.2, 1.2, 97)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    masks = {name: torch.as_tensor(sdf(x.numpy(), y.numpy()) < 0) for name, sdf in shapes.SHAPES.items()}
    for name, m in masks.items():
        assert 0.05 < m.float().mean() < 0.6, name
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.93, (a, b, float(iou))  # circle vs pentagon is the closest pair (~0.90), on purpose


# --- cache -----------------------------------------------------------------------------------

def _boom(*args, **kwargs):
    raise AssertionError("generated although a cache file should have answered")


def test_cache_is_reused_for_the_same_and_smaller_requests(tmp_path, monkeypatch):
    first = data.load("shapes", seed=2, cache_dir=tmp_path, image_size=16, classes=4, per_class=6)
    files = sorted((tmp_path / "data").iterdir())
    assert [f.name for f in files] == [f"shapes-v{shapes.VERSION}-seed2-px16-c4-n6.npz"]
    monkeypatch.setattr(shapes, "generate", _boom)
    again = data.load("shapes", seed=2, cache_dir=tmp_path, image_size=16, classes=4, per_class=6)
    assert torch.equal(again.train.images, first.train.images)
    smaller = data.load("shapes", seed=2, cache_dir=tmp_path, image_size=16, classes=3, per_class=2)
    assert torch.equal(smaller.train.images, first.train.images.reshape(4, 6, 3, 16, 16)[:3, :2].reshape(6, 3, 16, 16))
    assert sorted((tmp_path / "data").iterdir()) == files  # nothing new written, no temp files left


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_layout"])
def test_damaged_cache_is_regenerated(tmp_path, damage):
    kwargs = dict(seed=0, cache_dir=tmp_path, image_size=16, classes=2, per_class=3)
    first = data.load("shapes", **kwargs)
    (path,) = (tmp_path / "data").iterdir()
    if damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, train=np.zeros((2, 3, 3, 8, 8), np.uint8), test=np.zeros((2, 1, 3, 8, 8), np.uint8))
    again = data.load("shapes", **kwargs)
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.test.images, first.test.images)
    assert data.load("shapes", **kwargs).train.images.shape == first.train.images.shape  # rewritten, readable


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VITRUN_CACHE", str(tmp_path / "env"))
    data.load("shapes", image_size=8, classes=1, per_class=1)
    assert [p.name for p in (tmp_path / "env" / "data").iterdir()] == [f"shapes-v{shapes.VERSION}-seed0-px8-c1-n1.npz"]


def test_digits_smallest_training_class_is_what_recipes_check_shots_against():
    train, _ = digits.load_split(8)
    assert int(torch.bincount(train.labels).min()) == digits.TRAIN_MIN_PER_CLASS


def test_digits_read_straight_from_the_file_equal_scikit_learns_loader(monkeypatch):
    from sklearn.datasets import load_digits

    pixels, labels = digits._read()  # the fast path: the CSV inside scikit-learn, no sklearn import
    bunch = load_digits()
    assert np.array_equal(pixels, bunch.images) and np.array_equal(labels, bunch.target)
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)  # a layout we do not know
    fallback_pixels, fallback_labels = digits._read()
    assert np.array_equal(fallback_pixels, bunch.images) and np.array_equal(fallback_labels, bunch.target)
