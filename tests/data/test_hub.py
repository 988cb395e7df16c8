"""hf: sources through a stand-in for the Hugging Face hub (no network here): the real reading
and validation code runs; only the hub's answers (file lists, snapshot folders, descriptions,
access checks) are played by the test."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from tests.data.conftest import draw
from tests.data.shardsets import samples, write_parquet, write_wds
from vitrun import data
from vitrun.cli import main
from vitrun.data import sources
from vitrun.data.options import SourceError, SourceOptions

ROWS = list(samples(24, 3, draw))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A hub cache folder as huggingface_hub lays it out, and the hub calls answered from it."""
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    repos: dict[str, SimpleNamespace] = {}

    def snapshot(repo_id):
        return cache / f"datasets--{repo_id.replace('/', '--')}" / "snapshots" / "0123abcd"

    def list_repo_files(self, repo_id, repo_type=None):
        assert repo_type == "dataset"
        root = snapshot(repo_id)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) + ["README.md"]

    def snapshot_download(repo_id, repo_type=None, allow_patterns=None):
        assert repo_type == "dataset" and allow_patterns, "only the shard files are fetched"
        return str(snapshot(repo_id))

    def dataset_info(self, repo_id, timeout=None):
        if repo_id not in repos:
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError(f"404 {repo_id}", response=SimpleNamespace(status_code=404, headers={}, request=None))
        return SimpleNamespace(id=repo_id, gated=repos[repo_id].gated)

    def auth_check(self, repo_id, repo_type=None):
        from huggingface_hub.errors import GatedRepoError

        if repos[repo_id].gated:
            raise GatedRepoError("Access to this dataset is restricted", response=SimpleNamespace(status_code=403, headers={}, request=None))

    def load_dataset_builder(repo_id, config=None):
        return SimpleNamespace(info=repos[repo_id].info)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "auth_check", auth_check)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(datasets, "load_dataset_builder", load_dataset_builder)
    return SimpleNamespace(snapshot=snapshot, repos=repos)


def test_hub_tar_shards_are_read_from_the_hub_cache(hub, tmp_path):
    root = hub.snapshot("timm/toy-22k-wds")
    write_wds(root, "train", 4, ROWS, name="toy22k")
    write_wds(root, "validation", 1, ROWS[:6], name="toy22k")
    ds = data.load("hf:timm/toy-22k-wds", image_size=16, cache_dir=tmp_path / "vitrun")
    assert ds.counts() == {"train": 24, "test": 6} and ds.train.labels.tolist() == [r[2] for r in ROWS]
    assert ds.train.reader.shards[0].startswith(str(root)), "read where the hub cache holds them"
    assert ds.train.image(3).size == draw(0, 3).size


def test_hub_parquet_with_an_unlabelled_test_split(hub, tmp_path):
    root = hub.snapshot("ILSVRC/toy-1k")
    write_parquet(root / "data", "train", 2, ROWS)
    write_parquet(root / "data", "validation", 1, ROWS[:6])
    write_parquet(root / "data", "test", 1, [(k, b, -1) for k, b, _ in ROWS[:9]])  # as imagenet-1k: all -1
    ds = data.load("hf:ILSVRC/toy-1k", image_size=16, cache_dir=tmp_path / "vitrun")
    assert len(ds.test) == 6 and ds.test.labels.min() >= 0, "validation, never the unlabelled test split"


def _info(features, splits=("train", "validation")):
    return SimpleNamespace(features=features, splits=dict.fromkeys(splits))


def test_validate_reads_the_description_missing_label_and_gated(hub):
    import datasets

    hub.repos["me/no-labels"] = SimpleNamespace(gated=False, info=_info(datasets.Features({"jpg": datasets.Image(), "json": datasets.Value("string")})))
    hub.repos["me/cls"] = SimpleNamespace(gated=False, info=_info(datasets.Features({"jpg": datasets.Image(), "cls": datasets.Value("int64")})))
    hub.repos["me/two"] = SimpleNamespace(gated=False, info=_info(datasets.Features({"image": datasets.Image(), "a": datasets.ClassLabel(names=["x"]), "b": datasets.ClassLabel(names=["y"])})))
    hub.repos["me/gated"] = SimpleNamespace(gated="manual", info=None)
    check = sources.check.__wrapped__
    with pytest.raises(SourceError, match=r"hf:me/no-labels: cannot tell which column holds the labels \(columns: jpg, json;") as info:
        check("hf:me/no-labels")
    assert info.value.key == "label_column"
    check("hf:me/cls")  # timm's hub sets: the label column is "cls"
    with pytest.raises(SourceError, match=r"several label columns \(a, b; columns: image, a, b\); set label_column"):
        check("hf:me/two")
    check("hf:me/two", SourceOptions(label_column="b"))
    hub.repos["me/cifar100"] = SimpleNamespace(gated=False, info=_info(datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["x"]), "coarse_label": datasets.ClassLabel(names=["y"])})))
    check("hf:me/cifar100")  # two ClassLabels, one of them a label name: that one
    with pytest.raises(SourceError, match=r"no split 'test' \(splits: train, validation\)"):
        check("hf:me/cls", SourceOptions(test_split="test"))
    with pytest.raises(SourceError, match=r"hf:me/gated is gated and this machine has no access; .*huggingface-cli login"):
        check("hf:me/gated")
    with pytest.raises(SourceError, match="no such dataset on the Hugging Face hub"):
        check("hf:me/nothing")


def test_vitrun_validate_exits_2_with_one_line_naming_the_columns(hub, tmp_path):
    import datasets

    hub.repos["me/unlabelled"] = SimpleNamespace(gated=False, info=_info(datasets.Features({"jpg": datasets.Image(), "json": datasets.Value("string")})))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[model]\nname = "ViT-Mu/4"\n[pretrain]\ndata = "hf:me/unlabelled"\nsteps = 1\nwarmup_steps = 0\n')
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pretrain.label_column" in lines[0] and "columns: jpg, json" in lines[0], result.output
