"""Progress without a terminal: timed plain lines (a log piped to a file is never silent)."""

from __future__ import annotations

import io

from rich.console import Console

from vitrun import progress as progress_module
from vitrun.progress import RunProgress


def test_plain_lines_when_output_is_not_a_terminal(monkeypatch):
    clock = iter([0.0, 1.0, 5.0, 20.0, 21.0, 40.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with RunProgress(console, stages=2, every=15.0) as progress:
        progress.advance()
        progress.stage("pretrain ViT-Mu/4 · fractal", steps=300, batch_size=64)  # t=0
        progress.step(1, float("nan"))  # t=1: rates count from the first step
        progress.step(2, float("nan"))  # t=5: too soon for a line
        progress.step(101, float("nan"))  # t=20: a line; 100 steps in 19 s, no loss read back yet
        progress.step(102, 2.0)  # t=21: too soon
        progress.step(300, 1.25)  # t=40: the last step always prints
    lines = out.getvalue().splitlines()
    assert lines[0] == "stage 1/2 pretrain ViT-Mu/4 · fractal: 300 steps"
    assert lines[1].startswith("  pretrain ViT-Mu/4 · fractal: step 101/300 (34%) · loss – · 336.8 img/s · ETA 0:00:38")
    assert lines[2].startswith("  pretrain ViT-Mu/4 · fractal: step 300/300 (100%) · loss 1.25")
    assert len(lines) == 3


def test_terminal_gets_bars_not_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with RunProgress(console, stages=1) as progress:
        progress.advance()
        progress.stage("finetune R14x0.25 · digits", steps=10, batch_size=8)
        for step in range(1, 11):
            progress.step(step, 1.0)
    assert "step 10/10" not in out.getvalue()
