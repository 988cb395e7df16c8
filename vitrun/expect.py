"""`[[expect]]` cells: our result against a stated target ± tolerance (CI for long runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from vitrun.paper import paper_dataset
from vitrun.paper.metrics import mean_std
from vitrun.schema import ExpectConfig


@dataclass(frozen=True)
class Outcome:
    label: str
    ours: float | None  # mean over seeds, scaled; None: no finished result
    n: int
    target: float
    tolerance: float

    @property
    def delta(self) -> float | None:
        return None if self.ours is None else self.ours - self.target

    @property
    def passed(self) -> bool:
        return self.delta is not None and abs(self.delta) <= self.tolerance + 1e-9

    @property
    def verdict(self) -> str:
        return "no result" if self.ours is None else ("pass" if self.passed else "FAIL")

    def describe(self) -> str:
        ours = "no finished result" if self.ours is None else f"ours {self.ours:.2f} (n={self.n})"
        return f"{self.label}: {ours}, target {self.target:g} ± {self.tolerance:g}: {self.verdict}"


def label(cell: ExpectConfig) -> str:
    """ "ViT-B/16 · ImageNet-21k → ImageNet @384 (finetune)" unless the cell names itself."""
    if cell.name:
        return cell.name
    route = " → ".join(x for x in (cell.pretrain, cell.data) if x)
    parts = [x for x in (cell.model, route) if x]
    extra = (f" @{cell.image_size}" if cell.image_size else "") + (f" {cell.shots}-shot" if cell.shots else "")
    where = "".join(f" {k}={v}" for k, v in cell.where.items())
    return " · ".join(parts) + extra + where + f" ({cell.kind})"


def evaluate(frame: pd.DataFrame, cells: list[ExpectConfig]) -> list[Outcome]:
    return [_outcome(frame, cell) for cell in cells]


def _outcome(frame: pd.DataFrame, cell: ExpectConfig) -> Outcome:
    rows = _rows(frame, cell)
    values = rows[cell.values] if cell.values in rows else pd.Series(dtype=float)
    per_seed = values.groupby(rows["seed"]).mean() if "seed" in rows and not values.empty else values
    mean, _, n = mean_std([float(v) * cell.scale for v in per_seed])
    return Outcome(label(cell), None if n == 0 else mean, n, cell.target, cell.tolerance)


def _rows(frame: pd.DataFrame, cell: ExpectConfig) -> pd.DataFrame:
    if frame.empty:
        return frame
    rows = frame[(frame["kind"] == cell.kind) & (frame["status"] == "done")]
    if cell.model:
        rows = rows[rows["model"] == cell.model]
    if cell.pretrain:
        wanted = paper_dataset(cell.pretrain)
        rows = rows[(rows["pretrain_set"] == wanted) | _equals(rows, "pretrain.data", cell.pretrain) | _equals(rows, "pretrain.name", cell.pretrain)] if wanted else rows[_equals(rows, "pretrain.data", cell.pretrain) | _equals(rows, "pretrain.name", cell.pretrain)]
    if cell.data:
        wanted = paper_dataset(cell.data)
        rows = rows[(rows["transfer_set"] == (wanted or cell.data)) | _equals(rows, "data", cell.data) | _equals(rows, "transfer.data", cell.data)]
    if cell.shots:
        rows = rows[_equals(rows, "fewshot.shots", cell.shots)]
    if cell.image_size:
        rows = rows[_equals(rows, "resolution", cell.image_size)]
    for key, value in cell.where.items():
        rows = rows[_equals(rows, key, value)]
    return rows[rows[cell.values].notna()] if cell.values in rows else rows.iloc[0:0]


def _equals(rows: pd.DataFrame, column: str, value: Any) -> pd.Series:
    return rows[column] == value if column in rows else pd.Series(False, index=rows.index)


def outcome_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"cell": o.label, "ours": None if o.ours is None else round(o.ours, 2), "n": o.n, "target": o.target, "tolerance": o.tolerance, "delta": None if o.delta is None else round(o.delta, 2), "result": o.verdict} for o in outcomes],
        columns=["cell", "ours", "n", "target", "tolerance", "delta", "result"],
    )
