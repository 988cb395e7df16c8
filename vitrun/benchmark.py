"""Model speed against timm, same architecture, same machine, one run.

`vitrun bench model ViT-B/16` builds our model and the timm module with the same
architecture and weights (`vitrun.interop.to_timm`), then times both in alternation:
inference (eval mode, no grad) and a training step (forward, backward, Adam update, as in
pre-training). The numbers are images per second, median over the timed repeats, and
our/timm ratios; the alternation keeps a busy machine from favouring one side.

timm is optional here: without it only our numbers are printed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from vitrun import models
from vitrun.engine.device import Placement


@dataclass(frozen=True)
class Timing:
    """Images per second of one model for one kind of work (median over repeats)."""

    model: str  # "vitrun" | "timm"
    work: str  # "inference" | "train step"
    images_per_s: float


def bench_model(
    name: str,
    placement: Placement,
    image_size: int = 224,
    batch_size: int = 8,
    repeats: int = 5,
    warmup: int = 2,
    compare: bool = True,
    **options,
) -> list[Timing]:
    """Time `name` (plus model options) and, when timm is installed and `compare`, its timm twin."""
    ours = models.create(name, num_classes=1000, image_size=image_size, **options)
    if getattr(ours.spec, "pre_logits", False):
        ours.reset_head(1000)  # timm's ViT has no pre-logits: compare the fine-tuning shape
    contenders = {"vitrun": ours}
    if compare:
        twin = timm_twin(ours)
        if twin is not None:
            contenders["timm"] = twin
    x = torch.randn(batch_size, 3, image_size, image_size, device=placement.device)
    y = torch.randint(0, 1000, (batch_size,), device=placement.device)
    timings = []
    for work, make_step in (("inference", _inference), ("train step", _train_step)):
        steps = {who: make_step(m.to(placement.device), x, y, placement) for who, m in contenders.items()}
        seconds = _alternate(steps, repeats, warmup, placement.device)
        timings += [Timing(who, work, batch_size / statistics.median(s)) for who, s in seconds.items()]
    return timings


def train_step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, placement: Placement, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of one training step of `model` on the batch (x, y)."""
    seconds = _alternate({"model": _train_step(model, x, y, placement)}, repeats, warmup, placement.device)
    return statistics.median(seconds["model"])


def timm_twin(model: nn.Module) -> nn.Module | None:
    """The timm module with the same architecture and weights, or None without timm."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return None
    from vitrun.interop import to_timm

    return to_timm(model)


def _inference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, placement: Placement) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.no_grad(), placement.autocast():
            model(x)

    return step


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, placement: Placement) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with placement.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _alternate(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each step, measured in turns: A, B, A, B, ..."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {who: [] for who in steps}
    for _ in range(repeats):
        for who, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            seconds[who].append(time.perf_counter() - start)
    return seconds
