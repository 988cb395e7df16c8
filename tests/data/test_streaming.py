"""`stream = true`: hf: datasets read with datasets' streaming mode, on Parquet files built here
in the hub's layout (data/train-*.parquet, data/test-*.parquet)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from vitrun import data
from vitrun.cli import main
from vitrun.data import streaming
from vitrun.data.options import SourceError, SourceOptions
from vitrun.data.streaming import StreamBatches, StreamImageSet

from tests.data.conftest import CLASSES, draw

STREAM = SourceOptions(stream=True)


@pytest.fixture(autouse=True)
def _no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s whenever a shuffled stream's reader threads stop (a pyarrow
    workaround, once per epoch in a real run): not what these tests measure."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def _load(target, tmp_path, options=STREAM, **kw):
    return data.load(f"hf:{target}", image_size=16, options=options, cache_dir=str(tmp_path / "cache"), **kw)


def _digests(images: StreamImageSet, seed=0, rank=0, world=1) -> list[str]:
    """One epoch of a stream as image digests, in the order training reads them."""
    stream = images.stream(seed, rank, world)
    stream.set_epoch(0)
    return [hashlib.sha1(streaming._encoded(e[images.split.image_column])).hexdigest() for e in stream]


def test_stream_opens_train_as_a_stream_and_caches_a_bounded_test_set(hf_parquet, tmp_path, monkeypatch):
    ds = _load(hf_parquet.parent, tmp_path)
    assert isinstance(ds.train, StreamImageSet) and ds.train.classes == CLASSES
    assert len(ds.test) == 18 and ds.test.labels[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.test.image(0).size == draw(0, 100).size  # decoded from the cached Parquet file
    assert len(_digests(ds.train)) == 48
    # the test set is read from the cache afterwards: the stream is never opened for it again
    monkeypatch.setattr(streaming.StreamSplit, "open", lambda self: pytest.fail("test split re-read"))
    again = _load(hf_parquet.parent, tmp_path)
    assert again.test.labels.tolist() == ds.test.labels.tolist()


def test_eval_size_bounds_the_test_set_and_classes_filters(hf_parquet, tmp_path):
    ds = _load(hf_parquet.parent, tmp_path, SourceOptions(stream=True, eval_size=5))
    assert len(ds.test) == 5
    two = _load(hf_parquet.parent, tmp_path, classes=2)
    assert two.train.classes == CLASSES[:2] and set(two.test.labels.tolist()) == {0, 1}
    assert len(_digests(two.train)) == 32


def test_without_a_test_split_the_head_is_held_out_and_skipped(hf_parquet, tmp_path):
    ds = _load(hf_parquet.parent, tmp_path, SourceOptions(stream=True, train_split="test", eval_size=6))
    held = {hashlib.sha1(ds.test.encoded(i)).hexdigest() for i in range(len(ds.test))}
    trained = _digests(ds.train)
    assert len(held) == 6 and len(trained) == 12 and not held & set(trained)


def test_sizes_are_nested_prefixes_of_the_stream(hf_parquet, tmp_path):
    train = _load(hf_parquet.parent, tmp_path).train
    small, large = set(_digests(train.first(10))), set(_digests(train.first(30)))
    assert len(small) == 10 and len(large) == 30 and small < large


def test_batches_resume_exactly_and_ranks_split_the_stream(hf_parquet, tmp_path):
    train = _load(hf_parquet.parent, tmp_path).train

    def batches(images, steps, start=0, **kw):
        batch_at = StreamBatches(images, 8, 8, seed=3, crop="inception", device=torch.device("cpu"), **kw)
        return [batch_at(step) for step in range(start, steps)]

    for images in (train, train.first(20)):  # unknown length (replayed), known length (epochs skipped)
        straight = batches(images, 9)  # 72 examples: past the first epoch
        resumed = batches(images, 9, start=5)
        for (x, y), (rx, ry) in zip(straight[5:], resumed):
            assert torch.equal(x, rx) and torch.equal(y, ry)
    epoch = [set(_digests(train, rank=r, world=2)) for r in (0, 1)]
    assert len(epoch[0]) == len(epoch[1]) == 24 and not epoch[0] & epoch[1]
    half = batches(train, 2, world=2, rank=1)
    assert half[0][0].shape == (4, 3, 8, 8)  # this rank's part of the global batch of 8
    with pytest.raises(ValueError, match="does not split over 3"):
        StreamBatches(train, 8, 8, 0, "inception", torch.device("cpu"), world=3)


def test_stream_errors_name_the_key(hf_parquet, tmp_path):
    with pytest.raises(SourceError, match="per_class draws images by label"):
        _load(hf_parquet.parent, tmp_path, per_class=2)
    with pytest.raises(SourceError) as info:
        data.check(f"parquet:{hf_parquet}/*.parquet", SourceOptions(stream=True))
    assert info.value.key == "stream" and "only to hf:" in str(info.value)
    with pytest.raises(SourceError, match="cannot open it as a stream"):
        _load(tmp_path / "nothing-here", tmp_path)


def test_recipe_pretrains_on_a_stream(tmp_path, hf_parquet):
    recipe = tmp_path / "stream.toml"
    recipe.write_text(f"""
name = "stream"
[model]
name = "ViT-Mu/4"
[pretrain]
data = "hf:{hf_parquet.parent}"
stream = true
size = 24
image_size = 16
steps = 4
batch_size = 8
warmup_steps = 1
[[transfer]]
data = "digits"
stream = true
""")
    bad = CliRunner().invoke(main, ["validate", str(recipe)])
    assert bad.exit_code == 2 and "stream = true is for [pretrain] only" in bad.output
    recipe.write_text(recipe.read_text().replace('[[transfer]]\ndata = "digits"\nstream = true\n', ""))
    results = tmp_path / "results"
    run = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(results), "--cache", str(tmp_path / "cache")], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    (record,) = [json.loads(p.read_text()) for p in (results / "stream").glob("*/stage.json")]
    assert record["status"] == "done" and record["config"]["pretrain"]["stream"] is True
    assert record["metrics"]["train_images"] == 24 and record["metrics"]["num_classes"] == 3
    assert 0 <= record["metrics"]["accuracy"] <= 1
