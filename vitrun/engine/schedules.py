"""Learning-rate schedules as pure functions of the step (paper App. B.1)."""

from __future__ import annotations

import math


def warmup_then_decay(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base rate at `step` (0-based): linear warm-up, then linear or cosine decay to 0.

    Like big_vision, the decay runs over the steps after warm-up, so the last step's rate is
    close to (not exactly) zero and warm-up longer than the run simply ends the run warm.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r} (expected 'linear' or 'cosine')")
