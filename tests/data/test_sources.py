"""Real sources on small datasets built on disk: folders, save_to_disk, Parquet; the loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.conftest import CLASSES, draw
from vitrun import data
from vitrun.data import augment, hf, loader, sharded, sources, transforms
from vitrun.data.options import SourceError, SourceOptions
from vitrun.data.sampling import balanced_subset, k_shot


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail if anything decodes an image: labels must come from paths and Arrow columns."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", refuse)


# --- opening each kind ---------------------------------------------------------------------

def test_folder_with_train_and_test_trees(image_folder, no_decoding):
    ds = data.load(f"folder:{image_folder}", image_size=16)
    assert ds.counts() == {"train": 48, "test": 18} and ds.train.classes == CLASSES
    assert torch.bincount(ds.train.labels).tolist() == [16, 16, 16]
    assert torch.bincount(ds.test.labels).tolist() == [6, 6, 6]


def test_folder_single_tree_carves_a_fixed_stratified_test_split(image_folder):
    one_tree = f"folder:{image_folder / 'train'}"
    ds = data.load(one_tree, image_size=16, seed=3)
    assert ds.counts() == {"train": 38, "test": 10}  # default test_fraction 0.2 of 48, stratified
    assert sorted(torch.bincount(ds.test.labels).tolist()) == [3, 3, 4]
    again = data.load(one_tree, image_size=16, seed=7)
    assert np.array_equal(ds.test.rows, again.test.rows), "the test split does not follow the run's seed"
    half = data.load(one_tree, image_size=16, options=SourceOptions(test_fraction=0.5))
    assert half.counts() == {"train": 24, "test": 24}


@pytest.mark.parametrize("kind", ["arrow", "parquet", "hf"])
def test_hf_formats_detect_columns_and_read_labels_from_arrow(kind, hf_arrow, hf_parquet, no_decoding):
    target = {"arrow": f"arrow:{hf_arrow}", "parquet": f"parquet:{hf_parquet}/*.parquet", "hf": f"hf:{hf_arrow}"}[kind]
    ds = data.load(target, image_size=16)
    assert ds.counts() == {"train": 48, "test": 18} and ds.train.classes == CLASSES  # column fine_label found
    assert ds.train.labels[:6].tolist() == [0, 1, 2, 0, 1, 2]


def test_hf_local_imagefolder(image_folder):
    """hf:PATH goes through datasets.load_dataset, which reads a class-per-folder tree as imagefolder."""
    ds = data.load(f"hf:{image_folder}", image_size=16)
    assert ds.counts() == {"train": 48, "test": 18} and ds.train.classes == CLASSES
    assert transforms.view(ds.test.image(0), 8, "center").shape == (3, 8, 8)


def test_string_labels_and_named_columns(tmp_path):
    import datasets

    images = [draw(i % 3, i) for i in range(12)]
    table = datasets.Dataset.from_dict({"picture": images, "kind": [CLASSES[i % 3] for i in range(12)]}, features=datasets.Features({"picture": datasets.Image(), "kind": datasets.Value("string")}))
    table.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(SourceError, match=r"cannot tell which column holds the labels \(columns: picture, kind;"):
        data.load(f"arrow:{tmp_path / 'one'}", image_size=16)
    ds = data.load(f"arrow:{tmp_path / 'one'}", image_size=16, options=SourceOptions(label_column="kind", test_fraction=0.25))
    assert ds.train.classes == tuple(sorted(CLASSES)) and ds.counts() == {"train": 9, "test": 3}
    assert ds.train.image(0).size == images[int(ds.train.rows[0])].size


def test_classes_and_per_class_restrict_real_sources(image_folder):
    ds = data.load(f"folder:{image_folder}", image_size=16, classes=2, per_class=5, seed=1)
    assert ds.train.classes == CLASSES[:2] and torch.bincount(ds.train.labels).tolist() == [5, 5]
    assert set(ds.test.labels.tolist()) == {0, 1}


# --- errors, at validation time ------------------------------------------------------------

def _check(text, **options):
    sources.check.cache_clear()
    sources.check(text, SourceOptions(**options))


def test_check_errors_name_the_problem_and_the_fix(tmp_path, hf_arrow, hf_parquet):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").touch()
    cases = [
        ((f"folder:{tmp_path / 'nope'}",), {}, "data", "no such folder"),
        ((f"folder:{tmp_path / 'flat'}",), {}, "data", "no class subfolders"),
        ((f"parquet:{tmp_path}/*.parquet",), {}, "data", "no file matches"),
        ((f"arrow:{hf_arrow}",), {"label_column": "lbl"}, "label_column", "no column 'lbl' (columns: img, fine_label, note)"),
        ((f"parquet:{hf_parquet}/*.parquet",), {"image_column": "note"}, "image_column", "holds string values, not images"),
        ((f"arrow:{hf_arrow}",), {"test_split": "dev"}, "test_split", "no split 'dev' (splits: train, test)"),
        ((f"arrow:{hf_arrow}",), {"root": "/x"}, "root", "does not apply to this source (only to torchvision:)"),
        (("hff:cifar10",), {}, "data", "did you mean 'hf:'?"),
        (("torchvision:CIFAR11",), {}, "data", "did you mean 'CIFAR10'?"),
        (("torchvision:CIFAR10",), {"root": str(tmp_path)}, "data", "set download = true (needs a network) or root = a folder that has it"),
    ]
    for args, options, key, expected in cases:
        with pytest.raises(SourceError) as info:
            _check(*args, **options)
        assert info.value.key == key and expected in str(info.value), str(info.value)
        assert "\n" not in str(info.value)


def test_hub_dataset_without_network_or_cache(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    def offline(self, repo_id, timeout=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    with pytest.raises(SourceError, match=r"hf:cifar10 cannot be downloaded here; set HF_HOME to a cache that has it, or use wds:GLOB"):
        _check("hf:cifar10")
    (tmp_path / "datasets--cifar10").mkdir()  # in the cache: fine without a network
    _check("hf:cifar10")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set"):
        _check("hf:uoft-cs/cifar100:plain_text")


def test_torchvision_labels_come_from_the_label_list():
    """A torchvision dataset object (here a stand-in with CIFAR's attributes) read without decoding."""
    from vitrun.data import tv

    class Stand(torch.utils.data.Dataset):
        classes = list(CLASSES)
        targets = [i % 3 for i in range(9)]

        def __len__(self):
            return 9

        def __getitem__(self, i):
            return np.asarray(draw(self.targets[i], i).convert("RGB")), self.targets[i]

    images = tv.image_set(Stand(), "Stand")
    assert images.classes == CLASSES and images.labels.tolist() == Stand.targets
    assert images.subset([4]).image(0).mode == "RGB"  # arrays come back as PIL images


def test_parse_source_strings():
    assert sources.parse("hf:uoft-cs/cifar10:plain_text") == sources.Source("hf", "uoft-cs/cifar10", "plain_text")
    assert sources.parse("hf:/data/my:set/x") == sources.Source("hf", "/data/my:set/x")
    assert sources.parse("digits") == sources.Source("embedded", "digits")
    assert str(sources.parse("hf:cifar10:plain_text")) == "hf:cifar10:plain_text"


def test_parquet_split_names_from_file_names(tmp_path):
    for name in ("data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/validation-0.parquet", "extra/test.parquet"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    files = sharded.local_files("parquet", f"{tmp_path}/**/*.parquet")
    assert {k: len(v) for k, v in files.items()} == {"train": 2, "validation": 1, "test": 1}


# --- dev split (the paper's learning-rate hold-out) ---------------------------------------

def test_dev_fraction_defaults_follow_the_paper():
    assert sources.dev_fraction("hf:uoft-cs/cifar10") == 0.02
    assert sources.dev_fraction("torchvision:OxfordIIITPet") == 0.10
    assert sources.dev_fraction("torchvision:Flowers102") == 0.10
    assert sources.dev_fraction("hf:ILSVRC/imagenet-1k") == 0.01
    assert sources.dev_fraction("folder:/my/photos") == sources.DEFAULT_DEV_FRACTION
    assert sources.dev_fraction("hf:uoft-cs/cifar10", SourceOptions(dev_fraction=0.3)) == 0.3


def test_dev_split_is_stratified_deterministic_and_lazy(image_folder, no_decoding):
    ds = data.load(f"folder:{image_folder}", image_size=16)
    train, dev = sources.dev_split(ds.train, 0.25, seed=0)
    assert len(dev) == 12 and torch.bincount(dev.labels).tolist() == [4, 4, 4]
    assert set(train.rows.tolist()).isdisjoint(dev.rows.tolist())
    assert np.array_equal(dev.rows, sources.dev_split(ds.train, 0.25, seed=0)[1].rows)
    assert not np.array_equal(dev.rows, sources.dev_split(ds.train, 0.25, seed=1)[1].rows)


def test_subsets_of_lazy_sets_are_nested(image_folder, no_decoding):
    ds = data.load(f"folder:{image_folder}", image_size=16)
    small = ds.train.subset(balanced_subset(ds.train.labels, 9, seed=2))
    large = ds.train.subset(balanced_subset(ds.train.labels, 30, seed=2))
    assert set(small.rows.tolist()) <= set(large.rows.tolist())
    assert torch.bincount(small.labels).tolist() == [3, 3, 3]
    shots = large.subset(k_shot(large.labels, 2, seed=0))
    assert set(shots.rows.tolist()) <= set(large.rows.tolist()) and len(shots) == 6


# --- transforms and the loader --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_any_mode_becomes_rgb_views(mode):
    image = draw(0, 1).convert(mode if mode != "I;16" else "I").convert(mode) if mode != "P" else draw(0, 3)
    rng = np.random.default_rng(0)
    for kind in ("center", "resize", "inception"):
        out = transforms.view(image, 12, kind, rng)
        assert out.shape == (3, 12, 12) and out.dtype == torch.uint8


def test_center_view_matches_batched_center():
    """The per-image evaluation view is the in-memory one: shorter side, centre crop."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    ours = transforms.view(image, 20, "center")
    batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # (1, 3, 20, 40)
    assert torch.equal(augment.to_float(ours[None]), augment.center(batch, 20))


def test_jpeg_draft_decodes_large_photos_small(tmp_path):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    big.save(tmp_path / "big.jpg", quality=85)
    out = transforms.view(Image.open(tmp_path / "big.jpg"), 32, "center")
    reference = transforms.view(big, 32, "center")
    assert out.shape == (3, 32, 32)
    assert (out.float() - reference.float()).abs().mean() < 12  # same picture, decoded at 1/8 scale


def test_batches_do_not_depend_on_worker_count_and_resume_mid_run(image_folder):
    ds = data.load(f"folder:{image_folder}", image_size=16)
    runs = {}
    for workers in (0, 2):
        batch_at = loader.train_batches(ds.train, 16, 20, 5, seed=4, crop="inception", settings=loader.LoaderSettings(workers=workers))
        runs[workers] = [batch_at(step) for step in range(5)]
    for (x0, y0), (x2, y2) in zip(runs[0], runs[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(runs[0][0][0], runs[0][1][0])
    resumed = loader.train_batches(ds.train, 16, 20, 5, seed=4, crop="resize", settings=loader.LoaderSettings(workers=1))
    fresh = loader.train_batches(ds.train, 16, 20, 5, seed=4, crop="resize")
    assert torch.equal(resumed(3)[0], [fresh(s) for s in range(4)][3][0]), "a resumed run sees the batch it would have seen"
    x, _ = runs[0][0]
    assert x.dtype == torch.float32 and x.shape == (20, 3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_eval_batches_cover_the_set_in_order(image_folder):
    ds = data.load(f"folder:{image_folder}", image_size=16)
    seen = [y for _, y in loader.eval_batches(ds.test, 16, 7, loader.LoaderSettings(workers=2))]
    assert torch.equal(torch.cat(seen), ds.test.labels)


@pytest.mark.parametrize("in_memory", [False, True])
def test_rank_slices_of_a_batch_are_the_whole_batch_cut(image_folder, in_memory):
    """Data parallelism: rank r's slice of step s is rows r·B/W … of the whole batch, each image
    viewed as in the whole batch; evaluation shards deal batches out and lose none."""
    ds = data.load(f"folder:{image_folder}", image_size=16)
    images = ds.train
    if in_memory:  # the embedded sources' path
        from vitrun.data.imageset import ImageSet

        images = ImageSet(_decoded(images), images.labels, tuple(images.classes))
    whole = loader.train_batches(images, 16, 12, 3, seed=4, crop="inception")
    parts = [loader.train_batches(images, 16, 12, 3, seed=4, crop="inception", part=(rank, 3)) for rank in range(3)]
    for step in (0, 2):
        x, y = whole(step)
        pieces = [part(step) for part in parts]
        assert torch.equal(torch.cat([p[0] for p in pieces]), x) and torch.equal(torch.cat([p[1] for p in pieces]), y)
    shards = [list(loader.eval_batches(ds.test, 16, 3, shard=(rank, 2))) for rank in range(2)]
    dealt = [shards[i % 2][i // 2][1] for i in range(len(shards[0]) + len(shards[1]))]
    assert torch.equal(torch.cat(dealt), ds.test.labels)


def _decoded(images) -> torch.Tensor:
    """uint8 (N, 3, 16, 16): an on-disk set held in memory."""
    return torch.stack([transforms.view(images.image(i), 16, "center") for i in range(len(images))])
