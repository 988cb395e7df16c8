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
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from vitrun.engine import Diverged, Interrupted, checkpoint
from vitrun.engine.device import Placement
from vitrun.engine.schedules import warmup_then_decay
from vitrun.store import StageDir, read_metrics, write_atomic

Batch = tuple[torch.Tensor, torch.Tensor]


class Extra(Protocol):
    """Something that rides along the loop (vitrun/engine/ema.py, early_stop.py, tblog.py):
    its state travels in the checkpoint (under its class name), so a resumed run is bit-identical."""

    def after_step(self, step: int, model: nn.Module) -> None: ...  # after every optimiser step
    def on_log(self, row: dict) -> None: ...  # every metrics.jsonl row
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
    on_notice: Callable[[str], None] | None = None,
    extras: Sequence[Extra] = (),
) -> dict[str, float]:
    """Train `model` in place for `settings.steps` steps; returns summary metrics.

    objective(model, images, labels) -> scalar loss: `supervised(loss_fn)` for classification;
    masked-patch pre-training passes its corruption plan in the labels' place.
    Raises `Diverged` when the loss goes non-finite, `Interrupted` after SIGTERM / SIGINT (the
    step under way is finished and checkpointed first, so a resumed run is bit-identical).
    """
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    # Where training starts:
    # 1. this stage's own checkpoint, if a killed run left one (resume, nothing lost);
    #    an unreadable one is set aside and reported (then as 2);
    # 2. otherwise the weights already in `model` (the caller's init: parent stage or scratch).
    start, kept = checkpoint.restore(stage_dir.checkpoint_file, model, optimizer, on_notice)
    saved = kept.get("extras", {})  # by class: a run option (TensorBoard) may come or go on resume
    for extra in extras:
        if type(extra).__name__ in saved:
            extra.load_state_dict(saved[type(extra).__name__])
    if start == 0:
        torch.manual_seed(seed)
    _truncate_log(stage_dir, start)
    step_fn = torch.compile(model) if placement.compile else model
    model.train()
    last_save = time.monotonic()
    # The running loss of the current log window travels in the checkpoint: a resumed run logs
    # the same averages as an uninterrupted one.
    loss_sum, loss_count, last_loss = kept.get("loss_sum", 0.0), kept.get("loss_count", 0), kept.get("last_loss", float("nan"))

    def save(at: int) -> None:
        checkpoint.save(stage_dir.checkpoint_file, model, optimizer, at, {"loss_sum": loss_sum, "loss_count": loss_count, "last_loss": last_loss, "extras": {type(e).__name__: e.state_dict() for e in extras}})

    step, at_boundary = start, True
    with _StopRequests() as stop:
        try:
            while step < settings.steps:
                at_boundary = False  # from here until `step += 1` the weights are between steps
                scale = warmup_then_decay(step, settings.steps, settings.warmup_steps, settings.schedule)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * scale
                images, labels = batch_at(step)
                images = images.to(placement.device, non_blocking=True)
                labels = labels.to(placement.device, non_blocking=True)
                with placement.autocast():
                    loss = objective(step_fn, images, labels)
                if not torch.isfinite(loss):
                    raise Diverged(step, loss.item())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip or math.inf)
                optimizer.step()
                step += 1
                for extra in extras:
                    extra.after_step(step, model)
                at_boundary = True
                last_loss = loss.item()
                loss_sum, loss_count = loss_sum + last_loss, loss_count + 1
                if step % settings.log_every == 0 or step == settings.steps:
                    row = {"step": step, "loss": loss_sum / loss_count, "lr": base_lrs[0] * scale, "grad_norm": float(grad_norm)}
                    _log(stage_dir, row)
                    for extra in extras:
                        extra.on_log(row)
                    loss_sum, loss_count = 0.0, 0
                if on_step:
                    on_step(step, last_loss)
                if stop.requested:
                    raise Interrupted(stop.requested)
                if time.monotonic() - last_save > settings.checkpoint_seconds and step < settings.steps:
                    save(step)
                    last_save = time.monotonic()
        except (KeyboardInterrupt, Interrupted):
            # Only at a step boundary does the model match `step`; an exception raised inside a
            # step leaves the last checkpoint as it is (resuming from it stays exact).
            if step > start and at_boundary:
                save(step)
            raise Interrupted(f"stopped at step {step} of {settings.steps}; run the same command again to resume") from None
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base  # leave the optimizer as configured
    return {"final_loss": last_loss, "steps": settings.steps}


def _log(stage_dir: StageDir, row: dict) -> None:
    with open(stage_dir.metrics_file, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_log(stage_dir: StageDir, step: int) -> None:
    """Drop log lines past the checkpoint we resume from (they will be logged again), and a
    torn last line (a full disk or a kill mid-write): it holds nothing a resume needs."""
    path = stage_dir.metrics_file
    if not path.is_file():
        return
    kept = [row for row in read_metrics(path) if row.get("step", 0) <= step]
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept).encode())  # as _log wrote them


class _StopRequests:
    """SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) only set a flag while training:
    the loop finishes the step under way, checkpoints it and stops. Raising inside the step
    (even inside `optimizer.step()`) would save half-updated weights under the old step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.requested = ""
        self.previous = {}

        def handler(signum, frame):
            self.requested = signal.Signals(signum).name

        try:
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: leave signals alone
            self.__exit__()
        return self

    def __exit__(self, *exc):
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}
        return False
