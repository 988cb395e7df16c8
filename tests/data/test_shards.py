"""Shards read where they lie: WebDataset tars and Parquet built here, as the hub lays them out."""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.conftest import CLASSES, draw
from tests.data.shardsets import jpeg, samples, write_parquet, write_wds
from vitrun import data
from vitrun.data import loader, shards, sources
from vitrun.data.options import SourceError, SourceOptions

TRAIN, VAL = list(samples(60, 3, draw)), list(samples(12, 3, draw, offset=500))


def _bytes_under(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_wds(root / "wds", "train", 6, TRAIN)
    write_wds(root / "wds", "validation", 2, VAL)
    write_parquet(root / "pq", "train", 3, TRAIN, row_group=7)
    write_parquet(root / "pq", "validation", 1, VAL)
    return root


@pytest.mark.parametrize("kind, pattern", [("wds", "wds/*.tar"), ("parquet", "pq/*.parquet")])
def test_shards_open_in_place_with_labels_and_images(kind, pattern, shard_sets, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    before = _bytes_under(shard_sets)
    ds = data.load(f"{kind}:{shard_sets}/{pattern}", image_size=16, cache_dir=cache)
    assert ds.counts() == {"train": 60, "test": 12} and ds.train.classes == ("0", "1", "2")
    assert ds.train.labels.tolist() == [r[2] for r in TRAIN] and ds.test.labels.tolist() == [r[2] for r in VAL]
    for i in (0, 17, 59):  # the very bytes that were written, read back by offset / row group
        assert ds.train.reader.read_bytes(int(ds.train.rows[i])) == TRAIN[i][1]
    assert np.array_equal(np.asarray(ds.test.image(5).convert("RGB")), np.asarray(Image.open(io.BytesIO(VAL[5][1])).convert("RGB")))
    # No conversion copy: the shards are untouched and the cache holds the index alone (bytes per image).
    assert _bytes_under(shard_sets) == before
    written = [f for f in cache.rglob("*") if f.is_file()]
    assert {f.parent.name for f in written} == {"index"} and _bytes_under(cache) < 64 * 72 + 4096
    # Built once: a second open reads the cached index (indexing now would fail).
    monkeypatch.setattr(shards, "_parallel", lambda *a: pytest.fail("re-indexed"))
    again = data.load(f"{kind}:{shard_sets}/{pattern}", image_size=16, cache_dir=cache)
    assert torch.equal(again.train.labels, ds.train.labels)


def test_index_follows_a_changed_shard(tmp_path):
    paths = write_wds(tmp_path / "s", "train", 2, TRAIN[:10])
    first = data.load(f"wds:{tmp_path}/s/*.tar", image_size=16, cache_dir=tmp_path / "c", options=SourceOptions(eval_size=2))
    write_wds(tmp_path / "s", "train", 2, TRAIN[:14])
    os.utime(paths[0], ns=(1, 1))  # a new mtime even on a coarse clock
    second = data.load(f"wds:{tmp_path}/s/*.tar", image_size=16, cache_dir=tmp_path / "c", options=SourceOptions(eval_size=2))
    assert (len(first.train), len(second.train)) == (8, 12)


@pytest.mark.parametrize("source", ["wds:{root}/wds/*.tar", "parquet:{root}/pq/*.parquet"])
def test_batches_identical_for_0_1_2_workers_on_shards(source, shard_sets, tmp_path):
    ds = data.load(source.format(root=shard_sets), image_size=16, cache_dir=tmp_path)
    runs = {}
    for workers in (0, 1, 2):
        batch_at = loader.train_batches(ds.train, 16, 10, 3, seed=1, crop="inception", settings=loader.LoaderSettings(workers=workers))
        runs[workers] = [batch_at(step) for step in range(3)]
    for w in (1, 2):
        for (x0, y0), (x, y) in zip(runs[0], runs[w]):
            assert torch.equal(x0, x) and torch.equal(y0, y)
    seen = [y for _, y in loader.eval_batches(ds.test, 16, 5, loader.LoaderSettings(workers=2))]
    assert [len(y) for y in seen] == [5, 5, 2] and torch.equal(torch.cat(seen), ds.test.labels)


def test_a_corrupt_member_is_reported_with_shard_and_offset_and_skipped(tmp_path):
    rows = list(TRAIN[:8])
    rows[3] = (rows[3][0], b"\xff\xd8 not a jpeg at all", rows[3][2])
    (path,) = write_wds(tmp_path / "s", "train", 1, rows)
    ds = data.load(f"wds:{path}", image_size=16, cache_dir=tmp_path / "c", options=SourceOptions(eval_size=2))
    i = next(k for k in range(len(ds.train)) if ds.train.reader.read_bytes(int(ds.train.rows[k])) == rows[3][1])
    views = loader._Views(ds.train, 16, "resize", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = views[(i, 0, 0)]
    offset = int(ds.train.reader.offset[ds.train.rows[i]])
    assert f"shard {path} at byte {offset}: not a readable image" in str(caught[0].message)
    assert x.shape == (3, 16, 16) and y == ds.train.labels[(i + 1) % len(ds.train)], "the next image takes the slot"
    with pytest.warns(UserWarning, match="not a readable image"):
        assert torch.equal(x, views[(i, 0, 0)][0]), "deterministic"


def test_a_damaged_tar_names_the_shard(tmp_path):
    (path,) = write_wds(tmp_path / "s", "train", 1, TRAIN[:4])
    with tarfile.open(path) as tar:
        header = tar.getmembers()[4].offset  # the second sample's image
    raw = bytearray(path.read_bytes())
    raw[header + 148 : header + 156] = b"garbage!"  # its header checksum
    path.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match=rf"{path}: damaged tar header near byte {header}"):
        data.load(f"wds:{path}", image_size=16, cache_dir=tmp_path / "c")


def test_unlabelled_split_is_never_the_test_split(tmp_path):
    write_parquet(tmp_path / "pq", "train", 1, TRAIN)
    write_parquet(tmp_path / "pq", "test", 1, [(k, b, -1) for k, b, _ in VAL])  # ILSVRC/imagenet-1k's test
    source = f"parquet:{tmp_path}/pq/*.parquet"
    data.check(source)
    ds = data.load(source, image_size=16, cache_dir=tmp_path / "c")
    assert len(ds.test) == 12 and len(ds.train) == 48, "carved from train, not the unlabelled test split"
    write_parquet(tmp_path / "pq", "validation", 1, VAL)
    ds = data.load(source, image_size=16, cache_dir=tmp_path / "c")
    assert ds.counts() == {"train": 60, "test": 12} and ds.test.labels.min() >= 0
    with pytest.raises(SourceError, match="split 'test' has no labels"):
        sources.check.__wrapped__(source, SourceOptions(test_split="test"))


def test_eval_size_holds_out_a_fixed_number(shard_sets, tmp_path):
    ds = data.load(f"wds:{shard_sets}/wds/*-train-*.tar", image_size=16, cache_dir=tmp_path, options=SourceOptions(eval_size=9))
    assert (len(ds.train), len(ds.test)) == (51, 9)
    assert set(ds.test.rows.tolist()).isdisjoint(ds.train.rows.tolist())


@pytest.mark.parametrize("kind", ["wds", "parquet"])
def test_missing_label_column_names_the_columns_found(kind, tmp_path):
    rows = TRAIN[:4]
    if kind == "wds":
        path = tmp_path / "x-train-0000.tar"
        with tarfile.open(path, "w") as tar:
            for key, payload, _ in rows:
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        expected = r"columns: jpg; recognised: cls, label"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "train-0.parquet"
        pq.write_table(pa.table({"jpg": pa.array([r[1] for r in rows], pa.binary()), "json": ["{}"] * 4}), path)
        expected = r"columns: jpg, json; recognised: cls, label"
    with pytest.raises(SourceError, match=expected) as info:
        sources.check.__wrapped__(f"{kind}:{path}")
    assert info.value.key == "label_column"


def test_shared_memory_too_small_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(loader.shutil, "disk_usage", lambda path: SimpleNamespace(free=64 * 2**20))
    with pytest.raises(loader.SharedMemoryTooSmall, match=r"64 MiB free but 15 loader workers x 2 prefetched chunks of 273 images at 224 px need about 2,351 MiB; lower \[run\] workers or prefetch"):
        loader.check_shared_memory(15, 2, 273, 224, shm=str(tmp_path))
    loader.check_shared_memory(1, 2, 8, 32, shm=str(tmp_path))


def test_workers_default_to_all_cores_but_one_on_a_gpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert loader.LoaderSettings.auto_workers(torch.device("cuda")) == 63


def test_folder_paths_are_one_compact_array(image_folder):
    ds = data.load(f"folder:{image_folder}", image_size=16)
    reader = ds.train.reader
    assert reader.blob.dtype == np.uint8 and reader.offsets.dtype == np.int64 and len(reader) == 48
    assert reader.path(0).endswith("circle/000.png") and ds.train.image(0).size == draw(0, 0).size


RECIPE = """
name = "shards"
[model]
name = "ViT-Mu/4"
[pretrain]
data = "{data}"
image_size = 16
steps = 2
batch_size = 8
warmup_steps = 1
eval_size = 6
[run]
workers = 0
"""


@pytest.mark.parametrize("data_source", ["wds:{root}/wds/*-train-*.tar", "parquet:{root}/pq/train-*.parquet"])
def test_a_recipe_pretrains_on_shards_through_the_cli(data_source, shard_sets, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from vitrun.cli import main

    monkeypatch.setenv("VITRUN_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(data=data_source.format(root=shard_sets)))
    before = _bytes_under(shard_sets)
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(tmp_path / "results")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "results").rglob("pretrain-*/stage.json")).read_text())
    assert record["metrics"]["train_images"] == 54 and 0 <= record["metrics"]["accuracy"] <= 1
    assert _bytes_under(shard_sets) == before and _bytes_under(tmp_path / "cache") < 8192, "no copy: the index only"


def test_gpu_decode_path_matches_the_cpu_views_and_degrades_without_cuda(shard_sets, tmp_path):
    """The GPU path's code run on the CPU (torchvision decodes there too): same crops and
    flips as the PIL path, pixels within decoder/resampler rounding."""
    from vitrun.data import gpu_decode

    ds = data.load(f"wds:{shard_sets}/wds/*-train-*.tar", image_size=16, cache_dir=tmp_path)
    items, reference = [], []
    for slot, kind in enumerate(("inception", "resize", "center") * 3):
        rng = lambda: np.random.default_rng([1, slot]) if kind != "center" else None  # noqa: E731
        items.append(gpu_decode.item(ds.train, slot, 24, kind, rng()))
        reference.append(transforms_view(ds.train, slot, 24, kind, rng()))
    out = gpu_decode.assemble(items, 24, torch.device("cpu"))
    assert out.shape == (9, 3, 24, 24) and out.dtype == torch.uint8
    assert (out.float() - torch.stack(reference).float()).abs().mean() < 8
    settings = loader.LoaderSettings(workers=0, decode="gpu")
    with pytest.warns(UserWarning, match="needs a CUDA device"):
        batch_at = loader.train_batches(ds.train, 16, 6, 1, seed=0, crop="inception", settings=settings)
    assert torch.equal(batch_at(0)[0], loader.train_batches(ds.train, 16, 6, 1, seed=0, crop="inception")(0)[0])


def transforms_view(images, i, size, kind, rng):
    from vitrun.data import transforms

    return transforms.view(images.image(i), size, kind, rng)


def test_bench_data_on_tar_shards_reports_per_core_and_projection(shard_sets, tmp_path):
    from click.testing import CliRunner

    from vitrun.cli import main

    args = ["bench", "data", f"wds:{shard_sets}/wds/*.tar", "--image-size", "16", "--batch-size", "8", "--steps", "2", "--workers", "1", "--project", "8", "--cache", str(tmp_path)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "60 training images" in text and "(1 workers)" in text
    assert "per decoding core (CPU time, workers included)" in text and "projected on 8 cores (7 workers)" in text


def test_index_built_by_a_process_pool_matches_one_process(tmp_path):
    paths = [str(p) for p in write_wds(tmp_path / "s", "train", 4, TRAIN[:20])]
    pooled = shards.index_tars(paths, "jpg", "cls", tmp_path / "a", "wds:test", workers=2)
    alone = shards.index_tars(paths, "jpg", "cls", tmp_path / "b", "wds:test", workers=1)
    for name in ("shard", "a", "b", "labels"):
        assert np.array_equal(getattr(pooled, name), getattr(alone, name))
    Path(paths[2]).write_bytes(Path(paths[2]).read_bytes()[:700])  # cut inside the first image
    with pytest.raises(SourceError, match=rf"{paths[2]}: truncated: member s\d+\.jpg at byte 512 runs past the end"):
        shards.index_tars(paths, "jpg", "cls", tmp_path / "c", "wds:test", workers=2)
