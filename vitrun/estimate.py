"""Cost of a plan before running it (`vitrun recipe --dry-run`): FLOPs, time here, GPU-hours.

* FLOPs: `stages.training_flops` (3 × forward per training image; evaluation not counted).
* Time on this device: one training step (forward, backward, SGD update) of each distinct
  (model, resolution up to MEASURE_MAX_IMAGE) is timed the best of two steps after two untimed ones, at a batch
  of about MEASURE_FLOPS of work (tiny models run far below their throughput one image at a time); the stage's time is its FLOPs at the FLOP/s that step reached. Small batches
  run below a device's best throughput, so on a GPU this errs long.
* Time on a named GPU: FLOPs / (peak dense bf16 tensor FLOP/s × ASSUMED_MFU). The peaks are the
  vendors' data-sheet numbers (V100: fp16, it has no bf16); 40% model-FLOPs utilisation is
  what well-tuned ViT training reaches on them (an assumption, stated in the output).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Iterable

MEASURE_FLOPS = 3e10  # the timed step's batch: about this much work (a second on a laptop CPU) ...
MEASURE_BATCH = (2, 64)  # ... within these bounds (and never above the stage's batch)
MEASURE_MAX_IMAGE = 224  # larger resolutions are timed at this one and scaled by FLOPs
ASSUMED_MFU = 0.40
EXA = 1e18


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_flops: float  # dense bf16 (V100: fp16) tensor-core FLOP/s


GPUS = {
    "h100": Gpu("NVIDIA H100 SXM", 989e12),
    "a100": Gpu("NVIDIA A100", 312e12),
    "v100": Gpu("NVIDIA V100", 125e12),
}


def gpu_seconds(flops: float, gpu: str) -> float:
    return flops / (GPUS[gpu].peak_flops * ASSUMED_MFU)


def measured_flops_per_second(stages: Iterable[Any], device: str = "cpu") -> dict[tuple[str, int], float]:
    """(model spec json, image size) -> FLOP/s of one measured training step on `device`."""
    from vitrun import models
    from vitrun.stages import _spec

    out: dict[tuple[str, int], float] = {}
    for stage in stages:
        section = stage.training
        if not section or not section.get("steps"):
            continue
        key = _rate_key(stage)
        if key not in out:
            spec = _spec(stage.config)
            per_image = 3.0 * models.forward_flops(spec, key[1])
            batch = int(min(max(MEASURE_FLOPS // per_image, MEASURE_BATCH[0]), MEASURE_BATCH[1], max(section["batch_size"], MEASURE_BATCH[0])))
            out[key] = per_image * batch / _step_seconds(spec, key[1], batch, device)
    return out


def _rate_key(stage: Any) -> tuple[str, int]:
    import json

    return json.dumps(stage.config["model"], sort_keys=True), min(stage.training["image_size"], MEASURE_MAX_IMAGE)


@functools.lru_cache(maxsize=256)  # a process planning many recipes (tests, notebooks) times each model once
def _step_seconds(spec, image_size: int, batch: int, device: str) -> float:
    import torch
    import torch.nn.functional as F

    from vitrun import models

    torch.manual_seed(0)
    model = models.build(spec, 10, image_size).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.zeros(batch, dtype=torch.int64, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # allocations, kernel selection, thread pools: the first steps run several times slower
    step()
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-6)


def stage_seconds_here(stage: Any, flops: float, rates: dict[tuple[str, int], float]) -> float | None:
    if not flops or not stage.training:
        return None
    rate = rates.get(_rate_key(stage))
    return flops / rate if rate else None


def duration(seconds: float | None) -> str:
    """A time as people read it: "45 s", "12 min", "3.4 h", "5.1 d"."""
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 730 * 86400:
        return f"{seconds / 86400:.1f} d"
    return f"{seconds / 86400 / 365:.0f} years"


def flops_text(flops: float) -> str:
    """FLOPs as the paper states compute: exaFLOPs when large, else scientific notation."""
    if not flops:
        return "–"
    return f"{flops / EXA:.3g} EFLOPs" if flops >= 1e15 else f"{flops:.2e}"
