"""Hugging Face ``datasets`` sources: ``hf:ID_OR_PATH[:CONFIG]``, ``arrow:DIR``; column detection.

* ``hf:`` a hub id (``hf:cifar10``, ``hf:timm/oxford-iiit-pet``), downloaded into the HF cache
  ($HF_HOME) on first use, or a local path ``load_dataset`` understands (a folder of data
  files, an ``imagefolder`` tree, a ``save_to_disk`` folder); a hub repo whose files are
  tars or Parquet is read in place instead (``sharded.py``);
* ``arrow:`` the folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.

Columns: the image column is the first ``Image`` feature (else "image"/"img"), the label
column the one ``ClassLabel`` (else the first of "cls", "label", "labels", "fine_label", "target",
"class"; missing or ambiguous is an error naming the columns found);
``image_column`` / ``label_column`` name them. Labels are read from the Arrow column alone and
class names from the ``ClassLabel`` (or the sorted distinct values of a string column).
Images stay encoded in the memory-mapped Arrow files until a worker decodes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitrun.data.lazy import HFReader, LazyImageSet
from vitrun.data.options import SourceError, SourceOptions
from vitrun.data.shards import LABEL_KEYS, pick_label

IMAGE_NAMES = ("image", "img", "jpg", "png", "pixel_values")
LABEL_NAMES = LABEL_KEYS  # "cls" (WebDataset's name, timm's hub sets), "label", "labels", "fine_label", …
TEST_NAMES = ("test", "testing", "validation", "valid", "val")
SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test", "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation"}


def open_splits(kind: str, target: str, options: SourceOptions) -> dict[str, Any]:
    """Split name -> ``datasets.Dataset`` for one source (nothing decoded)."""
    import datasets

    datasets.disable_progress_bars()  # our own progress display owns the terminal
    source = f"{kind}:{target}"
    if kind == "arrow":
        return _from_disk(Path(target), source)
    path = Path(target)
    if is_saved(path):
        return _from_disk(path, source)
    loaded = datasets.load_dataset(target, options.config)
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def is_saved(path: Path) -> bool:
    """Whether ``path`` is a save_to_disk folder (hf:PATH accepts those too)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _from_disk(path: Path, source: str) -> dict[str, Any]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise SourceError("data", f"{source}: not a save_to_disk folder (no dataset_dict.json or state.json in {path})") from None
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def pick_splits(splits, options: SourceOptions, source: str, unlabelled=frozenset()) -> tuple[str, str | None]:
    """(train split name, test split name or None when the test set must be carved from train).

    unlabelled: splits whose labels are all negative (ILSVRC/imagenet-1k's test: every label
    is -1): never picked as the test split, and refused when named.
    """
    names = ", ".join(splits)
    train = options.train_split or "train"
    if train not in splits:
        raise SourceError("train_split", f"{source}: no split {train!r} (splits: {names})")
    if options.test_split:
        if options.test_split not in splits:
            raise SourceError("test_split", f"{source}: no split {options.test_split!r} (splits: {names})")
        if options.test_split in unlabelled:
            raise SourceError("test_split", f"{source}: split {options.test_split!r} has no labels (all negative); test on another split (splits: {names})")
        return train, options.test_split
    return train, next((s for s in TEST_NAMES if s in splits and s != train and s not in unlabelled), None)


def columns(features, options: SourceOptions, source: str) -> tuple[str, str]:
    """(image column, label column) given a split's ``datasets.Features``, detected or as the options name them."""
    import datasets

    listed = ", ".join(features)

    def find(key: str, wanted: str | None, feature_type, names) -> str:
        if wanted:
            if wanted not in features:
                raise SourceError(key, f"{source}: no column {wanted!r} (columns: {listed})")
            return wanted
        typed = [c for c, f in features.items() if isinstance(f, feature_type)]
        named = [c for c in names if c in features]
        if typed or named:
            return (typed or named)[0]
        what = "image" if key == "image_column" else "label"
        raise SourceError(key, f"{source}: cannot tell which column holds the {what}s (columns: {listed}); set {key}")

    image = find("image_column", options.image_column, datasets.Image, IMAGE_NAMES)
    feature = features[image]
    encoded = isinstance(feature, datasets.Image) or (isinstance(feature, datasets.Value) and "binary" in feature.dtype) or (isinstance(feature, dict) and "bytes" in feature)
    if not encoded:
        raise SourceError("image_column", f"{source}: column {image!r} holds {_describe(feature)}, not images (columns: {listed}); set image_column")
    if options.label_column:
        return image, find("label_column", options.label_column, datasets.ClassLabel, LABEL_NAMES)
    typed = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    return image, pick_label(typed, [c for c in LABEL_NAMES if c in features], list(features), source)


def _describe(feature) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{dtype} values" if isinstance(dtype, str) else type(feature).__name__


def class_names(features, label_column: str, values: np.ndarray) -> tuple[str, ...]:
    """Names of labels 0..K-1: the ClassLabel's names, else the distinct values as text."""
    import datasets

    feature = features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    if values.dtype.kind in "iu":
        return tuple(str(i) for i in range(int(values.max()) + 1))
    return tuple(sorted({str(v) for v in values}))


def labels(dataset, label_column: str) -> np.ndarray:
    """The label column as a numpy array, read from Arrow without touching the images."""
    return np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])


def image_set(dataset, image_column: str, label_column: str, classes: tuple[str, ...], source: str) -> LazyImageSet:
    import datasets

    values = labels(dataset, label_column)
    if values.dtype.kind in "iu":
        if len(values) and (values.min() < 0 or values.max() >= len(classes)):
            raise SourceError("label_column", f"{source}: labels in {label_column!r} run {values.min()}..{values.max()}, outside 0..{len(classes) - 1}")
        ids = values.astype(np.int64)
    elif values.dtype.kind in "OUS":
        lookup = {name: i for i, name in enumerate(classes)}
        unknown = sorted({str(v) for v in values} - set(lookup))
        if unknown:
            raise SourceError("label_column", f"{source}: labels not in the training split: {', '.join(unknown[:5])}")
        ids = np.array([lookup[str(v)] for v in values], dtype=np.int64)
    else:
        raise SourceError("label_column", f"{source}: column {label_column!r} holds {values.dtype} values, not class labels (set label_column)")
    encoded = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return LazyImageSet.of(HFReader(encoded, image_column), ids, classes)
