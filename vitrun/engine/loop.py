"""The one training loop: pre-training and fine-tuning are modes of it, not copies.

Batches are a pure function of the step (`batch_at(step)`), so a resumed run sees exactly
the batches it would have seen, and the checkpoint needs no data-loader state.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from vitrun.engine import Interrupted, checkpoint
from vitrun.engine.device import Placement
from vitrun.engine.schedules import warmup_then_decay
from vitrun.store import StageDir

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    warmup_steps: int
    schedule: str  # "linear" | "cosine"
    grad_clip: float | None
    log_every: int = 10
    checkpoint_seconds: float = 60.0


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on kernels only (matrices and conv filters), as big_vision's `.*/kernel` rule:
    biases, norm scales, the class token and position embeddings are not decayed."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and name.endswith("weight") else plain).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def supervised(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """The objective of classification: loss_fn(model(images), labels)."""

    def objective(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(images), labels)

    return objective


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_at: Callable[[int], Batch],
    objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    settings: LoopSettings,
    placement: Placement,
    stage_dir: StageDir,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train `model` in place for `settings.steps` steps; returns summary metrics.

    objective(model, images, labels) -> scalar loss: `supervised(loss_fn)` for classification;
    masked-patch pre-training passes its corruption plan in the labels' place.
    """
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    # Where training starts:
    # 1. this stage's own checkpoint, if a killed run left one (resume, nothing lost);
    # 2. otherwise the weights already in `model` (the caller's init: parent stage or scratch).
    start = checkpoint.restore(stage_dir.checkpoint_file, model, optimizer)
    if start == 0:
        torch.manual_seed(seed)
    _truncate_log(stage_dir, start)
    step_fn = torch.compile(model) if placement.compile else model
    model.train()
    last_save = time.monotonic()
    loss_sum, loss_count, last_loss = 0.0, 0, float("nan")
    with _stop_on_sigterm():
        step = start
        try:
            while step < settings.steps:
                scale = warmup_then_decay(step, settings.steps, settings.warmup_steps, settings.schedule)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * scale
                images, labels = batch_at(step)
                images = images.to(placement.device, non_blocking=True)
                labels = labels.to(placement.device, non_blocking=True)
                with placement.autocast():
                    loss = objective(step_fn, images, labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate or set grad_clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip or math.inf)
                optimizer.step()
                step += 1
                last_loss = loss.item()
                loss_sum, loss_count = loss_sum + last_loss, loss_count + 1
                if step % settings.log_every == 0 or step == settings.steps:
                    _log(stage_dir, {"step": step, "loss": loss_sum / loss_count, "lr": base_lrs[0] * scale, "grad_norm": float(grad_norm)})
                    loss_sum, loss_count = 0.0, 0
                if on_step:
                    on_step(step, last_loss)
                if time.monotonic() - last_save > settings.checkpoint_seconds and step < settings.steps:
                    checkpoint.save(stage_dir.checkpoint_file, model, optimizer, step)
                    last_save = time.monotonic()
        except (KeyboardInterrupt, Interrupted):
            if step > start:
                checkpoint.save(stage_dir.checkpoint_file, model, optimizer, step)
            raise Interrupted(f"stopped at step {step} of {settings.steps}; run the same command again to resume") from None
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base  # leave the optimizer as configured
    return {"final_loss": last_loss, "steps": settings.steps}


def _log(stage_dir: StageDir, row: dict) -> None:
    with open(stage_dir.metrics_file, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_log(stage_dir: StageDir, step: int) -> None:
    """Drop log lines past the checkpoint we resume from: they will be logged again."""
    path = stage_dir.metrics_file
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


class _stop_on_sigterm:
    """Turn SIGTERM (a scheduler's kill) into `Interrupted`, so the loop checkpoints first."""

    def __enter__(self):
        def handler(signum, frame):
            raise Interrupted("SIGTERM")

        try:
            self.previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: leave signals alone
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False
