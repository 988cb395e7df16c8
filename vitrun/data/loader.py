"""Batches for the training loop and for evaluation, from any image set.

The training loop asks for ``batch_at(step)``: a batch must be a pure function of
(seed, step), so a killed run resumes to bit-identical weights. Both paths keep that:

* in memory (``ImageSet``, embedded sources): index the uint8 tensor and augment this rank's
  slice at once (``augment.random_crop_flip``); no workers, nothing to overlap. On CUDA the
  rows are gathered into pinned memory, cross to the device as uint8 without blocking the
  host, and are augmented there (``pinned.gather``).
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
import shutil
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset
from PIL import Image

from vitrun.data import augment, gpu_decode, pinned, transforms
from vitrun.data.imageset import ImageSet
from vitrun.data.lazy import LazyImageSet
from vitrun.data.options import SourceWarning
from vitrun.data.streaming import StreamImageSet
from vitrun.data.streaming import train_batches as stream_batches

Batch = tuple[torch.Tensor, torch.Tensor]  # float32 (B, 3, S, S) in [-1, 1], int64 (B,)
_VIEW_TAG = 0x71E4  # salts per-image augmentation streams apart from other seeded draws
MAX_SKIPPED = 16  # unreadable images in a row before a source counts as damaged


@dataclass(frozen=True)
class LoaderSettings:
    """How on-disk images are loaded (``[run]``: never changes a result)."""

    workers: int = 0  # decoding processes; 0 decodes in the training process
    prefetch: int = 2  # batches each worker prepares ahead
    device: torch.device = torch.device("cpu")  # batches are handed over on it
    decode: str = "cpu"  # "gpu": JPEGs decoded on the device (gpu_decode.py); CPU when there is none

    def decodes_on_gpu(self) -> bool:
        if self.decode != "gpu":
            return False
        if gpu_decode.usable(self.device):
            return True
        warnings.warn(f"decode = \"gpu\" needs a CUDA device and torchvision; the training device is {self.device}: decoding on the CPU", SourceWarning)
        return False

    @staticmethod
    def auto_workers(device: torch.device = torch.device("cpu")) -> int:
        """Cores the training step leaves free (no upper bound: a 64-core GPU host gets 63).

        On a GPU the training process needs about one core: one worker per other core. On
        a CPU, torch's threads already use every core, and a decoding worker would fight
        them (on 2 cores, 2 training threads + 1 busy worker ran several times slower):
        only cores beyond torch's threads get workers, so a small CPU decodes in-process.
        """
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        busy = 1 if device.type == "cuda" else torch.get_num_threads()
        return max(0, cores - busy)


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
    images: ImageSet | LazyImageSet | StreamImageSet,
    image_size: int,
    batch_size: int,
    steps: int,
    seed: int,
    crop: str,
    settings: LoaderSettings = LoaderSettings(),
    part: tuple[int, int] = (0, 1),
) -> Callable[[int], Batch]:
    """``batch_at(step)`` for the training loop: augmented batch ``step`` of ``images``.

    part: (rank, world): only slice ``rank`` of ``world`` equal slices of each batch, each
    image viewed exactly as in the whole batch (data parallelism: every rank its own slice).

    crop: "inception" (random area 5-100% for real images, 35-100% for embedded ones, as
    ``augment``) or "resize" (shorter side to the target, random square crop); both flip.
    """
    if isinstance(images, StreamImageSet):  # no random access: read in order, this rank's part (streaming.py)
        return stream_batches(images, image_size, batch_size, seed, crop, settings.device, max(1, settings.workers), part)
    order = EpochOrder(len(images), seed)
    if isinstance(images, ImageSet):
        # A square image already at the target size: "resize" + random crop is the whole image.
        full = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0)) if crop == "resize" else {}

        a, b = _slice_of(batch_size, part)

        def batch_at(step: int) -> Batch:
            idx = order.batch(step, batch_size)[a:b]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)  # boxes drawn for the whole batch, per image
            pixels, labels = pinned.gather(images.images, idx, settings.device), pinned.gather(images.labels, idx, settings.device)
            return augment.random_crop_flip(pixels, image_size, gen, within=(a, batch_size), **full), labels

        return batch_at
    return _LoaderBatches(images, image_size, batch_size, steps, seed, crop, order, settings, part)


def _slice_of(batch_size: int, part: tuple[int, int]) -> tuple[int, int]:
    """[start, end) of slice ``rank`` of a batch cut in ``world`` equal slices."""
    rank, world = part
    if batch_size % world:
        raise ValueError(f"a batch of {batch_size} does not split into {world} equal slices")
    size = batch_size // world
    return rank * size, (rank + 1) * size


def eval_batches(images: ImageSet | LazyImageSet, image_size: int, batch_size: int, settings: LoaderSettings = LoaderSettings(), shard: tuple[int, int] = (0, 1), view: str = "center") -> Iterator[Batch]:
    """Evaluation views of every image, in order. view: "center" (shorter side resized, centre
    crop) or "full" (whole image resized to a square: vit_jax's fine-tuning evaluation).

    shard: (rank, world): only batches rank, rank + world, … (evaluation sharded over ranks).
    """
    if view not in transforms.EVAL_VIEWS:
        raise ValueError(f"unknown evaluation view {view!r} (known: {', '.join(transforms.EVAL_VIEWS)})")
    rank, world = shard
    starts = range(rank * batch_size, len(images), world * batch_size)
    if isinstance(images, ImageSet):
        resize = augment.center if view == "center" else augment.full
        for start in starts:
            rows = torch.arange(start, min(start + batch_size, len(images)))
            yield resize(pinned.gather(images.images, rows, settings.device), image_size), pinned.gather(images.labels, rows, settings.device)
        return
    chunks = _chunks(settings, batch_size)
    pieces = []  # each batch in `chunks` pieces, spread over the workers
    for start in starts:
        keys = [(i, -1, -1) for i in range(start, min(start + batch_size, len(images)))]
        pieces += [piece for piece in _split(keys, chunks) if piece]
    parts, count = [], 0
    views = _Views(images, image_size, view, 0, settings.decodes_on_gpu())
    for part in _loader(views, pieces, settings, -(-batch_size // chunks)):
        parts.append(part)
        count += len(part) if views.gpu else len(part[1])
        if count == batch_size:
            yield _join(parts, views, settings)
            parts, count = [], 0
    if parts:
        yield _join(parts, views, settings)


# -- on-disk path ------------------------------------------------------------------------

class _Views(TorchDataset):
    """Item (i, step, slot) -> (uint8 (3, S, S), label): image i decoded and viewed in a worker."""

    def __init__(self, images: LazyImageSet, size: int, kind: str, seed: int, gpu: bool = False):
        self.images, self.size, self.kind, self.seed, self.gpu = images, size, kind, seed, gpu

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]):
        i, step, slot = key
        # The view's randomness depends on (seed, step, slot) only: not on the worker, nor
        # on which other images share the batch, so any worker count gives the same batch.
        rng = np.random.default_rng([_VIEW_TAG, self.seed, step, slot]) if self.kind not in transforms.EVAL_VIEWS else None
        state = rng.bit_generator.state if rng is not None else None
        for j in range(i, i + MAX_SKIPPED):  # a corrupt image: the next readable one takes its slot
            j %= len(self.images)
            try:
                if self.gpu:  # bytes and the view's box: the training process decodes on the GPU
                    return gpu_decode.item(self.images, j, self.size, self.kind, rng), self.images.labels[j]
                return transforms.view(self.images.image(j), self.size, self.kind, rng), self.images.labels[j]
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                warnings.warn(f"{self.images.where(j)}: not a readable image ({type(err).__name__}: {err}); the next image takes its place")
                if rng is not None:
                    rng.bit_generator.state = state  # the substitute gets the slot's own view
        raise CorruptData(f"{MAX_SKIPPED} unreadable images in a row from {self.images.where(i)} on; the shards are damaged (re-write them)")


class CorruptData(RuntimeError):
    """Many images in a row cannot be decoded: a damaged source, not a stray bad file."""


class _StepSampler(Sampler):
    """Chunks of (index, step, slot) keys for steps ``start`` .. ``steps - 1``: each step's batch
    in ``chunks`` contiguous pieces, so that many workers share one step (and one worker never
    decodes a whole 4096-image batch while the others wait)."""

    def __init__(self, order: EpochOrder, batch_size: int, start: int, steps: int, chunks: int, rows: tuple[int, int] | None = None):
        self.order, self.batch_size, self.start, self.steps, self.chunks = order, batch_size, start, steps, chunks
        self.rows = rows or (0, batch_size)  # this rank's slice of each batch

    def __len__(self) -> int:
        return (self.steps - self.start) * self.chunks

    def __iter__(self):
        for step in range(self.start, self.steps):
            keys = [(int(i), step, slot) for slot, i in enumerate(self.order.batch(step, self.batch_size))]
            yield from _split(keys[self.rows[0] : self.rows[1]], self.chunks)


def _split(keys: list, chunks: int) -> list[list]:
    """``keys`` in ``chunks`` contiguous pieces of near-equal size, in order."""
    bounds = np.linspace(0, len(keys), chunks + 1).round().astype(int)
    return [keys[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _chunks(settings: LoaderSettings, batch_size: int) -> int:
    return max(1, min(settings.workers, batch_size))


class _LoaderBatches:
    """``batch_at(step)`` over a DataLoader that runs ahead; restarted if a step is skipped."""

    def __init__(self, images, image_size, batch_size, steps, seed, crop, order, settings, part=(0, 1)):
        self.views = _Views(images, image_size, crop, seed, settings.decodes_on_gpu())
        self.batch_size, self.steps, self.order, self.settings = batch_size, steps, order, settings
        self.rows = _slice_of(batch_size, part)
        self.chunks = _chunks(settings, self.rows[1] - self.rows[0])
        self._iterator, self._next = None, None

    def __call__(self, step: int) -> Batch:
        if step != self._next:  # first call, or a jump (resume): start the sampler at `step`
            sampler = _StepSampler(self.order, self.batch_size, step, max(self.steps, step + 1), self.chunks, self.rows)
            self._iterator = iter(_loader(self.views, sampler, self.settings, -(-(self.rows[1] - self.rows[0]) // self.chunks)))
        parts = [next(self._iterator) for _ in range(self.chunks)]
        self._next = step + 1
        return _join(parts, self.views, self.settings)


def _join(parts: list, views: _Views, settings: LoaderSettings) -> Batch:
    """One batch on the device from the chunks the workers made."""
    if views.gpu:
        items = [item for part in parts for item in part]
        x = gpu_decode.assemble([payload for payload, _ in items], views.size, settings.device)
        return augment.to_float(x), torch.stack([y for _, y in items])
    return augment.to_float(pinned.concat([p[0] for p in parts], settings.device)), pinned.concat([p[1] for p in parts], settings.device)


def _loader(views: _Views, batch_sampler, settings: LoaderSettings, chunk: int) -> DataLoader:
    workers = settings.workers
    if workers:
        check_shared_memory(workers, settings.prefetch, chunk, views.size)
    return DataLoader(
        views,
        batch_sampler=batch_sampler,
        # workers: torch's collate, which writes into shared memory; GPU decode: items as they are
        collate_fn=gpu_decode.collate if views.gpu else None if workers else _stack,
        num_workers=workers,
        pin_memory=False,  # `_join` assembles each batch in pinned memory itself (pinning chunks first would copy twice)
        persistent_workers=workers > 0,
        prefetch_factor=settings.prefetch if workers > 0 else None,
    )


def _stack(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate in the training process: numpy's single-threaded copy (see ``transforms.view``)."""
    return torch.from_numpy(np.stack([x.numpy() for x, _ in items])), torch.stack([y for _, y in items])


class SharedMemoryTooSmall(RuntimeError):
    """/dev/shm cannot hold the batches the workers prepare ahead."""


def check_shared_memory(workers: int, prefetch: int, chunk: int, size: int, shm: str = "/dev/shm") -> None:
    """Raise SharedMemoryTooSmall, with the fix, when ``shm`` has less room than the chunks in
    flight need (workers x prefetch chunks of uint8 (chunk, 3, size, size), twice for slack)."""
    if not os.path.isdir(shm):
        return  # not Linux: torch shares memory another way
    need = 2 * workers * prefetch * chunk * 3 * size * size
    free = shutil.disk_usage(shm).free
    if free < need:
        raise SharedMemoryTooSmall(
            f"{shm} has {free / 2**20:,.0f} MiB free but {workers} loader workers x {prefetch} prefetched chunks of {chunk} images at {size} px need about {need / 2**20:,.0f} MiB; "
            f"lower [run] workers or prefetch, or enlarge {shm} (docker run --shm-size=16g)"
        )
