"""Evaluation during training and early stopping (§4.3: "we use early-stopping, and report the
best validation accuracy achieved during training").

Every `every` steps (and at the last step) the model is scored on a held-out split: the dev
share of the training split, never the test split, so choosing the step never sees test
images. The curve, the best step and its accuracy go to stage.json; with `keep_best` the
weights of the best step are kept (on the CPU) and handed back when training ends. Ties keep
the earlier step.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn

from vitrun.engine.ema import PolyakAverage


class EvalCurve:
    """A loop extra: scores the model at a cadence and remembers the best step.

    evaluate(model) -> accuracy in [0, 1]; called in eval mode, the model is put back in train
    mode after. With `averaged`, the averaged weights are the ones scored (and kept).
    """

    def __init__(
        self,
        evaluate: Callable[[nn.Module], float],
        every: int,
        steps: int,
        keep_best: bool,
        averaged: PolyakAverage | None = None,
        on_eval: Callable[[int, float], None] | None = None,
    ):
        self.evaluate, self.every, self.steps, self.keep_best = evaluate, every, steps, keep_best
        self.averaged, self.on_eval = averaged, on_eval
        self.curve: list[list[float]] = []  # [step, accuracy] pairs, in step order
        self.best_step: int | None = None
        self.best_accuracy: float | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.steps

    def after_step(self, step: int, model: nn.Module) -> None:
        if not self.due(step):
            return
        with self.averaged.swapped_in(model) if self.averaged else nullcontext(model):
            accuracy = float(self.evaluate(model))
            model.train()
            self.record(step, accuracy, model)
        if self.on_eval:
            self.on_eval(step, accuracy)

    def record(self, step: int, accuracy: float, model: nn.Module) -> None:
        """Add one point of the curve; `model` holds the weights that scored it."""
        self.curve.append([step, accuracy])
        if self.best_accuracy is None or accuracy > self.best_accuracy:
            self.best_step, self.best_accuracy = step, accuracy
            if self.keep_best:
                self.best_weights = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}

    def on_log(self, row: dict) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"curve": [list(point) for point in self.curve], "best_step": self.best_step, "best_accuracy": self.best_accuracy, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve = [[int(step), float(acc)] for step, acc in state["curve"]]
        self.best_step, self.best_accuracy, self.best_weights = state["best_step"], state["best_accuracy"], state["best_weights"]

    def load_best_into(self, model: nn.Module) -> None:
        if self.best_weights is None:
            raise RuntimeError("no evaluation ran, so there are no best weights to keep")
        model.load_state_dict(self.best_weights)

    def summary(self) -> dict[str, Any]:
        """What stage.json records: the curve, the best step and its held-out accuracy."""
        return {"eval_curve": self.curve, "best_step": self.best_step, "best_accuracy": self.best_accuracy}
