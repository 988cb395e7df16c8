"""On-disk cache of generated image sets (.npz, never pickle).

Layout: ``<cache_dir>/data/<source>-v<version>-seed<seed>-px<size>-c<classes>-n<per_class>.npz``
holding two uint8 arrays, class-major:

    train: (classes, per_class, 3, size, size)
    test:  (classes, test_per_class, 3, size, size)

Generators make instance i of class c the same whatever else is asked for, so any cached
file with at least the requested classes and train images per class answers a request by
slicing ``[:classes, :per_class]``: one 100x500 file serves every smaller sweep point.
``version`` is the generator's own number, bumped whenever its pixels change, so a stale
file is never read.

Writes are atomic (temp file in the same folder, fsync, ``os.replace``): a reader sees a
whole file or none, and concurrent writers of the same key both write identical bytes.
A file that cannot be read (truncated, corrupt, wrong shapes) is deleted and regenerated.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

Generate = Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (classes, per_class) -> (train, test)


def cache_root(cache_dir: str | Path | None) -> Path:
    """Folder for data caches: ``cache_dir``, else $VITRUN_CACHE, else ~/.cache/vitrun; plus /data."""
    if cache_dir is None:
        cache_dir = os.environ.get("VITRUN_CACHE") or Path.home() / ".cache" / "vitrun"
    return Path(cache_dir).expanduser() / "data"


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed .npz, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loads at disk speed; fractal+noise compress poorly anyway
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache should be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` from ``path``; None when missing; None (and the file removed) when unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)  # corrupt: drop it so the next call does not trip on it again
        return None


def _candidates(root: Path, stem: str, classes: int, per_class: int) -> list[tuple[int, Path]]:
    """Cached files for ``stem`` that cover (classes, per_class), smallest first."""
    pattern = re.compile(re.escape(stem) + r"-c(\d+)-n(\d+)\.npz")
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = pattern.fullmatch(p.name)
            if m and int(m[1]) >= classes and int(m[2]) >= per_class:
                found.append((int(m[1]) * int(m[2]), p))
    return sorted(found)


def _fits(train: np.ndarray, test: np.ndarray, classes: int, per_class: int, test_per_class: int, size: int) -> bool:
    """Whether cached arrays have the layout of a request they claim (by name) to cover."""
    return (
        train.dtype == test.dtype == np.uint8
        and train.ndim == test.ndim == 5
        and train.shape[0] == test.shape[0] >= classes
        and train.shape[1] >= per_class
        and test.shape[1] == test_per_class
        and train.shape[2:] == test.shape[2:] == (3, size, size)
    )


def cached_generate(
    root: Path, stem: str, size: int, classes: int, per_class: int, test_per_class: int, generate: Generate
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) uint8 arrays, class-major, from the cache or from ``generate``.

    stem: "<source>-v<version>-seed<seed>-px<size>": the file name up to the counts.
    Returns train (classes, per_class, 3, size, size), test (classes, test_per_class, 3, size, size).
    """
    for _, path in _candidates(root, stem, classes, per_class):
        arrays = load_arrays(path, ("train", "test"))
        if arrays is None:
            continue
        train, test = arrays["train"], arrays["test"]
        if _fits(train, test, classes, per_class, test_per_class, size):
            return (
                np.ascontiguousarray(train[:classes, :per_class]),
                np.ascontiguousarray(test[:classes]),
            )
        path.unlink(missing_ok=True)  # wrong layout: written by something else, not trusted
    train, test = generate(classes, per_class)
    save_arrays(root / f"{stem}-c{classes}-n{per_class}.npz", train=train, test=test)
    return train, test
