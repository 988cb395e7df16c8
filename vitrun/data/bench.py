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
    cpu_seconds: float | None = None  # CPU time of the timed steps: this process and its workers

    @property
    def images_per_s(self) -> float:
        return self.steps * self.batch_size / self.seconds

    @property
    def cores_used(self) -> int:
        """Cores that decode: the workers, or the training process itself when there are none."""
        return max(1, self.workers)

    @property
    def per_core(self) -> float:
        """Images/s per core: from the CPU time this process and its workers spent (robust to
        other jobs on the machine), else (no /proc) from wall time over the workers."""
        if self.cpu_seconds:
            return self.steps * self.batch_size / self.cpu_seconds
        return self.images_per_s / self.cores_used

    def projected(self, cores: int) -> float:
        """Images/s on a machine of ``cores`` cores, all but one decoding (the loader's default
        on a GPU), assuming each decodes at this run's per-core rate (decode is embarrassingly
        parallel; memory bandwidth and a shared machine make this an upper estimate)."""
        return self.per_core * max(1, cores - 1)

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
    model_batch: int = 8,
    decode: str = "cpu",
    device: str = "cpu",
) -> BenchResult:
    """Time ``steps`` training batches of ``source`` (after ``warmup`` untimed ones).

    model_batch: the model step is timed on this many images of the last batch (a big model
    on a CPU takes minutes for a whole batch) and scaled to the batch (per-image cost).
    """
    from vitrun import data
    from vitrun.data import loader

    ds = data.load(source, image_size=image_size, cache_dir=cache_dir, options=options)
    batch_at = loader.train_batches(ds.train, image_size, batch_size, warmup + steps, 0, crop, loader.LoaderSettings(workers=workers, device=torch.device(device), decode=decode))
    for step in range(warmup):
        batch_at(step)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    for step in range(warmup, warmup + steps):
        x, y = batch_at(step)
    seconds, cpu_ended = time.perf_counter() - started, _cpu_seconds()
    cpu_seconds = cpu_ended - cpu_started if cpu_started is not None and cpu_ended is not None else None
    model_seconds = _model_step(model, ds.num_classes, x[:model_batch], y[:model_batch]) * len(x) / min(len(x), model_batch) if model else None
    return BenchResult(source, len(ds.train), image_size, batch_size, workers, steps, seconds, model, model_seconds, None if data.is_embedded(source) else cpu_seconds)


def _cpu_seconds() -> float | None:
    """CPU seconds used so far by this process and its live children (loader workers), from
    /proc; None where there is no /proc."""
    import os

    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = time.process_time()
    try:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == os.getpid():  # fields[1]: parent pid; [11], [12]: user, system ticks
                total += (int(fields[11]) + int(fields[12])) / ticks
    except OSError:
        return None
    return total


def _model_step(name: str, num_classes: int, x: torch.Tensor, y: torch.Tensor, repeats: int = 5) -> float:
    """Seconds per training step of model ``name`` on batch ``x`` (CPU, fp32), median of ``repeats``."""
    from vitrun import models
    from vitrun.benchmark import train_step_seconds
    from vitrun.engine.device import place

    net = models.create(name, num_classes, x.shape[-1])
    return train_step_seconds(net, x, y, place("cpu", "fp32"), repeats)
