"""``stream = true``: an ``hf:`` dataset read as a stream, for hub datasets without random access.

Most sources are read with random access (tars, Parquet, Arrow: ``sharded.py``, ``hf.py``), so
a batch is a pure function of (seed, step) and every run guarantees exact resume on any number
of GPUs and nested ``size`` subsets. A hub repo of loose files or a loading script has no such
access short of ``load_dataset`` writing a full Arrow copy (for ImageNet-21k, a day and a
terabyte before the first step). ``stream = true`` in ``[pretrain]`` reads it instead with
``datasets.load_dataset(..., streaming=True)``; what that keeps and what it gives up:

* **Order.** The stream (its file order, classes past ``classes`` filtered out) is shuffled by
  ``IterableDataset.shuffle(seed, buffer_size)`` and reshuffled each epoch (``set_epoch``).
  Several processes split it with ``datasets.distributed.split_dataset_by_node``: each rank
  reads its own part and makes its slice of the global batch. So the images of a step depend on
  the number of processes (random-access sources do not).
* **Resume** is exact for the same number of processes: a resumed run replays the stream up to
  its step, reading (not decoding) the examples before it; with ``size`` set, whole epochs are
  skipped and only the current one is replayed.
* **Nested subsets.** ``size = N`` is the first N examples of the stream (after the held-out
  test examples), before shuffling: subsets of growing size are nested. They are not
  class-balanced (streams have no label index); say so beside results that compare sizes.
* **Evaluation.** The test split (else the first ``eval_size`` examples of the training stream,
  which training then skips) is read once, at most ``eval_size`` (default 10,000) examples, into
  one Parquet file in the vitrun cache, and read from there with random access afterwards.

Transfer datasets are small and need labelled random access (dev splits, k-shot draws):
``stream`` applies to ``[pretrain]`` only.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from vitrun.data import augment, hf, pinned, transforms
from vitrun.data.imageset import Dataset
from vitrun.data.lazy import LazyImageSet
from vitrun.data.options import SourceError, SourceOptions

DEFAULT_STREAM_EVAL = 10_000  # test examples kept from a stream: bounded memory and one pass at start
SHUFFLE_BUFFER = 10_000  # examples in the shuffle buffer (datasets' default is 1,000)
_GROUP = 256  # rows per row group of the cached test file: a batch reads few groups
_VIEW_TAG = 0x5713  # salts per-image augmentation streams apart from the random-access loader's


@dataclass(frozen=True)
class StreamSplit:
    """How to open one split of a streamed source; picklable, holds no open stream."""

    target: str
    config: str | None
    split: str
    image_column: str
    label_column: str
    classes: int | None  # keep labels < classes (the recipe's `classes`), None: all

    def open(self):
        """The split as a ``datasets.IterableDataset`` of {image column, label column}, in file order."""
        import datasets

        datasets.disable_progress_bars()
        stream = datasets.load_dataset(self.target, self.config, split=self.split, streaming=True)
        stream = stream.select_columns([self.image_column, self.label_column])
        if isinstance((stream.features or {}).get(self.image_column), datasets.Image):
            stream = stream.cast_column(self.image_column, datasets.Image(decode=False))  # bytes: we decode
        if self.classes is not None:
            limit, label = self.classes, self.label_column
            stream = stream.filter(lambda example: example[label] < limit)
        return stream


@dataclass(frozen=True, eq=False)
class StreamImageSet:
    """The training split of a streamed source: examples in stream order, no random access.

    skip: examples at the head held out as the test set; size: the first N after those (None: all).
    """

    split: StreamSplit
    classes: tuple[str, ...]
    skip: int = 0
    size: int | None = None

    def first(self, n: int) -> "StreamImageSet":
        """The first ``n`` examples (nested: ``first(a)`` is a prefix of ``first(b)`` for a < b)."""
        return replace(self, size=n if self.size is None else min(n, self.size))

    def stream(self, seed: int, rank: int = 0, world: int = 1, buffer: int = SHUFFLE_BUFFER):
        """The examples rank ``rank`` of ``world`` trains on, shuffled (reshuffled by ``set_epoch``)."""
        stream = self.split.open()
        if self.skip:
            stream = stream.skip(self.skip)
        if self.size is not None:
            stream = stream.take(self.size)
        stream = stream.shuffle(seed=seed, buffer_size=buffer)
        if world > 1:
            from datasets.distributed import split_dataset_by_node

            stream = split_dataset_by_node(stream, rank=rank, world_size=world)
        return stream


def open_dataset(source: str, target: str, options: SourceOptions, classes: int | None, cache_dir) -> Dataset:
    """``hf:`` source ``source`` (hub id or local path ``target``) as a stream: train a
    ``StreamImageSet``, test a bounded ``LazyImageSet`` cached as Parquet (see the module doc)."""
    import datasets

    try:
        splits = list(datasets.get_dataset_split_names(target, options.config))
    except Exception as err:  # offline, gated, no such repo: one line, the cause kept
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError("data", f"{source}: cannot open it as a stream ({text})") from None
    train_name, test_name = hf.pick_splits(dict.fromkeys(splits), options, source)
    head = datasets.load_dataset(target, options.config, split=train_name, streaming=True)
    features = head.features or _peek_features(head)
    image_col, label_col = hf.columns(features, options, source)
    names = _class_names(features, label_col, classes, source)
    limit = classes if classes is not None and classes < len(names) else None
    names = names[:limit] if limit else names

    def split(name: str) -> StreamSplit:
        return StreamSplit(target, options.config, name, image_col, label_col, limit)

    eval_size = options.eval_size or DEFAULT_STREAM_EVAL
    train = StreamImageSet(split(train_name), names)
    if test_name:
        test = _cached_test(split(test_name), eval_size, names, cache_dir, source)
    else:  # no test split: the head of the training stream is held out, and skipped by training
        test = _cached_test(split(train_name), eval_size, names, cache_dir, source)
        train = replace(train, skip=len(test))
    return Dataset(source, train, test)


def _peek_features(stream):
    """Features of a stream whose builder does not declare them: inferred from its first example."""
    import datasets

    example = next(iter(stream), None)
    if example is None:
        raise SourceError("data", "the stream's training split is empty")
    return datasets.Features({k: datasets.Image() if isinstance(v, (dict, Image.Image, bytes)) else datasets.Value("int64" if isinstance(v, int) else "string") for k, v in example.items()})


def _class_names(features, label_col: str, classes: int | None, source: str) -> tuple[str, ...]:
    """Class names from the label column's ClassLabel; integer labels without one need ``classes``
    (a stream cannot be scanned for its largest label before training)."""
    import datasets

    feature = features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")) and classes:
        return tuple(str(i) for i in range(classes))
    raise SourceError("label_column", f"{source}: stream = true needs class ids it can count before reading: column {label_col!r} holds {getattr(feature, 'dtype', type(feature).__name__)} values without a ClassLabel; set classes = N (labels 0..N-1), or drop stream")


def _cached_test(split: StreamSplit, n: int, classes: tuple[str, ...], cache_dir, source: str) -> LazyImageSet:
    """The first ``n`` examples of ``split`` as a LazyImageSet over one Parquet file in the cache
    (read from the stream once; later runs, and every rank, read the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vitrun.data.cache import cache_root
    from vitrun.data.shards import ParquetReader
    from vitrun.durable import write_atomic

    key = hashlib.sha256(json.dumps([split.target, split.config, split.split, split.image_column, split.label_column, split.classes, n]).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "streams" / f"test-{key}.parquet"
    if not path.is_file():
        images, labels = [], []
        for example in itertools.islice(split.open(), n):
            images.append(_encoded(example[split.image_column]))
            labels.append(int(example[split.label_column]))
        if not images:
            raise SourceError("test_split", f"{source}: split {split.split!r} is empty; name another with test_split")
        table = pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())})
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=_GROUP)
        write_atomic(path, sink.getvalue().to_pybytes())  # never a half-written cache file
    labels = pq.read_table(path, columns=["label"]).column("label").to_numpy().astype(np.int64)
    rows = np.arange(len(labels), dtype=np.int64)
    reader = ParquetReader((str(path),), "image", np.zeros(len(rows), np.int32), rows // _GROUP, rows % _GROUP)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise SourceError("label_column", f"{source}: labels in split {split.split!r} run {labels.min()}..{labels.max()}, outside 0..{len(classes) - 1}")
    return LazyImageSet.of(reader, labels, classes)


def _encoded(value: Any) -> bytes:
    """An image cell as file bytes: {"bytes", "path"} (Image(decode=False)), raw bytes, or a PIL image."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        with open(value["path"], "rb") as f:
            return f.read()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Image.Image):
        out = io.BytesIO()
        value.save(out, format="PNG")
        return out.getvalue()
    raise TypeError(f"not an image cell: {type(value).__name__}")


class StreamBatches:
    """``batch_at(step)`` over a stream: this rank's slice of the global batch of ``step``.

    Batches are read in order; asking for another step than the next (a resume) reopens the
    stream and replays it up to that step, so the batch of a step is the same as in an
    uninterrupted run with the same number of processes. Views are drawn from (seed, step,
    slot) as in the random-access loader; images are decoded on ``threads`` threads (PIL
    releases the GIL while decoding and resizing).
    """

    def __init__(self, images: StreamImageSet, image_size: int, batch_size: int, seed: int, crop: str, device: torch.device, threads: int = 1, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch {batch_size} does not split over {world} processes")
        self.images, self.size, self.seed, self.crop, self.device = images, image_size, seed, crop, device
        self.per_rank, self.rank, self.world = batch_size // world, rank, world
        self.pool = ThreadPoolExecutor(max(1, threads)) if threads > 1 else None
        self._examples: Iterator | None = None
        self._next: int | None = None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step != self._next:
            self._examples = self._from(step * self.per_rank)
        examples = list(itertools.islice(self._examples, self.per_rank))
        self._next = step + 1
        first = self.rank * self.per_rank  # slots are global: the same view for an image whatever the split

        def view(slot_example):
            slot, example = slot_example
            rng = np.random.default_rng([_VIEW_TAG, self.seed, step, first + slot])
            image = Image.open(io.BytesIO(_encoded(example[self.images.split.image_column])))
            return transforms.view(image, self.size, self.crop, rng)

        views = list(self.pool.map(view, enumerate(examples)) if self.pool else map(view, enumerate(examples)))
        labels = torch.tensor([int(e[self.images.split.label_column]) for e in examples], dtype=torch.int64)
        return augment.to_float(pinned.stack(views, self.device)), labels

    def _from(self, position: int) -> Iterator[dict]:
        """Examples of this rank from ``position`` (counted over epochs) on, endlessly."""
        stream = self.images.stream(self.seed, self.rank, self.world)
        epoch = 0
        if self.images.size is not None and self.world == 1:  # epochs of known length: skip whole ones
            epoch, position = divmod(position, self.images.size)
        return itertools.islice(_epochs(stream, epoch), position, None)


def _epochs(stream, first: int) -> Iterator[dict]:
    """The stream's examples, epoch after epoch (each reshuffled), from epoch ``first`` on."""
    for epoch in itertools.count(first):
        stream.set_epoch(epoch)
        empty = True
        for example in stream:
            empty = False
            yield example
        if empty:
            raise SourceError("data", "the training stream is empty (check train_split, classes and size)")


def train_batches(images: StreamImageSet, image_size: int, batch_size: int, seed: int, crop: str, device: torch.device, threads: int, part: tuple[int, int] = (0, 1)) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``batch_at(step)`` for the training loop over a stream; ``part`` (rank, world): this rank's
    part of each global batch, read from its own part of the stream."""
    rank, world = part
    return StreamBatches(images, image_size, batch_size, seed, crop, device, threads, rank, world)
