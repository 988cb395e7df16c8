"""scikit-learn's handwritten digits: the one real transfer set that needs no network.

1797 grey 8x8 images of the digits 0-9 (UCI optdigits test set), shipped inside
scikit-learn. We split them once, stratified, 2/3 train and 1/3 test, with a fixed seed:
the split does not follow the run's seed, so every seed is scored on the same test images.
Images are scaled to 0..255 (ink bright on dark, as stored), upsampled bilinearly to the
requested size and repeated over three channels.
"""

from __future__ import annotations

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


def load_split(image_size: int) -> tuple[ImageSet, ImageSet]:
    """(train, test) with all 10 classes: about 1198 and 599 images."""
    from sklearn.datasets import load_digits  # deferred: sklearn import costs ~1 s

    bunch = load_digits()
    grey = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = holdout_split(labels, TEST_FRACTION, SPLIT_SEED)
    images = _upsample(grey, image_size)
    return (
        ImageSet(images[train_idx], labels[train_idx], CLASSES),
        ImageSet(images[test_idx], labels[test_idx], CLASSES),
    )
