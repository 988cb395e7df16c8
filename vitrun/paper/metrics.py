"""The paper's summary metrics, as plain arithmetic: average-5, VTAB-1k groups, ImageNet-ReaL,
and mean ± std over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from vitrun.paper import AVERAGE5, VTAB_GROUPS


class RealLabelsError(ValueError):
    """A ReaL labels file that is not the public real.json format."""


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


def load_real_labels(path: str | Path) -> list[list[int]]:
    """The public `real.json` (Beyer et al. 2020): one list of correct labels per ImageNet
    validation image, in file-name order (ILSVRC2012_val_00000001 first)."""
    try:
        labels = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RealLabelsError(f"{path}: cannot read ReaL labels ({err}); expected a JSON list of label lists, as real.json") from None
    if not isinstance(labels, list) or not all(isinstance(x, list) and all(isinstance(y, int) for y in x) for x in labels):
        raise RealLabelsError(f"{path}: expected a JSON list with one list of integer labels per validation image, as real.json")
    return labels


def real_accuracy(predictions: Sequence[int], real: Sequence[Sequence[int]]) -> float:
    """ImageNet-ReaL accuracy: a prediction is right when it is one of the image's ReaL labels;
    images whose list is empty (no label the raters agreed on) are left out, as in the paper."""
    if len(predictions) != len(real):
        raise RealLabelsError(f"{len(predictions)} predictions for {len(real)} ReaL label lists; both must cover the whole validation set in order")
    scored = [(p, labels) for p, labels in zip(predictions, real) if labels]
    if not scored:
        raise RealLabelsError("every ReaL label list is empty: nothing to score")
    return sum(int(p) in labels for p, labels in scored) / len(scored)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of per-seed values; std is NaN for a single seed."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(clean)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(clean) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1)) if n > 1 else math.nan
    return mean, std, n
