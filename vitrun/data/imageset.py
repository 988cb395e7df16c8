"""In-memory image sets: the one shape every data source returns.

Images stay uint8 until a batch is augmented (``vitrun.data.augment``): a 10k-image set at
32 px is 30 MB as uint8 but 120 MB as float32, and per-batch conversion costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def as_indices(indices) -> torch.Tensor:
    """1-D ints or a boolean mask -> int64 (K,) indices: what every image set's ``subset`` takes."""
    idx = torch.as_tensor(indices)
    return torch.nonzero(idx).flatten() if idx.dtype == torch.bool else idx.to(torch.int64)


# eq=False: the fields are tensors, whose ``==`` is elementwise, so a generated __eq__
# would raise; identity comparison is the honest default.
@dataclass(frozen=True, eq=False)
class ImageSet:
    """A labelled batch of images held in memory.

    images: uint8 (N, 3, H, W), RGB, 0..255.
    labels: int64 (N,), values in [0, len(classes)).
    classes: class names; ``classes[k]`` names label ``k``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices) -> "ImageSet":
        """The images at ``indices`` (1-D ints, or a boolean mask), same class list."""
        idx = as_indices(indices)
        return ImageSet(self.images[idx], self.labels[idx], self.classes)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named train/test pair over one class list, plus the source's validation split if it has one.

    The splits are ``ImageSet``s (embedded sources, in memory) or ``lazy.LazyImageSet``s
    (sources on disk, decoded on demand); both offer labels, classes, len and subset.
    The paper's learning-rate dev split is carved from ``train`` (``sources.dev_split``),
    not taken from ``validation``.
    """

    name: str
    train: ImageSet  # or LazyImageSet
    test: ImageSet
    validation: ImageSet | None = None

    def __post_init__(self) -> None:
        for split in (self.test, self.validation):
            if split is not None and split.classes != self.train.classes:
                raise ValueError(f"dataset {self.name!r}: train and test class lists differ")

    def counts(self) -> dict[str, int]:
        """Images per split, e.g. {"train": 1198, "test": 599}."""
        splits = {"train": self.train, "validation": self.validation, "test": self.test}
        return {name: len(split) for name, split in splits.items() if split is not None}

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)
