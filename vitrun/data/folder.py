"""``folder:PATH``: a class-per-folder tree of image files, labels read from the paths.

Two layouts:

    PATH/train/<class>/**/*.jpg   and   PATH/test/<class>/...   (or val/, validation/)
    PATH/<class>/**/*.png         one tree: a stratified ``test_fraction`` of it is the test set

Class names are the sorted folder names of the training tree; any image extension PIL reads
counts (.jpg .jpeg .png .bmp .gif .webp .tif .tiff .ppm .pgm), in any size and colour mode.
Nothing is decoded until a batch needs it (``lazy.FileReader``).
"""

from __future__ import annotations

import os
from pathlib import Path

from vitrun.data.lazy import FileReader, LazyImageSet
from vitrun.data.options import SourceError, SourceOptions

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLIT_DIRS = {"train": ("train", "training"), "test": ("test", "testing"), "validation": ("val", "valid", "validation")}


def layout(root: Path, options: SourceOptions) -> dict[str, Path]:
    """Split name -> class-tree folder ("train" always; "test" and "validation" when present).

    Raises SourceError when the folder is missing or has no class subfolders.
    """
    source = f"folder:{root}"
    if not root.is_dir():
        raise SourceError("data", f"{source}: no such folder (give the path of a folder of class subfolders)")
    splits: dict[str, Path] = {}
    for split, names in SPLIT_DIRS.items():
        chosen = options.train_split if split == "train" else options.test_split if split == "test" else None
        for name in (chosen,) if chosen else names:
            if (root / name).is_dir():
                splits[split] = root / name
                break
        else:
            if chosen:
                key = f"{split}_split"
                raise SourceError(key, f"{source}: no subfolder {chosen!r} (subfolders: {', '.join(_subdirs(root)) or 'none'})")
    if "train" not in splits:
        splits = {"train": root}  # one tree: the test set is carved out of it
    if "test" not in splits and "validation" in splits:
        splits["test"] = splits.pop("validation")  # val/ is the test set when there is no test/
    if not _subdirs(splits["train"]):
        raise SourceError("data", f"{source}: no class subfolders in {splits['train']} (put each class's images in PATH/<class>/ or PATH/train/<class>/)")
    empty = [name for name in _subdirs(splits["train"]) if not _has_image(splits["train"] / name)]
    if empty:
        raise SourceError("data", f"{source}: class folders without image files in {splits['train']}: {', '.join(empty[:5])}{' …' if len(empty) > 5 else ''} (extensions: {', '.join(sorted(EXTENSIONS))})")
    return splits


def _has_image(folder: Path) -> bool:
    return count_images(folder, 1) > 0


def count_images(folder: Path, limit: int) -> int:
    """Image files under `folder`, counted up to `limit` (cheap on a large tree)."""
    found = 0
    for _, _, filenames in os.walk(folder):
        found += sum(os.path.splitext(f)[1].lower() in EXTENSIONS and not f.startswith(".") for f in filenames)
        if found >= limit:
            return found
    return found


def classes(train_dir: Path) -> tuple[str, ...]:
    return tuple(_subdirs(train_dir))


def images(tree: Path, class_names: tuple[str, ...], source: str) -> LazyImageSet:
    """Every image under ``tree/<class>/``, sorted by path; labels index ``class_names``."""
    found = {name for name in _subdirs(tree)}
    unknown = sorted(found - set(class_names))
    if unknown:
        raise SourceError("data", f"{source}: {tree} has classes the training tree lacks: {', '.join(unknown[:5])}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = tree / name
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for f in sorted(filenames):
                if os.path.splitext(f)[1].lower() in EXTENSIONS and not f.startswith("."):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not paths:
        raise SourceError("data", f"{source}: no image files under {tree}/<class>/ (extensions: {', '.join(sorted(EXTENSIONS))})")
    return LazyImageSet.of(FileReader.of(paths), labels, class_names)


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
