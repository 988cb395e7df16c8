"""Data sources: embedded in-memory image sets, and real datasets read from disk.

``load(source, image_size=...)`` returns a ``Dataset`` (train and test splits). Embedded
sources (no network, uint8 ``ImageSet``s in memory, augmented a batch at a time):

* ``fractal``: FractalDB-style pre-training set, one random IFS per class (``fractal.py``);
* ``digits``: scikit-learn's 8x8 handwritten digits, upsampled (``digits.py``);
* ``shapes``: ten procedurally drawn geometric shapes on textured backgrounds (``shapes.py``).

Real sources, ``hf:`` ``parquet:`` ``arrow:`` ``torchvision:`` ``folder:`` (``sources.py``),
open as ``LazyImageSet``s: labels in memory, images decoded by data-loader workers
(``loader.py``, per-image views in ``transforms.py``).

Generated sets are cached as .npz files (``cache.py``); class-balanced subsets, k-shot
sets and hold-out splits come from ``sampling.py``; batch augmentation from ``augment.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from vitrun.data import digits, fractal, shapes
from vitrun.data.cache import cache_root, cached_generate
from vitrun.data.imageset import Dataset, ImageSet
from vitrun.data.lazy import LazyImageSet
from vitrun.data.options import SourceError, SourceOptions
from vitrun.data.sampling import k_shot, random_subset

__all__ = ["SOURCES", "Dataset", "ImageSet", "LazyImageSet", "SourceError", "SourceOptions", "load", "check", "is_embedded"]

SOURCES: dict[str, str] = {
    "fractal": "FractalDB-style IFS fractals, any number of classes and images (generated, pre-training)",
    "digits": "scikit-learn handwritten digits, 10 classes, 1198 train / 599 test (real, transfer)",
    "shapes": "10 geometric shapes on textured backgrounds (generated, transfer)",
}

GENERATORS: dict[str, ModuleType] = {"fractal": fractal, "shapes": shapes}


def is_embedded(source: str) -> bool:
    """Whether ``source`` names an embedded (in-memory) set rather than a ``KIND:TARGET`` source."""
    return ":" not in source


def check(source: str, options: SourceOptions = SourceOptions(), cache_dir: str | None = None) -> None:
    """Raise SourceError unless ``source`` opens here: an embedded name (with the nearest one
    suggested when unknown) and options that apply to it, or a real source (``sources.check``:
    metadata only, never a download)."""
    from vitrun.data import sources

    if not is_embedded(source):
        sources.check(source, options, cache_dir)
        return
    if source not in SOURCES:
        raise SourceError("data", _unknown_source(source))
    sources.check_options(sources.parse(source), options)


def _unknown_source(source: str) -> str:
    close = difflib.get_close_matches(source, SOURCES, n=1)
    if close:
        return f"unknown data source {source!r} (did you mean {close[0]!r}?)"
    from vitrun.data.sources import KINDS

    return f"unknown data source {source!r} (embedded: {', '.join(SOURCES)}; or KIND:TARGET with KIND one of {', '.join(KINDS)})"


def load(
    source: str,
    *,
    image_size: int,
    seed: int = 0,
    classes: int | None = None,
    per_class: int | None = None,
    cache_dir: str | Path | None = None,
    options: SourceOptions | None = None,
    train_size: int | None = None,
) -> Dataset:
    """Load a source: embedded ones as uint8 images of ``image_size`` x ``image_size``,
    real ones (``KIND:TARGET``) as lazily decoded images of any size (``image_size`` unused).

    classes, per_class: for generators, how many classes and train images per class to make
    (defaults: the generator's); test images per class are fixed by the generator. For
    digits and real sources, keep the first ``classes`` classes and ``per_class`` seeded
    train images of each (ValueError past what exists).
    train_size: then a seeded random (not class-balanced) subset of that many train images (VTAB-1k).
    seed: generators draw everything from it; other sources use it only to pick ``per_class`` images.
    cache_dir: where generated sets (and torchvision's default root) live; default $VITRUN_CACHE or ~/.cache/vitrun.
    options: real sources' settings (splits, columns, root ...); see ``options.SourceOptions``.
    """
    for name, value in (("classes", classes), ("per_class", per_class), ("train_size", train_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not is_embedded(source):
        from vitrun.data import sources

        if options is not None and options.stream:
            for name, value, how in (("per_class", per_class, "by label"), ("train_size", train_size, "from the whole split")):
                if value is not None:
                    raise SourceError(name, f"{source}: {name} draws images {how}, which a stream cannot; drop {name} or stream")
            return sources.open_stream(source, options, classes, cache_dir)
        return _random_train(_restrict(sources.open_dataset(source, options or SourceOptions(), cache_dir), seed, classes, per_class), seed, train_size)
    if source not in SOURCES:
        raise SourceError("data", _unknown_source(source))
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
    if source == "digits":
        train, test = digits.load_split(image_size)
        return _random_train(_restrict(Dataset("digits", train, test), seed, classes, per_class), seed, train_size)
    return _random_train(_load_generated(source, image_size, seed, classes, per_class, cache_dir), seed, train_size)


def _random_train(ds: Dataset, seed: int, train_size: int | None) -> Dataset:
    """``train_size`` random train images (``sampling.random_subset``), or ``ds`` as it is."""
    if train_size is None:
        return ds
    if train_size > len(ds.train.labels):
        raise ValueError(f"{ds.name} has {len(ds.train.labels)} train images, asked for train_size {train_size}")
    return Dataset(ds.name, ds.train.subset(random_subset(len(ds.train.labels), train_size, seed)), ds.test, ds.validation)


def _class_major(images: np.ndarray, names: tuple[str, ...]) -> ImageSet:
    """ImageSet from uint8 (classes, per_class, 3, H, W): labels 0,0,...,1,1,..."""
    c, n = images.shape[:2]
    labels = torch.arange(c, dtype=torch.int64).repeat_interleave(n)
    return ImageSet(torch.from_numpy(images.reshape(c * n, *images.shape[2:])), labels, names)


def _load_generated(source, image_size, seed, classes, per_class, cache_dir) -> Dataset:
    gen = GENERATORS[source]
    classes = gen.DEFAULT_CLASSES if classes is None else classes
    per_class = gen.DEFAULT_PER_CLASS if per_class is None else per_class
    if source == "shapes" and classes > len(shapes.SHAPES):
        raise ValueError(f"shapes has {len(shapes.SHAPES)} classes, asked for {classes}")
    train, test = cached_generate(
        cache_root(cache_dir),
        f"{source}-v{gen.VERSION}-seed{seed}-px{image_size}",
        image_size,
        classes,
        per_class,
        gen.TEST_PER_CLASS,
        lambda c, n: gen.generate(seed, image_size, c, n),
    )
    names = gen.class_names(classes)
    return Dataset(source, _class_major(train, names), _class_major(test, names))


def _restrict(ds: Dataset, seed: int, classes: int | None, per_class: int | None) -> Dataset:
    """The first ``classes`` classes, and ``per_class`` seeded train images of each."""
    train, test, validation = ds.train, ds.test, ds.validation
    if classes is not None:
        if classes > ds.num_classes:
            raise ValueError(f"{ds.name} has {ds.num_classes} classes, asked for {classes}")
        train, test = _first_classes(train, classes), _first_classes(test, classes)
        validation = _first_classes(validation, classes) if validation is not None else None
    if per_class is not None:
        available = int(torch.bincount(train.labels, minlength=len(train.classes)).min())
        if per_class > available:
            raise ValueError(f"{ds.name} has {available} train images in its smallest class, asked for {per_class}")
        train = train.subset(k_shot(train.labels, per_class, seed))
    return Dataset(ds.name, train, test, validation)


def _first_classes(images, classes: int):
    """The images of labels 0..classes-1, with the class list cut to match (ImageSet or LazyImageSet)."""
    keep = torch.nonzero(images.labels < classes).flatten()
    return dataclasses.replace(images.subset(keep), classes=images.classes[:classes])
