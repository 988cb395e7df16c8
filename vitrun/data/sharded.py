"""Sources made of shards, opened without a conversion copy: ``wds:GLOB``, ``parquet:GLOB``, and
``hf:ID`` when the hub repo's files are tars or Parquet.

* ``wds:GLOB`` WebDataset tar shards (``jpg`` + ``cls`` members, as ``timm/imagenet-22k-wds``);
* ``parquet:GLOB`` Parquet files (an image column of bytes or the hub's {bytes, path} struct);
* ``hf:ID`` whose files are ``*.tar`` / ``*.parquet``: the files are fetched into the Hugging
  Face cache (``hub.fetch``: parallel, resumable, shared with other tools) and read there by
  the same readers. Other hub repos go through ``datasets.load_dataset`` (hf.py).

A shard goes to the split its path names (``train``, ``test``, ``validation``/``val``; e.g.
``imagenet22k-train-0012.tar``, ``data/validation-00000-of-00004.parquet``); a path naming
none is training data. A split whose labels are all negative (an unlabelled test set, as
``ILSVRC/imagenet-1k``'s, where every label is -1) is never chosen to test on.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np

from vitrun.data import hf, shards
from vitrun.data.lazy import LazyImageSet
from vitrun.data.options import SourceError, SourceOptions

SHARD_KINDS = {"wds": ".tar", "parquet": ".parquet"}


def split_files(files: list[str], source: str) -> dict[str, list[str]]:
    """Split name -> sorted files; the split from the words of each file's name and folder."""
    out: dict[str, list[str]] = {}
    for f in sorted(files):
        # The file's own name first (imagenet22k-train-0012.tar), then its folder's (data/test/0.parquet).
        words = re.split(r"[^a-z]+", Path(f).name.lower()) + re.split(r"[^a-z]+", Path(f).parent.name.lower())
        split = next((hf.SPLIT_WORDS[w] for w in words if w in hf.SPLIT_WORDS), "train")
        out.setdefault(split, []).append(f)
    if "train" not in out:  # only test/validation files: nothing to train on
        raise SourceError("data", f"{source}: no training files among {len(files)} (name them train-*, e.g. train-00000.tar)")
    return out


def local_files(kind: str, pattern: str) -> dict[str, list[str]]:
    """The files of ``KIND:GLOB`` by split (``**`` recurses)."""
    source = f"{kind}:{pattern}"
    files = [f for f in glob.glob(str(Path(pattern).expanduser()), recursive=True) if Path(f).is_file()]
    if not files:
        raise SourceError("data", f"{source}: no file matches (check the path; quote a glob such as 'shards/*{SHARD_KINDS[kind]}')")
    return split_files(files, source)


# -- opening -----------------------------------------------------------------------------

def open_splits(kind: str, files: dict[str, list[str]], options: SourceOptions, cache_dir, source: str):
    """(train, test or None, validation or None) LazyImageSets over the shards, nothing decoded."""
    columns = _columns(kind, files["train"][0], options, source)
    indices = {name: _index(kind, paths, columns, cache_dir, source) for name, paths in files.items()}
    unlabelled = {name for name, ix in indices.items() if ix.labels.dtype.kind in "iu" and len(ix) and ix.labels.max() < 0}
    train_name, test_name = hf.pick_splits(files, options, source, unlabelled)
    classes = _classes(kind, files[train_name][0], columns[1], indices[train_name].labels)

    def image_set(name: str) -> LazyImageSet:
        ix = indices[name]
        if kind == "wds":
            reader = shards.TarReader(ix.shards, ix.shard, ix.a, ix.b)
        else:
            reader = shards.ParquetReader(ix.shards, columns[0], ix.shard, ix.a, ix.b)
        return LazyImageSet.of(reader, _label_ids(ix.labels, classes, columns[1], f"{source} ({name})"), classes)

    validation = "validation" if "validation" in files and "validation" not in (train_name, test_name) and "validation" not in unlabelled else None
    return image_set(train_name), image_set(test_name) if test_name else None, image_set(validation) if validation else None


def check(kind: str, files: dict[str, list[str]], options: SourceOptions, source: str) -> None:
    """What opening will need, from metadata: columns (first samples / the schema) and splits."""
    columns = _columns(kind, files["train"][0], options, source)
    unlabelled = set()
    if kind == "parquet":
        for name, paths in files.items():
            span = shards.parquet_label_range(paths[0], columns[1])
            if name != "train" and span is not None and span[1] < 0:
                unlabelled.add(name)
    hf.pick_splits(files, options, source, unlabelled)


def _columns(kind: str, first: str, options: SourceOptions, source: str) -> tuple[str, str]:
    if kind == "wds":
        return shards.tar_columns(first, options.image_column, options.label_column, source)
    return hf.columns(_parquet_features(first, source), options, source)


def _parquet_features(path: str, source: str):
    import datasets
    import pyarrow.parquet as pq

    try:
        return datasets.Features.from_arrow_schema(pq.read_schema(path))
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise SourceError("data", f"{source}: {path} is not a readable Parquet file ({err})") from None


def _index(kind: str, paths: list[str], columns: tuple[str, str], cache_dir, source: str) -> shards.ShardIndex:
    if kind == "wds":
        return shards.index_tars(paths, columns[0], columns[1], cache_dir, source)
    return shards.index_parquet(paths, columns[1], cache_dir)


def _classes(kind: str, first: str, label: str, values: np.ndarray) -> tuple[str, ...]:
    """ClassLabel names when the Parquet schema has them; else 0..max as text, or the sorted texts."""
    if kind == "parquet":
        import datasets

        feature = _parquet_features(first, first)[label]
        if isinstance(feature, datasets.ClassLabel):
            return tuple(feature.names)
    if values.dtype.kind in "iu":
        return tuple(str(i) for i in range(int(values.max()) + 1 if len(values) else 0))
    return tuple(sorted(set(values.tolist())))


def _label_ids(values: np.ndarray, classes: tuple[str, ...], label: str, source: str) -> np.ndarray:
    if values.dtype.kind in "iu":
        if len(values) and (values.min() < 0 or values.max() >= len(classes)):
            raise SourceError("label_column", f"{source}: labels in {label!r} run {values.min()}..{values.max()}, outside 0..{len(classes) - 1}")
        return values
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(values.tolist()) - set(lookup))
    if unknown:
        raise SourceError("label_column", f"{source}: labels not in the training split: {', '.join(unknown[:5])}")
    return np.array([lookup[v] for v in values.tolist()], dtype=np.int64)
