"""Real data sources named by a string, ``KIND:TARGET``: parse, check, open; and dev splits.

    hf:ID_OR_PATH[:CONFIG]   Hugging Face datasets: hub id or local path     (hf.py)
    wds:GLOB                 WebDataset tar shards, read in place            (sharded.py)
    parquet:GLOB             Parquet shards, read in place                   (sharded.py)
    arrow:DIR                a Dataset/DatasetDict.save_to_disk folder       (hf.py)
    torchvision:NAME         a torchvision.datasets class, e.g. CIFAR10      (tv.py)
    folder:PATH              a class-per-folder tree of image files          (folder.py)

A name without a colon is an embedded source (``fractal``, ``digits``, ``shapes``). Every
real source opens as a ``Dataset`` of ``LazyImageSet``s: train, test, and validation when
the source has one; a source without a test split gets a stratified ``test_fraction`` of
its training split (fixed seed: every run is scored on the same images).

``check`` is what ``vitrun validate`` (and so every ``vitrun recipe``) runs before anything
is written: local paths, splits and columns are checked by reading metadata only; a hub
dataset or torchvision download must be in the local cache or its host must answer within
a few seconds (never a download, never a hang).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from vitrun.data import hf, hub, sharded
from vitrun.data.imageset import Dataset
from vitrun.data.lazy import LazyImageSet
from vitrun.data.options import DEFAULT_EVAL_SIZE, DEFAULT_TEST_FRACTION, SPLIT_SEED, SourceError, SourceOptions
from vitrun.data.sampling import holdout_split

KINDS = {
    "hf": "Hugging Face datasets: hf:<hub id or local path>[:<config>]",
    "wds": "WebDataset tar shards: wds:<glob>, e.g. wds:'shards/train-*.tar'",
    "parquet": "local Parquet files: parquet:<glob>",
    "arrow": "a save_to_disk folder: arrow:<dir>",
    "torchvision": "a torchvision dataset: torchvision:<Name>, e.g. torchvision:CIFAR10",
    "folder": "a class-per-folder image tree: folder:<path>",
}
_DATASETS = frozenset({"hf", "parquet", "arrow", "wds"})
_REAL = frozenset(KINDS)
# Which kinds each option applies to; an option given to another kind is a recipe error.
OPTION_KINDS = {
    "config": frozenset({"hf"}),
    "image_column": _DATASETS,
    "label_column": _DATASETS,
    "root": frozenset({"torchvision"}),
    "download": frozenset({"torchvision"}),
    "train_split": _REAL,
    "test_split": _REAL,
    "test_fraction": _REAL,
    "eval_size": _REAL,
    "dev_fraction": _REAL | {"embedded"},
    "stream": frozenset({"hf"}),
}

# The paper's held-out share of the training split for picking the fine-tuning learning
# rate (App. B.1.1; vision_transformer's presets: 'train[:98%]' for CIFAR, '[:90%]' for
# Pets and Flowers, '[:99%]' for ImageNet), recognised by a word in the source string.
DEV_FRACTIONS = (("imagenet", 0.01), ("ilsvrc", 0.01), ("cifar", 0.02), ("pet", 0.10), ("flower", 0.10))
DEFAULT_DEV_FRACTION = 0.10  # anything else: small custom sets need a dev set big enough to rank learning rates


@dataclass(frozen=True)
class Source:
    kind: str  # a key of KINDS, or "embedded"
    target: str  # path, glob, hub id, class name; the name for embedded sources
    config: str | None = None  # hf only: the part after a second colon

    def __str__(self) -> str:
        if self.kind == "embedded":
            return self.target
        return f"{self.kind}:{self.target}" + (f":{self.config}" if self.config else "")


def parse(text: str) -> Source:
    """``KIND:TARGET`` (or a bare embedded name) -> Source; SourceError on an unknown kind."""
    kind, sep, target = text.partition(":")
    if not sep:
        return Source("embedded", text)
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f"did you mean '{close[0]}:'?" if close else "kinds: " + ", ".join(f"{k}:" for k in KINDS)
        raise SourceError("data", f"unknown data source kind {kind + ':'!r} in {text!r} ({hint})")
    if not target:
        raise SourceError("data", f"{text!r} names no dataset ({KINDS[kind]})")
    config = None
    if kind == "hf":
        head, colon, tail = target.rpartition(":")
        if colon and head and tail and "/" not in tail:  # a config name never has a slash; a path may have a colon
            target, config = head, tail
    return Source(kind, target, config)


def check_options(source: Source, options: SourceOptions) -> None:
    """Refuse options that mean nothing to this kind of source (a typo'd plan, not a no-op)."""
    for key in options.given():
        if source.kind not in OPTION_KINDS[key]:
            kinds = ", ".join(f"{k}:" for k in sorted(OPTION_KINDS[key] - {"embedded"}))
            raise SourceError(key, f"{source}: {key} does not apply to this source (only to {kinds})")
    if source.config and options.config and source.config != options.config:
        raise SourceError("config", f"{source}: config {options.config!r} contradicts the ':{source.config}' in data; give it once")
    for key in ("test_fraction", "dev_fraction"):
        value = getattr(options, key)
        if value is not None and not 0.0 < value < 1.0:
            raise SourceError(key, f"{source}: {key} must be between 0 and 1 (exclusive), got {value}")


@functools.lru_cache(maxsize=64)
def check(text: str, options: SourceOptions = SourceOptions(), cache_dir: str | None = None) -> None:
    """Raise SourceError if the real source ``text`` cannot be opened here (metadata only)."""
    source = parse(text)
    check_options(source, options)
    if source.kind == "folder":
        from vitrun.data import folder

        folder.layout(Path(source.target).expanduser(), options)
    elif source.kind == "torchvision":
        from vitrun.data import tv

        tv.check(source.target, options, cache_dir)
    elif source.kind in sharded.SHARD_KINDS:
        sharded.check(source.kind, sharded.local_files(source.kind, source.target), options, str(source))
    elif source.kind == "arrow" or hf.is_saved(Path(source.target).expanduser()):
        _check_arrow(source, options)
    elif source.kind == "hf":
        _check_hf(source, options)


def _check_hf(source: Source, options: SourceOptions) -> None:
    target = source.target
    if Path(target).expanduser().exists():
        return  # a local folder of data files: load_dataset reads it at run time
    if target.startswith(("/", ".", "~")):
        raise SourceError("data", f"{source}: no such path")
    hub.check(str(source), target, _with_config(source, options))


def open_dataset(text: str, options: SourceOptions = SourceOptions(), cache_dir: str | Path | None = None) -> Dataset:
    """The real source ``text`` as a Dataset of LazyImageSets (labels read, no pixel decoded)."""
    source = parse(text)
    check_options(source, options)
    if source.kind == "folder":
        train, test, validation = _open_folder(source, options)
    elif source.kind == "torchvision":
        from vitrun.data import tv

        train = tv.image_set(tv.open_split(source.target, options, "train", cache_dir), source.target)
        test_split = tv.open_split(source.target, options, "test", cache_dir)
        test = tv.image_set(test_split, source.target) if test_split is not None else None
        validation = None
    elif source.kind in sharded.SHARD_KINDS:
        files = sharded.local_files(source.kind, source.target)
        train, test, validation = sharded.open_splits(source.kind, files, options, cache_dir, str(source))
    else:
        train, test, validation = _open_hf(source, options, cache_dir)
    if test is None:
        train, test = _carve_test(train, options)
    if test.classes != train.classes:
        test = LazyImageSet(test.reader, test.rows, test.labels, train.classes)
    return Dataset(str(source), train, test, validation)


def open_stream(text: str, options: SourceOptions, classes: int | None, cache_dir=None) -> Dataset:
    """An ``hf:`` source read as a stream (``stream = true``; see ``streaming.py``)."""
    from vitrun.data import streaming

    source = parse(text)
    check_options(source, options)
    return streaming.open_dataset(str(source), source.target, _with_config(source, options), classes, cache_dir)


def dev_fraction(text: str, options: SourceOptions = SourceOptions()) -> float:
    """The share of the training split held out to pick learning rates: the option, else the
    paper's share for ImageNet / CIFAR / Pets / Flowers (by name), else DEFAULT_DEV_FRACTION."""
    if options.dev_fraction is not None:
        return options.dev_fraction
    lowered = text.lower()
    return next((f for word, f in DEV_FRACTIONS if word in lowered), DEFAULT_DEV_FRACTION)


def dev_split(images, fraction: float, seed: int):
    """(train, dev): a stratified held-out ``fraction`` of ``images``, deterministic from ``seed``.

    Works on ImageSet and LazyImageSet alike (labels only). The paper picks the fine-tuning
    learning rate on ``dev`` after training on ``train``, then retrains on all of ``images``.
    """
    train_idx, dev_idx = holdout_split(images.labels, fraction, seed)
    return images.subset(train_idx), images.subset(dev_idx)


# -- per kind ----------------------------------------------------------------------------

def _carve_test(train: LazyImageSet, options: SourceOptions) -> tuple[LazyImageSet, LazyImageSet]:
    """A held-out test set: ``eval_size`` images if given, else ``test_fraction`` of train, at most
    DEFAULT_EVAL_SIZE images (big_vision holds out 25,600-50,000 images of ImageNet-21k, not 20%)."""
    if options.eval_size is not None:
        if options.eval_size >= len(train):
            raise SourceError("eval_size", f"eval_size {options.eval_size} leaves no training images (the training split has {len(train)})")
        fraction = options.eval_size / len(train)
    else:
        fraction = min(options.test_fraction or DEFAULT_TEST_FRACTION, DEFAULT_EVAL_SIZE / len(train))
    keep, held = holdout_split(train.labels, fraction, SPLIT_SEED)
    return train.subset(keep), train.subset(held)


def _open_folder(source: Source, options: SourceOptions):
    from vitrun.data import folder

    splits = folder.layout(Path(source.target).expanduser(), options)
    classes = folder.classes(splits["train"])
    sets = {name: folder.images(tree, classes, str(source)) for name, tree in splits.items()}
    return sets["train"], sets.get("test"), sets.get("validation")


def _open_hf(source: Source, options: SourceOptions, cache_dir):
    config = source.config or options.config
    on_hub = _hub_shards(source.target, config)
    if on_hub:  # tars or Parquet on the hub: fetched into the HF cache and read there, no Arrow copy
        kind, names = on_hub
        files = sharded.split_files(hub.fetch(source.target, names), str(source))
        return sharded.open_splits(kind, files, options, cache_dir, str(source))
    splits = hf.open_splits(source.kind, source.target, _with_config(source, options))
    train_name = options.train_split or "train"
    if train_name not in splits:
        hf.pick_splits(splits, options, str(source))  # raises, naming the splits
    train_ds = splits[train_name]
    image_col, label_col = hf.columns(train_ds.features, options, str(source))
    unlabelled = {name for name, ds in splits.items() if name != train_name and _all_negative(hf.labels(ds, label_col))}
    train_name, test_name = hf.pick_splits(splits, options, str(source), unlabelled)
    classes = hf.class_names(train_ds.features, label_col, hf.labels(train_ds, label_col))

    def image_set(name):
        return hf.image_set(splits[name], image_col, label_col, classes, str(source))

    validation = "validation" if "validation" in splits and "validation" not in (train_name, test_name) and "validation" not in unlabelled else None
    return image_set(train_name), image_set(test_name) if test_name else None, image_set(validation) if validation else None


def _all_negative(values) -> bool:
    return values.dtype.kind in "iu" and len(values) > 0 and values.max() < 0


def _hub_shards(target: str, config: str | None):
    """(kind, file names) when ``target`` is a hub id whose files are tars or Parquet; None when
    it is a local path, its files are something else, or the hub cannot be listed (then
    ``load_dataset`` reads its own cache)."""
    if Path(target).expanduser().exists() or target.startswith(("/", ".", "~")):
        return None
    try:
        return hub.shard_files(target, config)
    except Exception:  # offline, proxy, gated: load_dataset gives its own message or reads its cache
        return None


def _with_config(source: Source, options: SourceOptions) -> SourceOptions:
    from dataclasses import replace

    return replace(options, config=source.config or options.config)


def _check_arrow(source: Source, options: SourceOptions) -> None:
    path = Path(source.target).expanduser()
    if not path.exists():
        raise SourceError("data", f"{source}: no such folder (give the folder that save_to_disk wrote)")
    splits = hf.open_splits("arrow", str(path), options)  # memory-maps; reads no image
    train, _ = hf.pick_splits(splits, options, str(source))
    hf.columns(splits[train].features, options, str(source))


