"""Progress of a run: rich bars in a terminal; plain, timed lines when output goes to a file.

A run piped to a log (a batch job, `nohup`, CI) must not sit silent through a long
pre-training: without a terminal, a line with the stage, step/total, loss, images/s and ETA
is printed when a stage starts and then at most every `every` seconds while it trains.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_SECONDS = 15.0  # without a terminal: a progress line at least this often while training


class RunProgress:
    """Context manager; `stage(...)` when a stage starts, `step(...)` after each training step,
    `advance()` as each planned stage is taken up (run or skipped)."""

    def __init__(self, console: Console, stages: int, every: float = LINE_SECONDS):
        self.console, self.every = console, every
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=console, transient=True) if console.is_terminal else None
        self.stages, self.done = stages, 0
        self.label, self.total, self.batch = "", 0, 0
        self.started = self.last_line = 0.0
        self.first_step = 0

    def __enter__(self) -> "RunProgress":
        if self.bars:
            self.bars.__enter__()
            self.overall = self.bars.add_task("stages", total=self.stages)
            self.steps = self.bars.add_task("", total=1, visible=False)
        return self

    def __exit__(self, *exc) -> bool:
        if self.bars:
            self.bars.__exit__(*exc)
        return False

    def stage(self, label: str, steps: int, batch_size: int) -> None:
        self.label, self.total, self.batch = label, steps, batch_size
        self.started = self.last_line = time.monotonic()
        self.first_step = 0
        if self.bars:
            self.bars.update(self.steps, description=f"  {label}", total=steps or 1, completed=0, visible=bool(steps))
        else:
            self.console.print(f"[dim]stage {self.done}/{self.stages}[/dim] {escape(label)}" + (f": {steps:,} steps" if steps else ""), soft_wrap=True)

    def step(self, step: int, loss: float) -> None:
        if self.bars:
            self.bars.update(self.steps, completed=step)
            return
        now = time.monotonic()
        if not self.first_step:  # a resumed stage starts past 0: rates count from here
            self.first_step, self.started = step, now
            return
        if now - self.last_line < self.every and step < self.total:
            return
        self.last_line = now
        self.console.print(self.line(step, loss, now - self.started), soft_wrap=True)

    def line(self, step: int, loss: float, seconds: float) -> str:
        """`  step 120/300 (40%) · loss 2.310 · 512 img/s · ETA 0:00:35`"""
        done = step - self.first_step
        rate = done / seconds if seconds > 0 and done > 0 else 0.0
        eta = timedelta(seconds=round((self.total - step) / rate)) if rate else "?"
        # The loop reads the loss back only every log_every steps (no host sync per step), and a
        # non-finite reading ends the stage before it gets here: NaN means "not read yet".
        loss_text = f"{loss:.4g}" if math.isfinite(loss) else "–"
        return (f"  {escape(self.label)}: step {step:,}/{self.total:,} ({step / max(self.total, 1):.0%}) · loss {loss_text}"
                f" · {rate * self.batch:,.1f} img/s · ETA {eta}")

    def advance(self) -> None:
        self.done += 1
        if self.bars:
            self.bars.advance(self.overall)
