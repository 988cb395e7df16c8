"""Run a plan: skip finished stages, lock, run, record, show progress."""

from __future__ import annotations

import datetime as dt
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vitrun import __version__
from vitrun.plan import Stage
from vitrun.recipe import LoadedRecipe
from vitrun.store import Store


class StageFailed(Exception):
    """A stage raised; its message names the stage and what to do."""


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def describe(stage: Stage, swept: Iterable[str] = ()) -> str:
    upstream = "no pre-training (scratch)" if stage.size_label == "–" else f"pre-train size {stage.size_label}"
    variant = stage.variant(swept)
    return f"{stage.kind:<12} {stage.model} · {stage.detail} · {upstream}" + (f" · {variant}" if variant else "")


def run_plan(loaded: LoadedRecipe, stages: list[Stage], store: Store, console: Console, cache_dir: str | None = None) -> RunSummary:
    experiment = loaded.name
    swept = loaded.swept_keys()
    summary = RunSummary()
    todo = []
    for stage in stages:
        if store.stage(experiment, stage.key).status() == "done":
            summary.skipped.append(stage.key)
        else:
            todo.append(stage)
    if summary.skipped:
        console.print(f"[dim]{len(summary.skipped)} of {len(stages)} stages already done (skipped): results in {store.root / experiment}[/dim]", soft_wrap=True)
    store.write_recipe(experiment, _recipe_record(loaded))
    if not todo:
        return summary

    import torch  # heavy: only when there is work to do

    from vitrun.engine.device import place
    from vitrun.stages import Context, run_stage, training_flops

    run = loaded.variants[0].run
    placement = place(run.device, run.precision, run.compile, run.threads)
    console.print(f"Running {len(todo)} stages on {placement.describe()}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        overall = progress.add_task("stages", total=len(todo))
        steps = progress.add_task("", total=1, visible=False)

        def on_step(step: int, loss: float) -> None:
            progress.update(steps, completed=step)

        ctx = Context(store=store, experiment=experiment, placement=placement, run=run, cache_dir=cache_dir, on_step=on_step)
        for stage in todo:
            sd = store.stage(experiment, stage.key)
            total = _steps(stage)
            progress.update(steps, description=f"  {stage.kind} {stage.model} · {stage.detail}", total=total or 1, completed=0, visible=bool(total))
            with sd.lock(on_wait=lambda: console.print(f"[yellow]waiting[/yellow] for another runner on {stage.key}")):
                if sd.status() == "done":  # another runner finished it while we waited
                    summary.skipped.append(stage.key)
                    progress.advance(overall)
                    continue
                started = time.perf_counter()
                try:
                    metrics = run_stage(stage, ctx)
                except (FloatingPointError, ValueError, RuntimeError) as err:
                    raise StageFailed(f"stage {stage.key} ({describe(stage, swept)}) failed: {err}") from err
                wall = time.perf_counter() - started
                sd.finish(_stage_record(stage, experiment, metrics, wall, training_flops(stage), placement.describe(), torch.__version__))
            summary.ran.append(stage.key)
            progress.advance(overall)
            accuracy = "–" if metrics["accuracy"] is None else f"{metrics['accuracy']:.1%}"
            console.print(f"[green]✓[/green] {describe(stage, swept)}  accuracy {accuracy}  [dim]{wall:.1f}s[/dim]", soft_wrap=True)
    return summary


def _steps(stage: Stage) -> int:
    return int(stage.training["steps"]) if stage.training else 0


def _stage_record(stage: Stage, experiment: str, metrics: dict[str, Any], wall: float, flops: float, device: str, torch_version: str) -> dict[str, Any]:
    return {
        "key": stage.key,
        "kind": stage.kind,
        "experiment": experiment,
        "status": "done",
        "config": stage.config,
        "parents": list(stage.parents),
        "metrics": metrics,
        "wall_time_s": round(wall, 3),
        "flops": flops,
        "device": device,
        "versions": {"vitrun": __version__, "torch": torch_version, "python": platform.python_version()},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _recipe_record(loaded: LoadedRecipe) -> dict[str, Any]:
    first = loaded.variants[0]
    return {
        "name": loaded.name,
        "path": str(loaded.path),
        "recipe": loaded.raw,
        "report": first.report.model_dump(mode="json"),
    }
