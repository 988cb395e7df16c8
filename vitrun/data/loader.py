"""Batches for the training loop and for evaluation, from any image set.

The training loop asks for ``batch_at(step)``: a batch must be a pure function of
(seed, step), so a killed run resumes to bit-identical weights. Both paths keep that:

* in memory (``ImageSet``, embedded sources): index the uint8 tensor and augment the whole
  batch at once (``augment.random_crop_flip``); no workers, nothing to overlap.
* on disk (``LazyImageSet``): a torch ``DataLoader`` whose batch sampler yields, for each
  step from the one asked for onwards, the images of that step tagged (row, step, slot).
  Workers decode and crop each image with randomness drawn from (seed, step, slot) alone,
  so the batch is the same whatever the number of workers, and a resumed run restarts the
  sampler at its step. Workers run ahead (``prefetch`` batches each) while the model trains.

Which images a step sees: a fresh seeded permutation per epoch (``EpochOrder``), the same
for both paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from vitrun.data import augment, transforms
from vitrun.data.imageset import ImageSet
from vitrun.data.lazy import LazyImageSet

Batch = tuple[torch.Tensor, torch.Tensor]  # float32 (B, 3, S, S) in [-1, 1], int64 (B,)
_VIEW_TAG = 0x71E4  # salts per-image augmentation streams apart from other seeded draws


@dataclass(frozen=True)
class LoaderSettings:
    """How on-disk images are loaded (``[run]``: never changes a result)."""

    workers: int = 0  # decoding processes; 0 decodes in the training process
    prefetch: int = 2  # batches each worker prepares ahead
    device: torch.device = torch.device("cpu")  # batches are handed over on it

    @staticmethod
    def auto_workers(device: torch.device = torch.device("cpu")) -> int:
        """Cores the training step leaves free, at most 8.

        On a GPU the training process needs about one core: one worker per other core. On
        a CPU, torch's threads already use every core, and a decoding worker would fight
        them (on 2 cores, 2 training threads + 1 busy worker ran several times slower):
        only cores beyond torch's threads get workers, so a small CPU decodes in-process.
        """
        cores = os.cpu_count() or 1
        busy = 1 if device.type == "cuda" else torch.get_num_threads()
        return max(0, min(8, cores - busy))


class EpochOrder:
    """Sampling without replacement, a fresh permutation per epoch, any batch found by step."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._perms = n, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))}
        return self._perms[epoch]

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """Indices int64 (batch_size,) of step ``step``."""
        positions = torch.arange(step * batch_size, (step + 1) * batch_size)
        epochs, offsets = positions // self.n, positions % self.n
        return torch.cat([self._perm(int(e))[offsets[epochs == e]] for e in epochs.unique()])


def train_batches(
    images: ImageSet | LazyImageSet,
    image_size: int,
    batch_size: int,
    steps: int,
    seed: int,
    crop: str,
    settings: LoaderSettings = LoaderSettings(),
) -> Callable[[int], Batch]:
    """``batch_at(step)`` for the training loop: augmented batch ``step`` of ``images``.

    crop: "inception" (random area 5-100% for real images, 35-100% for embedded ones, as
    ``augment``) or "resize" (shorter side to the target, random square crop); both flip.
    """
    order = EpochOrder(len(images), seed)
    if isinstance(images, ImageSet):
        # A square image already at the target size: "resize" + random crop is the whole image.
        full = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0)) if crop == "resize" else {}

        def batch_at(step: int) -> Batch:
            idx = order.batch(step, batch_size)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            return augment.random_crop_flip(images.images[idx], image_size, gen, **full), images.labels[idx]

        return batch_at
    return _LoaderBatches(images, image_size, batch_size, steps, seed, crop, order, settings)


def eval_batches(images: ImageSet | LazyImageSet, image_size: int, batch_size: int, settings: LoaderSettings = LoaderSettings()) -> Iterator[Batch]:
    """Evaluation views (shorter side resized, centre crop) of every image, in order."""
    if isinstance(images, ImageSet):
        for start in range(0, len(images), batch_size):
            yield augment.center(images.images[start : start + batch_size], image_size), images.labels[start : start + batch_size]
        return
    keys = [(i, -1, -1) for i in range(len(images))]
    batches = [keys[s : s + batch_size] for s in range(0, len(keys), batch_size)]
    for x, y in _loader(_Views(images, image_size, "center", 0), batches, settings):
        yield _to_device(x, settings), y


# -- on-disk path ------------------------------------------------------------------------

class _Views(TorchDataset):
    """Item (i, step, slot) -> (uint8 (3, S, S), label): image i decoded and viewed in a worker."""

    def __init__(self, images: LazyImageSet, size: int, kind: str, seed: int):
        self.images, self.size, self.kind, self.seed = images, size, kind, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]):
        i, step, slot = key
        # The view's randomness depends on (seed, step, slot) only: not on the worker, nor
        # on which other images share the batch, so any worker count gives the same batch.
        rng = np.random.default_rng([_VIEW_TAG, self.seed, step, slot]) if self.kind != "center" else None
        return transforms.view(self.images.image(i), self.size, self.kind, rng), self.images.labels[i]


class _StepSampler(Sampler):
    """Batches of (index, step, slot) keys for steps ``start`` .. ``steps - 1``."""

    def __init__(self, order: EpochOrder, batch_size: int, start: int, steps: int):
        self.order, self.batch_size, self.start, self.steps = order, batch_size, start, steps

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield [(int(i), step, slot) for slot, i in enumerate(self.order.batch(step, self.batch_size))]


class _LoaderBatches:
    """``batch_at(step)`` over a DataLoader that runs ahead; restarted if a step is skipped."""

    def __init__(self, images, image_size, batch_size, steps, seed, crop, order, settings):
        self.views = _Views(images, image_size, crop, seed)
        self.batch_size, self.steps, self.order, self.settings = batch_size, steps, order, settings
        self._iterator, self._next = None, None

    def __call__(self, step: int) -> Batch:
        if step != self._next:  # first call, or a jump (resume): start the sampler at `step`
            sampler = _StepSampler(self.order, self.batch_size, step, max(self.steps, step + 1))
            self._iterator = iter(_loader(self.views, sampler, self.settings))
        x, y = next(self._iterator)
        self._next = step + 1
        return _to_device(x, self.settings), y


def _loader(views: _Views, batch_sampler, settings: LoaderSettings) -> DataLoader:
    workers = settings.workers
    return DataLoader(
        views,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=settings.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=settings.prefetch if workers > 0 else None,
    )


def _to_device(x_uint8: torch.Tensor, settings: LoaderSettings) -> torch.Tensor:
    """uint8 batch -> float32 in [-1, 1] on the training device (copied as uint8: 4x fewer bytes)."""
    return augment.to_float(x_uint8.to(settings.device, non_blocking=True))
