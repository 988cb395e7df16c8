"""``torchvision:NAME``: a dataset class of ``torchvision.datasets`` (CIFAR10, OxfordIIITPet …).

Options: ``root`` (default ``<cache>/torchvision``), ``download`` (default false: fetching
needs a network, so it is asked for explicitly), ``train_split`` / ``test_split`` for the
classes that take ``split=`` (defaults: "train" / "test", "trainval" / "test" for
OxfordIIITPet, as the paper's 3,680-image Pets training set). Classes that take
``train=True/False`` (CIFAR, MNIST) need no split names. Classes with no split at all
(Caltech101, SUN397, EuroSAT: VTAB-1k tasks) are one training split, and a test share is
carved from it (``test_fraction`` / ``eval_size``) as for hub sets without a test split.

Labels come from the attribute the class keeps them in (``targets``, ``labels`` or
``_labels``), so subsets never decode an image. A class without one is refused.
"""

from __future__ import annotations

import inspect
import urllib.parse
from pathlib import Path

import numpy as np

from vitrun.data.lazy import LazyImageSet, TorchvisionReader
from vitrun.data.options import SourceError, SourceOptions
from vitrun.probe import reachable

TRAIN_SPLIT = {"OxfordIIITPet": "trainval"}
LABEL_ATTRIBUTES = ("targets", "labels", "_labels", "y")


def dataset_class(name: str):
    import torchvision.datasets

    known = [n for n in torchvision.datasets.__all__ if n[0].isupper()]
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "e.g. CIFAR10, CIFAR100, OxfordIIITPet, Flowers102"
        raise SourceError("data", f"torchvision:{name}: no such torchvision dataset ({hint})")
    return getattr(torchvision.datasets, name)


def default_root(cache_dir: str | Path | None) -> Path:
    from vitrun.data.cache import cache_root

    return cache_root(cache_dir).parent / "torchvision"


def open_split(name: str, options: SourceOptions, split: str, cache_dir=None, download: bool | None = None):
    """The torchvision dataset object of one split ("train" or "test"); no transform. None for
    "test" of a class without splits (the whole set is "train")."""
    cls = dataset_class(name)
    params = inspect.signature(cls).parameters
    root = Path(options.root).expanduser() if options.root else default_root(cache_dir)
    kwargs: dict = {"root": str(root)}
    if "download" in params:
        kwargs["download"] = options.download if download is None else download
    if "train" in params:
        kwargs["train"] = split == "train"
    elif "split" in params:
        default = TRAIN_SPLIT.get(name, "train") if split == "train" else "test"
        kwargs["split"] = (options.train_split if split == "train" else options.test_split) or default
    elif options.train_split or options.test_split:
        raise SourceError("train_split" if options.train_split else "test_split", f"torchvision:{name} has no splits to choose from; remove the split option (its test share is carved from the whole set: test_fraction / eval_size)")
    elif split == "test":
        return None  # no split of its own: the caller carves one from the training split
    if kwargs.get("download"):
        root.mkdir(parents=True, exist_ok=True)
    try:
        return cls(**kwargs)
    except (RuntimeError, FileNotFoundError) as err:
        raise SourceError("data", f"torchvision:{name}: not found under {root} ({_first_line(err)}); set download = true (needs a network) or root = a folder that has it") from None
    except ValueError as err:  # a split name the class does not know
        raise SourceError("train_split" if split == "train" else "test_split", f"torchvision:{name}: {_first_line(err)}") from None


def image_set(dataset, name: str) -> LazyImageSet:
    for attribute in LABEL_ATTRIBUTES:
        values = getattr(dataset, attribute, None)
        if values is not None and len(values) == len(dataset):
            break
    else:
        raise SourceError("data", f"torchvision:{name}: keeps no label list (targets/labels), so subsets would decode every image; use folder: or hf:")
    labels = np.asarray(values, dtype=np.int64)
    classes = getattr(dataset, "classes", None) or [str(i) for i in range(int(labels.max()) + 1)]
    return LazyImageSet.of(TorchvisionReader(dataset), labels, classes)


def check(name: str, options: SourceOptions, cache_dir=None) -> None:
    """Raise SourceError unless the dataset is on disk, or can be downloaded from here.

    Never downloads: with ``download`` the files' host is probed with a short timeout.
    """
    try:
        open_split(name, options, "train", cache_dir, download=False)
        open_split(name, options, "test", cache_dir, download=False)
        return
    except SourceError as err:
        if not options.download or err.key != "data" or "not found" not in str(err):
            raise
    url = _download_url(dataset_class(name))
    if url and not reachable(url):
        host = urllib.parse.urlsplit(url).hostname
        raise SourceError("download", f"torchvision:{name} cannot be downloaded here ({host} is unreachable); set root = a folder that has it, or use folder:PATH / parquet:PATH")


def _download_url(cls) -> str | None:
    for attribute in ("url", "_URL", "_RESOURCES", "resources", "mirrors", "_DOWNLOAD_URL", "_BASE_URL", "_download_url_prefix"):
        value = getattr(cls, attribute, None)
        while isinstance(value, (list, tuple, dict)) and value:
            value = next(iter(value.values())) if isinstance(value, dict) else value[0]
        if isinstance(value, str) and value.startswith("http"):
            return value
    return "https://download.pytorch.org"  # unknown: probe something every download needs anyway


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
