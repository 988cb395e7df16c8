"""The one training loop: pre-training and fine-tuning are modes of it, not copies.

Batches are a pure function of the step (`batch_at(step)`), so a resumed run sees exactly
the batches it would have seen, and the checkpoint needs no data-loader state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from vitrun.engine import Diverged, Interrupted, checkpoint, distributed, micro_batch
from vitrun.engine.distributed import World
from vitrun.engine.device import Placement, to_device
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
    checkpoint_steps: int | None = None  # also checkpoint every this many steps
    keep_checkpoints: int = 1  # numbered checkpoints kept beside checkpoint.pt when > 1
    accumulation: int = 1  # micro-steps per step: `batch_at(step)` is cut into this many pieces
    auto_micro_batch: bool = False  # instead: the pieces that fit in memory, found before the first step (micro_batch.py)
    find_unused_parameters: bool = False  # DDP: the model carries parameters its loss never reads


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
    world: World | None = None,
    extras: Sequence[Extra] = (),
) -> dict[str, float]:
    """Train `model` in place for `settings.steps` steps; returns summary metrics.

    batch_at(step): this rank's slice of the step's global batch, (images, labels) with B =
    global batch / world size; cut into `settings.accumulation` micro-steps here. Each
    micro-step's mean loss is weighted by its share of the slice and DDP averages over ranks,
    so the gradient is the mean over the global batch for any split (exact up to fp32 order).
    objective(model, images, labels) -> scalar loss: `supervised(loss_fn)` for classification;
    masked-patch pre-training passes its corruption plan (a tensor or a tuple of tensors, each
    with the batch first) in the labels' place.
    Raises `Diverged` when the loss or gradient goes non-finite (checked every `log_every` steps
    and before a checkpoint, so the step never waits for the device; the step where it was first
    seen is reported), `Interrupted` after SIGTERM / SIGINT (the step under way is finished and
    checkpointed first, so a resumed run is bit-identical).
    Only rank 0 writes (metrics, checkpoints); every rank restores rank 0's checkpoint.
    """
    world = world or distributed.current()
    main = world.is_main()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    # Where training starts:
    # 1. this stage's own checkpoint, if a killed run left one (resume, nothing lost);
    #    an unreadable one is set aside and reported (then as 2) by rank 0, and the others
    #    follow rank 0's answer;
    # 2. otherwise the weights already in `model` (the caller's init: parent stage or scratch).
    world.check()  # a rank that failed before training (its data, its model): stop here
    start, kept = checkpoint.restore(stage_dir.checkpoint_file, model, optimizer, on_notice) if main else (0, {})
    start, kept = world.broadcast((start, kept))
    if start and not main:
        checkpoint.restore(stage_dir.checkpoint_file, model, optimizer, set_aside=False)
    saved = kept.get("extras", {})  # by class: a run option (TensorBoard) may come or go on resume
    for extra in extras:
        if type(extra).__name__ in saved:
            extra.load_state_dict(saved[type(extra).__name__])
    if start == 0:
        torch.manual_seed(seed)
    # What started the stage travels in its checkpoints: a resume on other software or hardware
    # still runs (the user may have no choice), but says so, since the numbers may move.
    started_with = kept.get("env") or environment(placement)
    if start and main and on_notice:
        drift = describe_drift(started_with, environment(placement))
        if drift:
            on_notice(f"{stage_dir.path.name}: resumed at step {start} on {drift}; results may differ slightly from an uninterrupted run")
    if main:
        _truncate_log(stage_dir, start)
    channels_last = placement.prepare(model)
    accumulation, chosen = settings.accumulation, {}
    if settings.auto_micro_batch and start < settings.steps:  # probed on the bare model: DDP would all-reduce
        # a resumed stage keeps the micro-batch it started with while it still fits (bit for bit)
        accumulation, batch_at, chosen = _auto_micro_batch(model, optimizer, objective, batch_at, start, placement, world, channels_last, kept.get("micro_batch"))
        if main and on_notice:
            on_notice(f"{stage_dir.path.name}: micro_batch = \"auto\": {chosen['micro_batch']} images per micro-step × {accumulation} accumulation ({chosen['micro_batch_auto']})")
    wrapped = _data_parallel(model, placement, world, settings.find_unused_parameters)
    step_fn = torch.compile(wrapped) if placement.compile else wrapped
    model.train()
    last_save = time.monotonic()
    # The running loss of the current log window travels in the checkpoint: a resumed run logs
    # the same averages as an uninterrupted one. It stays on the device between log steps
    # (reading it back would make the host wait for every step).
    device = placement.device
    loss_sum = torch.tensor(kept.get("loss_sum", 0.0), dtype=torch.float64, device=device)
    loss_count, last_loss = kept.get("loss_count", 0), kept.get("last_loss", float("nan"))
    # The first step whose loss or gradient was non-finite, and that loss: read back only at
    # log and checkpoint steps. The gradient norm is of the all-reduced gradient, so a non-finite
    # loss on any rank shows on every rank.
    first_bad = torch.tensor(-1, dtype=torch.int64, device=device)
    bad_loss = torch.zeros((), dtype=torch.float64, device=device)

    writer = checkpoint.BackgroundWriter()  # the step goes on while the disk writes

    def save(at: int) -> None:
        if main:
            state = {"loss_sum": float(loss_sum), "loss_count": loss_count, "last_loss": last_loss, "env": started_with, "extras": {type(e).__name__: e.state_dict() for e in extras}}
            if chosen:
                state["micro_batch"] = chosen["micro_batch"]
            writer.save(stage_dir.checkpoint_file, model, optimizer, at, state, settings.keep_checkpoints)

    def check_finite() -> None:
        """Raise Diverged on every rank alike (a meeting point: every rank calls it at one step)."""
        seen = [(bad, loss) for bad, loss in world.gather((int(first_bad), float(bad_loss))) if bad >= 0]
        if seen:
            bad, loss = min(seen)
            raise distributed.agreed(Diverged(bad, loss))

    step, at_boundary = start, True
    with _StopRequests() as stop:
        try:
            while step < settings.steps:
                at_boundary = False  # from here until `step += 1` the weights are between steps
                scale = warmup_then_decay(step, settings.steps, settings.warmup_steps, settings.schedule)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * scale
                optimizer.zero_grad(set_to_none=True)
                # Rank 0's clock decides checkpoints; the ranks agree on it with the step's other news.
                want_save = main and step + 1 < settings.steps and _checkpoint_due(step + 1, last_save, settings)
                step_loss, state, save_now = _forward_backward(step_fn, wrapped, objective, batch_at, step, accumulation, placement, world, stop, want_save, channels_last)
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip or math.inf)
                optimizer.step()
                newly_bad = (first_bad < 0) & ~(torch.isfinite(step_loss) & torch.isfinite(grad_norm))
                first_bad = torch.where(newly_bad, step, first_bad)
                bad_loss = torch.where(newly_bad, step_loss, bad_loss)
                step += 1
                for extra in extras:
                    extra.after_step(step, model)
                at_boundary = True
                loss_sum, loss_count = loss_sum + step_loss, loss_count + 1
                if step % settings.log_every == 0 or step == settings.steps:
                    check_finite()
                    # The one read-back per log window: the mean loss over ranks and steps.
                    window = float(world.sum(loss_sum)) / world.size / loss_count
                    last_loss = float(world.sum(step_loss)) / world.size
                    row = {"step": step, "loss": window, "lr": base_lrs[0] * scale, "grad_norm": float(grad_norm)}
                    if main:
                        _log(stage_dir, row)
                    for extra in extras:
                        extra.on_log(row)
                    loss_sum, loss_count = torch.zeros_like(loss_sum), 0
                if on_step:
                    on_step(step, last_loss)
                if state == distributed.STOP:
                    raise Interrupted(stop.requested or "a stop request on another rank")
                if save_now:
                    check_finite()  # never checkpoint weights a non-finite step has spoiled
                    save(step)
                    last_save = time.monotonic()
        except (KeyboardInterrupt, Interrupted):
            # Only at a step boundary does the model match `step`; an exception raised inside a
            # step leaves the last checkpoint as it is (resuming from it stays exact).
            if step > start and at_boundary and int(first_bad) < 0:
                save(step)
            writer.wait()
            raise distributed.agreed(Interrupted(f"stopped at step {step} of {settings.steps}; run the same command again to resume")) from None
        except BaseException:
            with contextlib.suppress(Exception):  # the stage's own error is the one to report
                writer.wait()
            raise
    writer.wait()  # on disk before the stage ends (finishing removes the checkpoint)
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base  # leave the optimizer as configured
    return {"final_loss": last_loss, "steps": settings.steps, **({"parallel": chosen} if chosen else {})}


def _auto_micro_batch(model, optimizer, objective, batch_at, step: int, placement: Placement, world: World, channels_last: bool, before: int | None = None) -> tuple[int, Callable[[int], Batch], dict]:
    """(accumulation, batch_at, what stage.json records): the micro-batch that fits this rank's
    slice of step `step` (engine/micro_batch.py), the smallest over the ranks; the probed batch
    is handed to the first step rather than loaded twice. before: the micro-batch a resumed
    stage ran with: tried first, never exceeded."""
    try:
        first = batch_at(step)
        images, labels = first
        per_rank = len(images)

        def run(m: int) -> None:  # a micro-step of m images as `_forward_backward` runs it
            x = placement.images(images[:m], channels_last)
            y = _take(labels, 0, m, placement.device)
            with placement.autocast():
                loss = objective(model, x, y)
            loss.backward()

        model.train()
        choice = micro_batch.choose(model, optimizer, run, per_rank, placement.device, world.distributed, _ranks_here(world), before)
    except Exception as err:  # the others are about to meet in the all-reduce below
        if world.distributed and not distributed.is_agreed(err):
            world.agree(distributed.FAILED)
        raise distributed.agreed(err)
    world.check()
    micro = world.min(choice.micro)
    how = choice.how if micro == choice.micro else f"{choice.how}: {choice.micro} here, {micro} on another rank"
    pending = [first]

    def batch_at_first_reused(at: int) -> Batch:
        return pending.pop() if at == step and pending else batch_at(at)

    return per_rank // micro, batch_at_first_reused, {"micro_batch": micro, "accumulation": per_rank // micro, "micro_batch_auto": how}


def _ranks_here(world: World) -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE): they share its memory."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world.size if world.distributed else 1))


def _forward_backward(step_fn, wrapped, objective, batch_at, step: int, accumulation: int, placement: Placement, world: World, stop, want_save: bool, channels_last: bool = False) -> tuple[torch.Tensor, int, bool]:
    """Gradients of one step, summed over its micro-steps: (this rank's mean loss as a float64
    device tensor, the ranks' agreed state: OK or STOP, whether to checkpoint after the step).

    Before the last backward (where DDP all-reduces the gradients) the ranks agree: a rank that
    raised anywhere in the step tells the others, which raise PeerFailed instead of waiting in
    the all-reduce for it; a stop request on any rank stops every rank after this step.
    """
    try:
        images, labels = batch_at(step)
        count = len(images)
        micro = _cut(count, accumulation)
        total = torch.zeros((), dtype=torch.float64, device=placement.device)
        for i, (a, b) in enumerate(micro):
            x = placement.images(images[a:b], channels_last)
            y = _take(labels, a, b, placement.device)
            last = i == len(micro) - 1
            with contextlib.ExitStack() as sync:
                if not last and isinstance(wrapped, DDP):
                    sync.enter_context(wrapped.no_sync())  # gradients accumulate locally until the last micro-step
                with placement.autocast():
                    loss = objective(step_fn, x, y) * ((b - a) / count)  # this micro-step's share of the slice mean
                total += loss.detach().double()
                if last:
                    break  # its backward comes after the ranks agree
                loss.backward()
    except Exception as err:
        if world.distributed and not distributed.is_agreed(err):
            world.agree(distributed.FAILED)
        raise distributed.agreed(err)
    state, save = world.check(distributed.STOP if stop.requested else distributed.OK, want_save)
    loss.backward()
    return total, state, save


def environment(placement: Placement) -> dict[str, str]:
    """What a stage's numbers depend on besides its config: software versions and device kind."""
    from vitrun import __version__

    cuda = torch.version.cuda or "none"
    kind = torch.cuda.get_device_name(placement.device) if placement.device.type == "cuda" else "cpu"
    return {"vitrun": str(__version__), "torch": str(torch.__version__), "cuda": str(cuda), "device": str(kind)}  # plain str: weights_only loads


def describe_drift(before: dict[str, str], now: dict[str, str]) -> str:
    """'torch 2.3.0 (started on 2.2.1), …' for each entry that changed; '' when none did."""
    return ", ".join(f"{key} {now.get(key)} (started on {before[key]})" for key in sorted(before) if now.get(key) != before[key])


def _cut(count: int, pieces: int) -> list[tuple[int, int]]:
    """[start, end) of `pieces` equal micro-batches of `count` images."""
    if count % pieces:
        raise ValueError(f"a slice of {count} images does not cut into {pieces} equal micro-steps")
    size = count // pieces
    return [(i * size, (i + 1) * size) for i in range(pieces)]


def _take(labels, a: int, b: int, device: torch.device):
    """Rows a:b of the labels (a tensor, or a tuple of tensors with the batch first) on `device`."""
    if isinstance(labels, (tuple, list)):
        return type(labels)(_take(part, a, b, device) for part in labels)
    return to_device(labels[a:b], device)


def _checkpoint_due(step: int, last_save: float, settings: LoopSettings) -> bool:
    if settings.checkpoint_steps and step % settings.checkpoint_steps == 0:
        return True
    return time.monotonic() - last_save > settings.checkpoint_seconds


def _data_parallel(model: nn.Module, placement: Placement, world: World, find_unused: bool) -> nn.Module:
    """The model under DDP when several ranks train it (DDP copies rank 0's weights to all)."""
    if not world.distributed:
        return model
    ids = [placement.device.index] if placement.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused)


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
