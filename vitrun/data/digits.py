"""scikit-learn's handwritten digits: the one real transfer set that needs no network.

1797 grey 8x8 images of the digits 0-9 (UCI optdigits test set), shipped inside
scikit-learn. We split them once, stratified, 2/3 train and 1/3 test, with a fixed seed:
the split does not follow the run's seed, so every seed is scored on the same test images.
Images are scaled to 0..255 (ink bright on dark, as stored), upsampled bilinearly to the
requested size and repeated over three channels.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitrun.data.imageset import ImageSet
from vitrun.data.sampling import holdout_split

TEST_FRACTION = 1 / 3
SPLIT_SEED = 0  # fixed on purpose: one test set for every run
CLASSES = tuple(str(d) for d in range(10))
TRAIN_MIN_PER_CLASS = 116  # the smallest class of the training split ("8"); recipes check shots against it


def _upsample(grey: torch.Tensor, size: int) -> torch.Tensor:
    """float (N, 8, 8) in 0..16 -> uint8 (N, 3, size, size)."""
    x = grey[:, None] * (255.0 / 16.0)  # (N, 1, 8, 8)
    if x.shape[-1] != size:
        # antialias only matters when shrinking (size < 8); harmless otherwise
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 8)
    return x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def _read() -> tuple[np.ndarray, np.ndarray]:
    """(float (1797, 8, 8) in 0..16, int (1797,)): the digits, read straight from scikit-learn's
    data file; importing sklearn.datasets (scipy and all) costs 1-4 s, the file 30 ms. Falls back
    to load_digits() should a future scikit-learn move the file."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")  # 64 pixel columns, then the label
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def load_split(image_size: int) -> tuple[ImageSet, ImageSet]:
    """(train, test) with all 10 classes: about 1198 and 599 images."""
    pixels, targets = _read()
    grey = torch.as_tensor(pixels, dtype=torch.float32)  # (1797, 8, 8)
    labels = torch.as_tensor(targets, dtype=torch.int64)
    train_idx, test_idx = holdout_split(labels, TEST_FRACTION, SPLIT_SEED)
    images = _upsample(grey, image_size)
    return (
        ImageSet(images[train_idx], labels[train_idx], CLASSES),
        ImageSet(images[test_idx], labels[test_idx], CLASSES),
    )
