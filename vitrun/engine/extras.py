"""The loop extras one training stage asks for, built and finished in one place.

A stage's `[pretrain]`/`[finetune]` options decide them: Polyak averaging (`ema`), the
evaluation curve and early stopping (`eval_every`, `keep`), TensorBoard (`[run] tensorboard`).
Order matters: the average is updated before the curve scores it, and the curve reports to
TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from vitrun.engine.early_stop import EvalCurve
from vitrun.engine.ema import PolyakAverage


class StageExtras:
    """evaluate(model) -> held-out accuracy; needed when `eval_every` is set."""

    def __init__(
        self,
        model: nn.Module,
        steps: int,
        batch_size: int,
        ema: float | None = None,
        eval_every: int | None = None,
        keep: str = "last",
        evaluate: Callable[[nn.Module], float] | None = None,
        tensorboard_dir: Path | None = None,
    ):
        self.average = PolyakAverage(model, ema) if ema else None
        self.board = None
        if tensorboard_dir is not None:
            from vitrun.engine.tblog import TensorBoardLog

            self.board = TensorBoardLog(tensorboard_dir, batch_size)
        self.curve = None
        if eval_every:
            if evaluate is None:
                raise ValueError("eval_every needs a held-out split to evaluate on")
            on_eval = self.board.on_eval if self.board else None
            self.curve = EvalCurve(evaluate, eval_every, steps, keep == "best", self.average, on_eval)
        elif keep == "best":
            raise ValueError('keep = "best" needs eval_every')

    @property
    def loop(self) -> list[Any]:
        """What `train(..., extras=...)` takes, in the order they must run."""
        return [e for e in (self.average, self.curve, self.board) if e is not None]

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Put the weights the stage keeps into `model` (best step, else the average, else as
        trained); returns what stage.json records about them."""
        if self.board:
            self.board.close()
        if self.curve and self.curve.keep_best:
            self.curve.load_best_into(model)
        elif self.average:
            self.average.copy_to(model)
        out: dict[str, Any] = self.curve.summary() if self.curve else {}
        if self.curve and self.curve.keep_best:
            out["kept_step"] = self.curve.best_step
        return out
