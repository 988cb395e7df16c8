"""Image sets read from disk on demand: labels in memory, pixels decoded only when asked.

A ``LazyImageSet`` offers what sampling and the stages need from an ``ImageSet``
(``labels``, ``classes``, ``len``, ``subset``) without holding any pixels, so class-balanced
subsets, k-shot sets and dev splits of a 1M-image source cost one label vector. Pixels come
from a *reader*, one object per source split that maps a row number to a decoded PIL image;
readers are small and picklable, so data-loader workers decode in parallel.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from vitrun.data.imageset import as_indices


class Reader(Protocol):
    def read(self, row: int) -> Image.Image:
        """The image at ``row`` of the source split, any size and mode."""


@dataclass(frozen=True, eq=False)
class FileReader:
    """Image files on disk, one path per row (image folders).

    The paths are one UTF-8 byte array and an offset array, not a tuple of Python strings:
    a million paths cost ~60 MB once (and pickle to each worker as two buffers), not ~150 MB
    of string objects copied into every worker and touched by its reference counting.

    blob: uint8 (total bytes,), the paths back to back; offsets: int64 (N + 1,).
    """

    blob: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, paths: Sequence[str]) -> "FileReader":
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def path(self, row: int) -> str:
        return self.blob[self.offsets[row] : self.offsets[row + 1]].tobytes().decode("utf-8", "surrogateescape")

    def read(self, row: int) -> Image.Image:
        return Image.open(self.path(row))

    def read_bytes(self, row: int) -> bytes:
        with open(self.path(row), "rb") as f:
            return f.read()

    def where(self, row: int) -> str:
        return self.path(row)


@dataclass(frozen=True)
class HFReader:
    """One column of a Hugging Face ``datasets.Dataset`` cast to ``Image(decode=False)``.

    Rows come back as {"bytes", "path"} from the memory-mapped Arrow file; we decode them
    with PIL ourselves, so nothing is decoded until a worker asks for it.
    """

    dataset: object  # datasets.Dataset, the image column only
    column: str

    def read(self, row: int) -> Image.Image:
        return Image.open(io.BytesIO(self.read_bytes(row)))

    def read_bytes(self, row: int) -> bytes:
        item = self.dataset[int(row)][self.column]
        if item.get("bytes"):
            return item["bytes"]
        with open(item["path"], "rb") as f:
            return f.read()


@dataclass(frozen=True)
class TorchvisionReader:
    """A torchvision dataset built with no transform: item 0 of ``dataset[row]`` is a PIL image."""

    dataset: object

    def read(self, row: int) -> Image.Image:
        image = self.dataset[int(row)][0]
        return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


# eq=False: tensor fields (see ImageSet).
@dataclass(frozen=True, eq=False)
class LazyImageSet:
    """Labelled images of one source split, decoded on demand.

    reader: decodes row r of the source split.
    rows: int64 (N,), the reader rows of this set (a subset keeps the reader, narrows rows).
    labels: int64 (N,), values in [0, len(classes)).
    """

    reader: Reader
    rows: np.ndarray
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.rows),):
            raise ValueError(f"labels must be int64 ({len(self.rows)},), got {self.labels.dtype} {tuple(self.labels.shape)}")
        object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def of(cls, reader: Reader, labels: Sequence[int], classes: Sequence[str]) -> "LazyImageSet":
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        return cls(reader, np.arange(len(labels), dtype=np.int64), labels, tuple(classes))

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` of this set, decoded (any size and mode: see ``transforms.to_rgb``)."""
        return self.reader.read(int(self.rows[i]))

    def encoded(self, i: int) -> bytes | None:
        """Image ``i`` as stored (JPEG, PNG … bytes), None for readers that only decode."""
        read_bytes = getattr(self.reader, "read_bytes", None)
        return read_bytes(int(self.rows[i])) if read_bytes else None

    def where(self, i: int) -> str:
        """Where image ``i`` lies, for error messages (shard and offset for shards)."""
        row = int(self.rows[i])
        where = getattr(self.reader, "where", None)
        return where(row) if where else f"row {row}"

    def subset(self, indices) -> "LazyImageSet":
        """The images at ``indices`` (1-D ints, or a boolean mask), same class list."""
        idx = as_indices(indices)
        return LazyImageSet(self.reader, self.rows[idx.numpy()], self.labels[idx], self.classes)
