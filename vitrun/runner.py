"""Run a plan: skip finished stages, lock, run, record (done, diverged or failed), show progress."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import deque
import errno
import os
import platform
import traceback
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape

from vitrun import __version__, lock
from vitrun.engine import distributed
from vitrun.plan import Stage
from vitrun.progress import RunProgress
from vitrun.recipe import LoadedRecipe
from vitrun.store import FINISHED, BrokenRecord, StageDir, Store, write_atomic


class ResultsUnwritable(Exception):
    """The results directory cannot take a write (read-only, full, a path under a file);
    str() is one line naming the path and what to do."""


class CannotStart(Exception):
    """The run cannot start on this machine as the recipe asks (a device that is not here);
    str() is one line naming the setting and a fix."""


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key -> one line with the error.log path
    diverged: dict[str, str] = field(default_factory=dict)  # key -> step and loss
    blocked: dict[str, str] = field(default_factory=dict)  # key -> the parent that is not done
    stopped_early: bool = False  # --fail-fast

    @property
    def complete(self) -> bool:
        """Every planned stage is done: the exit status is 0 only then."""
        return not (self.failed or self.diverged or self.blocked or self.stopped_early)


def describe(stage: Stage, swept: Iterable[str] = ()) -> str:
    upstream = "no pre-training (scratch)" if stage.size_label == "–" else f"pre-train size {stage.size_label}"
    variant = stage.variant(swept)
    return f"{stage.kind:<12} {stage.model} · {stage.detail} · {upstream}" + (f" · {variant}" if variant else "")


def run_plan(loaded: LoadedRecipe, stages: list[Stage], store: Store, console: Console, cache_dir: str | None = None, fail_fast: bool = False) -> RunSummary:
    """Run every stage not yet finished. A stage that raises is recorded as `failed` (its
    traceback in its error.log) and the run goes on with every stage whose parents are done;
    `fail_fast` stops at the first failure instead. Resource errors (read-only or full disk)
    raise ResultsUnwritable at once: nothing after them could be written either."""
    try:
        return _run_plan(loaded, stages, store, console, cache_dir, fail_fast)
    except OSError as err:
        if results_error(err, store.root):
            raise ResultsUnwritable(unwritable_message(err, store.root)) from None
        raise


# errno values that mean "this results directory cannot take the write", not a bug
RESOURCE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}


def results_error(err: OSError, root: Path) -> bool:
    """The error is the results directory refusing a write (not, say, an unreadable data file)."""
    if err.errno not in RESOURCE_ERRORS:
        return False
    if err.errno in (errno.ENOSPC, errno.EDQUOT) or not err.filename:
        return True
    try:
        Path(os.path.abspath(err.filename)).relative_to(os.path.abspath(root))
    except ValueError:
        return False
    return True


def unwritable_message(err: OSError, root: Path) -> str:
    path = err.filename or root
    advice = {
        errno.ENOSPC: "the disk is full; free space there or choose another --results",
        errno.EDQUOT: "the disk quota is exhausted; free space there or choose another --results",
        errno.EROFS: "the file system is read-only; choose a writable --results",
        errno.EACCES: "permission denied; choose a --results you can write to",
        errno.EPERM: "permission denied; choose a --results you can write to",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another --results",
        errno.EEXIST: "a part of the path is a file, not a folder; choose another --results",
    }[err.errno]
    return f"{path}: cannot write ({err.strerror}): {advice}; finished stages are kept, run the same command again to resume"


def _placement(run, world):
    """Where and how this process trains, or CannotStart (usage: exit 2) naming the setting."""
    from vitrun.engine.device import DeviceError, place

    try:
        return place(run.device, run.precision, run.compile, run.threads, index=world.local_rank if world.distributed else None)
    except DeviceError as err:
        raise CannotStart(str(err)) from None


def _run_plan(loaded: LoadedRecipe, stages: list[Stage], store: Store, console: Console, cache_dir: str | None, fail_fast: bool) -> RunSummary:
    experiment = loaded.name
    swept = loaded.swept_keys()
    summary = RunSummary()
    if not stages:
        return summary  # nothing to run: nothing is written
    run = loaded.variants[0].run
    world = _join(run.device) if distributed.launched() else distributed.World()
    main = world.is_main()
    if not main:  # rank 0 owns the store and the console; the others compute
        console = Console(quiet=True)
    check_splits(stages, world.size, run.micro_batch)  # auto or not, the same stages split
    status = None
    if main:
        status = {stage.key: store.stage(experiment, stage.key).status() for stage in stages}
        _recheck_parent_weights(stages, status, store, experiment, console)
    status = world.broadcast(status)
    todo = []
    for stage in stages:
        if status[stage.key] in FINISHED:
            summary.skipped.append(stage.key)
            if status[stage.key] == "diverged" and main:
                summary.diverged[stage.key] = _divergence(store.stage(experiment, stage.key))
        else:
            todo.append(stage)
    if summary.skipped:
        console.print(f"[dim]{len(summary.skipped)} of {len(stages)} stages already done (skipped): results in {store.root / experiment}[/dim]", soft_wrap=True)
    placement = _placement(run, world) if todo else None  # before anything is written: a bad device writes nothing
    if main:
        store.write_recipe(experiment, _recipe_record(loaded, store.recipe(experiment)))
    if not todo:
        return summary

    import torch  # heavy: only when there is work to do

    hide_shared_warnings(world)

    from vitrun.stages import Context

    ranks = f" × {world.size} processes" if world.distributed else ""
    console.print(f"Running {len(todo)} stages on {placement.describe()}{ranks}")
    with RunProgress(console, len(todo)) as progress:

        def notice(message: str) -> None:
            console.print(f"[yellow]note:[/yellow] {escape(message)}", soft_wrap=True)

        ctx = Context(store=store, experiment=experiment, placement=placement, run=run, cache_dir=cache_dir, on_step=progress.step, on_notice=notice, world=world)
        queue = deque((stage, False) for stage in todo)  # (stage, wait for its lock)
        while queue:
            stage, wait = queue.popleft()
            sd = store.stage(experiment, stage.key)
            with contextlib.ExitStack() as held:
                # Rank 0 decides what happens to the stage, under its lock; the others follow.
                decision = _decide(stage, sd, store, experiment, held, wait, console) if main else None
                decision = world.broadcast(decision)
                if decision[0] == "later":  # another live runner holds it: come back at the end
                    queue.append((stage, True))
                    continue
                progress.advance()
                if decision[0] == "blocked":
                    summary.blocked[stage.key] = decision[1]
                    console.print(f"[yellow]–[/yellow] {describe(stage, swept)}  skipped: parent {decision[1]} is {decision[2]}", soft_wrap=True)
                    continue
                if decision[0] == "finished":  # another runner finished it while we waited
                    summary.skipped.append(stage.key)
                    continue
                if main:
                    _prepare(sd, decision[1], notice)
                progress.stage(f"{stage.kind} {stage.model} · {stage.detail}", _steps(stage), int((stage.training or {}).get("batch_size", 0)))
                outcome = _run_one(stage, sd, ctx, experiment, world, torch.__version__, summary, console, swept, fail_fast)
            if outcome == "stop":
                summary.stopped_early = True
                break
            if outcome == "done":
                summary.ran.append(stage.key)
    return summary


def hide_shared_warnings(world: distributed.World) -> None:
    """On ranks other than 0, hide warnings about a whole source (data.options.SourceWarning):
    every rank loads the same source and would repeat them. Warnings about one image stay: each
    rank reads other images."""
    if world.is_main():
        return
    import warnings

    from vitrun.data.options import SourceWarning

    warnings.filterwarnings("ignore", category=SourceWarning)


def _join(device: str) -> distributed.World:
    return distributed.join(distributed.device_type(device))


def _decide(stage: Stage, sd: StageDir, store: Store, experiment: str, held: contextlib.ExitStack, wait: bool, console: Console) -> tuple:
    """Rank 0's call on a stage: ("blocked", parent, its status), ("later",) when another live
    runner holds its lock and we have not waited for it yet, ("finished",), or ("run", status)
    with the lock now held in `held`."""
    blocker = next((key for key in stage.parents if store.stage(experiment, key).status() != "done"), None)
    if blocker and store.stage(experiment, blocker).running_elsewhere():
        # Another runner (--jobs, --shard, a second terminal) is training the parent: come back
        # at the end, and then wait for it rather than skip the stage.
        if not wait:
            return ("later",)
        with store.stage(experiment, blocker).lock(on_wait=lambda who: console.print(f"[dim]waiting for {blocker}, running in {who}[/dim]", soft_wrap=True)):
            pass
        blocker = next((key for key in stage.parents if store.stage(experiment, key).status() != "done"), None)
    if blocker:
        return ("blocked", blocker, store.stage(experiment, blocker).status())
    try:
        held.enter_context(sd.lock(on_wait=lambda who: console.print(f"[yellow]waiting[/yellow] for {who}, which holds {sd.path / '.lock'}", soft_wrap=True), wait=wait))
    except lock.Busy as busy:
        console.print(f"[dim]{stage.key} is running in {busy}; on to the next stage, back to it at the end[/dim]", soft_wrap=True)
        return ("later",)
    now = sd.status()
    return ("finished",) if now in FINISHED else ("run", now)


def _run_one(stage: Stage, sd: StageDir, ctx, experiment: str, world: distributed.World, torch_version: str, summary: RunSummary, console: Console, swept, fail_fast: bool) -> str:
    """Run one stage on every rank and record it on rank 0: "done", "failed" (or "diverged"),
    or "stop" (--fail-fast). A rank that raises tells the others (they raise PeerFailed at
    their next meeting point); rank 0 records the failing rank's traceback."""
    from vitrun.engine import Diverged, Interrupted
    from vitrun.stages import run_stage, training_flops

    placement, main = ctx.placement, world.is_main()
    parallel = _parallel_record(stage, world, distributed.micro_batch_setting(ctx.run.micro_batch, placement.device.type))
    started = time.perf_counter()
    failure = None
    try:
        metrics = run_stage(stage, ctx)
        parallel.update(metrics.pop("parallel", {}))  # what "auto" chose
        world.check()  # every rank finished the stage (a late failure elsewhere stops us here)
    except Diverged as err:
        if main:
            sd.finish(_stage_record(stage, experiment, "diverged", {"accuracy": None, "diverged_at_step": err.step, "loss": str(err.loss)}, time.perf_counter() - started, 0.0, placement.describe(), torch_version, parallel=parallel))
            summary.diverged[stage.key] = _divergence(sd)
        console.print(f"[red]✗[/red] {describe(stage, swept)}  diverged: {escape(str(err))}", soft_wrap=True)
        return "stop" if fail_fast else "diverged"
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as err:  # a bug or bad data: contained to this stage and its children
        if isinstance(err, OSError) and results_error(err, ctx.store.root):
            raise
        if world.distributed and not distributed.is_agreed(err):
            world.agree(distributed.FAILED)  # the others learn of it at their next meeting point
        failure = None if isinstance(err, distributed.PeerFailed) else (traceback.format_exc(), _one_line(err))
    if failure is not None or world.distributed:
        failures = [(rank, found) for rank, found in enumerate(world.gather(failure)) if found]
        if failures:
            rank, (trace, line) = failures[0]
            if world.distributed:
                line = f"on rank {rank}: {line}"
            if main:
                _record_failure(stage, sd, experiment, trace, line, time.perf_counter() - started, placement.describe(), summary, console, swept, parallel)
            return "stop" if fail_fast else "failed"
    wall = time.perf_counter() - started
    if main:
        sd.finish(_stage_record(stage, experiment, "done", metrics, wall, training_flops(stage), placement.describe(), torch_version, parallel=parallel))
        with contextlib.suppress(FileNotFoundError):
            sd.error_file.unlink()  # a retried stage that now succeeds
    accuracy = "–" if metrics["accuracy"] is None else f"{metrics['accuracy']:.1%}"
    console.print(f"[green]✓[/green] {describe(stage, swept)}  accuracy {accuracy}  [dim]{wall:.1f}s[/dim]", soft_wrap=True)
    return "done"


def check_splits(stages: list[Stage], world: int, micro_batch: int | str | None) -> list[str]:
    """Each distinct training batch as `per-device × devices × accumulation = global`; raises
    BatchSplitError (one line naming the key and a fix) when one does not split evenly."""
    lines = []
    for stage in stages:
        if not stage.training or not stage.training.get("steps"):
            continue
        key = f"{'pretrain' if stage.kind == 'pretrain' else 'finetune'}.batch_size"
        line = f"{key}: {distributed.split_batch(int(stage.training['batch_size']), world, micro_batch, key).describe()}"
        if line not in lines:
            lines.append(line)
    return lines


def _parallel_record(stage: Stage, world: distributed.World, micro_batch: int | str | None) -> dict[str, Any]:
    """How the stage's global batch was split (stage.json; never part of the key). With "auto"
    the training stage replaces "auto" by what it chose (and says how: `micro_batch_auto`)."""
    if not stage.training or not stage.training.get("steps"):
        return {"world_size": world.size}
    split = distributed.split_batch(int(stage.training["batch_size"]), world.size, micro_batch)
    if split.auto:
        return {"world_size": world.size, "accumulation": distributed.AUTO, "micro_batch": distributed.AUTO}
    return {"world_size": world.size, "accumulation": split.accumulation, "micro_batch": split.micro}


def _prepare(sd: StageDir, status: str, notice) -> None:
    """Before a stage is (re)run under its lock: set aside a broken record, drop temp files of
    killed writers."""
    if status == "broken":
        try:
            sd.read()
        except BrokenRecord as err:
            moved = sd.set_aside(sd.stage_file)
            notice(f"{err}; set aside as {moved.name}, the stage re-runs")
    for path in sd.clean():
        notice(f"removed {path}, left by a killed run")


def _recheck_parent_weights(stages: list[Stage], status: dict[str, str], store: Store, experiment: str, console: Console) -> None:
    """A finished stage whose weights a stage to run will load: check the weights against the
    record now (one streamed read); if they fail, set the record aside so the stage re-runs
    first (stages come parents first)."""
    needed = {parent for stage in stages if status[stage.key] not in FINISHED for parent in stage.parents[:1]}
    for stage in stages:
        if stage.key not in needed or status[stage.key] != "done":
            continue
        sd = store.stage(experiment, stage.key)
        try:
            sd.verified_weights()
        except BrokenRecord as err:
            moved = sd.set_aside(sd.stage_file, "bad-weights")
            console.print(f"[yellow]note:[/yellow] {escape(str(err))}; record set aside as {moved.name}, the stage re-runs", soft_wrap=True)
            status[stage.key] = "todo"


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")


def _record_failure(stage: Stage, sd: StageDir, experiment: str, trace: str, line: str, wall: float, device: str, summary: RunSummary, console: Console, swept, parallel: dict) -> None:
    """Keep the whole traceback in the stage's error.log; the record and console get one line."""
    import torch

    write_atomic(sd.error_file, trace.encode())
    sd.finish(_stage_record(stage, experiment, "failed", {"accuracy": None}, wall, 0.0, device, torch.__version__, error=line, parallel=parallel))
    summary.failed[stage.key] = f"{line} (traceback: {sd.error_file})"
    console.print(f"[red]✗[/red] {describe(stage, swept)}  failed: {escape(line)}; traceback in {sd.error_file}", soft_wrap=True)


def _divergence(sd: StageDir) -> str:
    metrics = sd.read().get("metrics", {})
    return f"loss {metrics.get('loss')} at step {metrics.get('diverged_at_step')}"


def print_summary(summary: RunSummary, console: Console) -> None:
    """What did not finish, one line each, after the report."""
    lines = [f"failed     {key}: {why}" for key, why in summary.failed.items()]
    lines += [f"diverged   {key}: {why} (kept: a re-run diverges again; lower the learning rate or set grad_clip)" for key, why in summary.diverged.items()]
    lines += [f"skipped    {key}: parent {parent} is not done" for key, parent in summary.blocked.items()]
    if summary.stopped_early:
        lines.append("stopped at the first failure (--fail-fast); run again to go on")
    if lines:
        console.print(f"[bold red]{len(summary.failed)} failed, {len(summary.diverged)} diverged, {len(summary.blocked)} skipped[/bold red]; run the same command again to retry failed stages", soft_wrap=True)
        for line in lines:
            console.print("  " + escape(line), soft_wrap=True)


def _steps(stage: Stage) -> int:
    return int(stage.training["steps"]) if stage.training else 0


def _stage_record(stage: Stage, experiment: str, status: str, metrics: dict[str, Any], wall: float, flops: float, device: str, torch_version: str, error: str | None = None, parallel: dict | None = None) -> dict[str, Any]:
    return {
        **({"error": error} if error else {}),
        **(parallel or {}),
        "key": stage.key,
        "kind": stage.kind,
        "experiment": experiment,
        "status": status,
        "config": stage.config,
        "parents": list(stage.parents),
        "metrics": metrics,
        "wall_time_s": round(wall, 3),
        "flops": flops,
        "device": device,
        "versions": {"vitrun": __version__, "torch": torch_version, "python": platform.python_version()},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _recipe_record(loaded: LoadedRecipe, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """recipe.json: the recipe as last run, and every run's plan (the recipe as written, and
    each `--set` variant, latest last), so a report shows one configuration's stages, never a
    blend of runs with different settings."""
    from vitrun.plan import plan

    label = loaded.run_label
    runs = [r for r in (previous or {}).get("runs", []) if isinstance(r, dict) and r.get("set") != label]
    runs.append({"set": label, "stages": sorted(stage.key for stage in plan(loaded.variants))})
    first = loaded.variants[0]
    return {
        "name": loaded.name,
        "path": str(loaded.path),
        "recipe": loaded.raw,
        "report": first.report.model_dump(mode="json"),
        "runs": runs,
    }
