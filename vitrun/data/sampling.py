"""Seeded index sampling: class-balanced subsets, k-shot sets, hold-outs, plain random subsets.

Pure functions of (labels, size, seed): no global RNG state is read or changed. Each
function salts the seed with its own tag, so ``balanced_subset(y, n, s)`` and
``holdout_split(y, f, s)`` do not pick the same images just because they share a seed.

All three rank the images of each class in a seeded random order and take a prefix of
that order. Taking prefixes is what makes the sets *nested*: for one seed, the 10-shot set
contains the 5-shot set, and the 9k subset contains the 3k subset (the paper's data-size
experiments compare models on growing subsets; nesting removes the "which images" noise).
"""

from __future__ import annotations

import numpy as np
import torch

# Salts that separate the random streams of the functions below (arbitrary constants).
_BALANCED, _KSHOT, _HOLDOUT, _RANDOM, _RANDOM_DEV = 0xBA1A, 0x5407, 0x401D, 0x7A5D, 0xDE75


def _as_labels(labels) -> np.ndarray:
    y = torch.as_tensor(labels).detach().cpu().numpy()
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    return y.astype(np.int64, copy=False)


def _class_ranks(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each image within its class under a random order: int64 (N,).

    The images of class c get ranks 0..count(c)-1 in a seeded random order.
    """
    order = np.lexsort((rng.random(len(y)), y))  # grouped by class, shuffled inside each
    sorted_y = y[order]
    starts = np.flatnonzero(np.r_[True, sorted_y[1:] != sorted_y[:-1]])  # first slot per class
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(y)]))
    ranks = np.empty(len(y), dtype=np.int64)
    ranks[order] = np.arange(len(y)) - group_start
    return ranks


def _indices(mask_or_idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.sort(mask_or_idx).astype(np.int64))


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices (int64 (size,), ascending) of a class-balanced random subset.

    Class counts differ by at most one while every class still has images; a class that
    runs out stops contributing and the others fill the rest. Nested: for one seed, the
    subset of size n lies inside the subset of size m > n.
    """
    y = _as_labels(labels)
    if not 0 <= size <= len(y):
        raise ValueError(f"subset size {size} is outside [0, {len(y)}] (the number of images)")
    rng = np.random.default_rng([seed, _BALANCED])
    ranks = _class_ranks(y, rng)
    # Deal images out round by round (rank 0 of every class, then rank 1, ...), classes in a
    # random order inside each round so the leftover slots of a partial round go to random
    # classes. One global order, so every size is a prefix of it: nested by construction.
    order = np.lexsort((rng.random(len(y)), ranks))
    return _indices(order[:size])


def k_shot(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices (int64 (k * num_classes,), ascending) of k random images per class.

    Nested in k for one seed. Raises ValueError when a class has fewer than k images.
    """
    y = _as_labels(labels)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    classes, counts = np.unique(y, return_counts=True)
    if len(counts) and counts.min() < k:
        c = classes[counts.argmin()]
        raise ValueError(f"k_shot: class {c} has {counts.min()} images, fewer than k={k}")
    ranks = _class_ranks(y, np.random.default_rng([seed, _KSHOT]))
    return _indices(np.flatnonzero(ranks < k))


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split into (train_idx, dev_idx), both int64 ascending, disjoint, covering all.

    The dev set holds round(fraction * N) images (at least one), shared out among classes in
    proportion to their sizes (largest remainders get the odd images, ties broken at
    random); every class keeps at least one training image. The paper picks fine-tuning
    learning rates on such a split (2% of CIFAR, 10% of Pets/Flowers).
    """
    y = _as_labels(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    if len(y) < 2:
        raise ValueError("holdout_split needs at least 2 images")
    rng = np.random.default_rng([seed, _HOLDOUT])
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    total = min(max(1, round(fraction * len(y))), len(y) - len(classes))
    if total < 1:
        raise ValueError("holdout_split: every class has one image; nothing left to hold out")
    quota = fraction * counts
    dev_per_class = np.minimum(np.floor(quota).astype(np.int64), counts - 1)
    # Largest-remainder apportionment of what floor() left over; random tie-break.
    remainder = np.where(dev_per_class < counts - 1, quota - dev_per_class, -1.0)
    for c in np.lexsort((rng.random(len(classes)), -remainder))[: max(0, total - dev_per_class.sum())]:
        if dev_per_class[c] < counts[c] - 1:
            dev_per_class[c] += 1
    ranks = _class_ranks(y, rng)
    is_dev = ranks < dev_per_class[inverse]
    return _indices(np.flatnonzero(~is_dev)), _indices(np.flatnonzero(is_dev))


def random_subset(count: int, size: int, seed: int) -> torch.Tensor:
    """Indices (int64 (size,), ascending) of a plain random subset of ``count`` images.

    Not class-balanced: VTAB-1k's 1,000 training images are the first 1,000 of a shuffled split,
    whatever their classes. A prefix of one seeded permutation, so nested: for one seed the
    subset of size n lies inside the subset of size m > n.
    """
    if not 0 <= size <= count:
        raise ValueError(f"subset size {size} is outside [0, {count}] (the number of images)")
    order = np.random.default_rng([seed, _RANDOM]).permutation(count)
    return _indices(order[:size])


def random_split(count: int, dev: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, dev_idx), int64 ascending, disjoint, covering ``range(count)``: ``dev`` images
    drawn at random, not stratified (VTAB-1k's 200 validation images of its 1,000)."""
    if not 0 < dev < count:
        raise ValueError(f"dev size {dev} must be at least 1 and leave training images (of {count})")
    order = np.random.default_rng([seed, _RANDOM_DEV]).permutation(count)
    return _indices(order[dev:]), _indices(order[:dev])
