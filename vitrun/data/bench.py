"""How fast the training input pipeline runs: ``vitrun bench data SOURCE``.

Measures images/s through exactly what training uses (``loader.train_batches``: sampling,
decode, crop, flip, collate, conversion to [-1, 1]), after a warm-up that absorbs worker
start-up and caches. Optionally times a model's training step (forward + backward +
optimizer) on batches of the same shape, to tell whether the loader keeps the model busy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BenchResult:
    source: str
    train_images: int
    image_size: int
    batch_size: int
    workers: int
    steps: int
    seconds: float
    model: str | None = None
    model_seconds: float | None = None  # per step

    @property
    def images_per_s(self) -> float:
        return self.steps * self.batch_size / self.seconds

    @property
    def model_images_per_s(self) -> float | None:
        return self.batch_size / self.model_seconds if self.model_seconds else None


def measure(
    source: str,
    *,
    image_size: int,
    batch_size: int,
    workers: int,
    steps: int,
    warmup: int = 2,
    crop: str = "inception",
    model: str | None = None,
    cache_dir: str | None = None,
    options=None,
) -> BenchResult:
    """Time ``steps`` training batches of ``source`` (after ``warmup`` untimed ones)."""
    from vitrun import data
    from vitrun.data import loader

    ds = data.load(source, image_size=image_size, cache_dir=cache_dir, options=options)
    batch_at = loader.train_batches(ds.train, image_size, batch_size, warmup + steps, 0, crop, loader.LoaderSettings(workers=workers))
    for step in range(warmup):
        batch_at(step)
    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        x, y = batch_at(step)
    seconds = time.perf_counter() - started
    model_seconds = _model_step(model, ds.num_classes, x, y) if model else None
    return BenchResult(source, len(ds.train), image_size, batch_size, workers, steps, seconds, model, model_seconds)


def _model_step(name: str, num_classes: int, x: torch.Tensor, y: torch.Tensor, repeats: int = 5) -> float:
    """Seconds per training step of model ``name`` on batch ``x`` (CPU, fp32), median of ``repeats``."""
    from vitrun import models
    from vitrun.benchmark import train_step_seconds
    from vitrun.engine.device import place

    net = models.create(name, num_classes, x.shape[-1])
    return train_step_seconds(net, x, y, place("cpu", "fp32"), repeats)
