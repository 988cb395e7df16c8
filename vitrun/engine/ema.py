"""Polyak averaging of the weights (Polyak & Juditsky 1992; the paper's Table 2 fine-tuning, 0.9999).

After every optimiser step: average ← decay · average + (1 − decay) · weights. The paper gives
only the factor; we take the plain form (timm's ModelEmaV2, flax's Polyak-averaging example):
the average starts at the weights the stage starts from, with no bias correction and no decay
warm-up, so with 0.9999 the first ~10k steps still lean on the starting weights. The averaged
weights are the ones a stage evaluates, tests and saves; the raw weights keep training.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


class PolyakAverage:
    """An exponential moving average of a model's floating-point weights and buffers.

    A loop extra: `after_step` updates it, `state_dict`/`load_state_dict` travel in the
    checkpoint, so a resumed run averages exactly what an uninterrupted one does.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        # Integer buffers (counters, indices) are copied, not averaged.
        self.average = {name: value.detach().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def after_step(self, step: int, model: nn.Module) -> None:
        averaged, current = [], []
        for name, value in model.state_dict().items():
            kept = self.average[name]
            if kept.is_floating_point():
                averaged.append(kept)
                current.append(value.detach())
            else:
                kept.copy_(value)
        if averaged:  # one fused kernel per op over every tensor (a ViT-B has ~150), not one each
            torch._foreach_mul_(averaged, self.decay)
            torch._foreach_add_(averaged, current, alpha=1.0 - self.decay)

    def on_log(self, row: dict) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["average"]) != set(self.average):
            raise ValueError("the checkpoint's averaged weights do not match this model")
        for name, value in state["average"].items():
            self.average[name].copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into `model` (for good: the stage evaluates and saves them)."""
        model.load_state_dict(self.average)

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` holds the averaged weights inside the block, its own weights (bit for bit) after."""
        own = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(own)
