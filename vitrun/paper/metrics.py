"""The paper's summary metrics, as plain arithmetic: average-5, VTAB-1k groups, and mean ±
std over seeds (ImageNet-ReaL is in `vitrun.paper.real`)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from vitrun.paper import AVERAGE5, VTAB_GROUPS


def average5(accuracy: Mapping[str, float]) -> float | None:
    """Figure 5's average-5: the mean over ImageNet-ReaL, Pets, Flowers, CIFAR-10 and CIFAR-100,
    keyed by the paper's dataset names; None unless all five are present."""
    values = [accuracy.get(name) for name in AVERAGE5]
    if any(v is None or math.isnan(v) for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def vtab(accuracy: Mapping[str, float]) -> dict[str, tuple[float, int]]:
    """VTAB-1k means, keyed "VTAB-1k" (all tasks present) and "VTAB natural|specialized|structured",
    each (mean, tasks averaged). `accuracy` is keyed by task ("dtd", "VTAB/dtd" both work).

    The overall mean is over tasks, not over groups, as the paper's VTAB-19 column; a group
    appears when at least one of its tasks is present, the overall mean only with all 19.
    """
    by_task = {name.split("/", 1)[-1]: value for name, value in accuracy.items()}
    out: dict[str, tuple[float, int]] = {}
    present_all = []
    for group, tasks in VTAB_GROUPS.items():
        present = [by_task[t] for t in tasks if t in by_task and not math.isnan(by_task[t])]
        present_all.extend(present)
        if present:
            out[f"VTAB {group}"] = (sum(present) / len(present), len(present))
    total = sum(len(t) for t in VTAB_GROUPS.values())
    if len(present_all) == total:
        out["VTAB-1k"] = (sum(present_all) / total, total)
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of per-seed values; std is NaN for a single seed."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(clean)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(clean) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1)) if n > 1 else math.nan
    return mean, std, n
