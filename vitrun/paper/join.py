"""Our results beside the paper's: derived paper metrics (average-5, VTAB-1k), the compute
axis, and the join of our cells with `numbers.csv`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from vitrun.paper import AVERAGE5, CONDITION_DEFAULTS, PAPER_COST_COLUMNS, PaperNumber, numbers, pretrain_compute
from vitrun.paper.metrics import average5, mean_std, vtab
from vitrun.paper.real import load_predictions, real_accuracy

PAPER_COLUMNS = ["model", "pre-training", "dataset", "kind", "resolution", "ours", "std", "n", "paper", "delta", "source"]


def add_paper_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Derived rows (average-5, VTAB-1k and its groups, see `derived_rows`) appended, and the
    paper's pre-training cost beside ours on every row: `paper_exaflops`, `paper_core_days`."""
    if frame.empty:
        return frame
    frame = pd.concat([frame, derived_rows(frame)], ignore_index=True)
    pairs = frame[["model", "pretrain_set"]].drop_duplicates()
    cost = {(m, p): pretrain_compute(m, p) for m, p in pairs.itertuples(index=False)}
    keys = list(zip(frame["model"], frame["pretrain_set"]))
    for column, field in zip(PAPER_COST_COLUMNS, ("exaflops", "core_days")):
        frame[column] = [cost[k].get(field, math.nan) for k in keys]
    return frame


def add_real(frame: pd.DataFrame, experiment_dir: Path, real: list[list[int]]) -> tuple[pd.DataFrame, list[str]]:
    """An "ImageNet-ReaL" fine-tuning row beside each finished ImageNet one whose stage kept
    test predictions covering the ReaL labels (the validation set, in file-name order), and a
    note for each that could not be scored."""
    if frame.empty or "transfer_set" not in frame:
        return frame, []
    rows, notes = [], []
    for row in frame[(frame["kind"] == "finetune") & (frame["status"] == "done") & (frame["transfer_set"] == "ImageNet")].to_dict("records"):
        predicted = load_predictions(experiment_dir / str(row["key"]))
        if predicted is None or len(predicted) != len(real):
            why = "kept no predictions.npy" if predicted is None else f"has {len(predicted)} test predictions for {len(real)} ReaL label lists"
            notes.append(f"ImageNet-ReaL not scored for {row['key']}: it {why}")
            continue
        rows.append({**row, "key": None, "data": "ImageNet-ReaL", "transfer_set": "ImageNet-ReaL", "accuracy": real_accuracy(predicted, real)})
    return (pd.concat([frame, pd.DataFrame(rows)], ignore_index=True) if rows else frame), notes


def derived_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One `kind = "summary"` row per pre-training, resolution and seed for each paper summary its
    transfer datasets allow: `data` = "average-5" (all five of Figure 5's datasets present),
    "VTAB-1k" (all 19 tasks) or "VTAB natural|specialized|structured" (any of the group)."""
    done = frame[(frame["kind"] == "finetune") & (frame["status"] == "done")]
    if done.empty or "accuracy" not in done:
        return frame.iloc[0:0]
    wanted = done["transfer_set"].isin(AVERAGE5) | done["transfer_set"].fillna("").str.startswith("VTAB/")
    done = done[wanted & done["accuracy"].notna()]
    if done.empty:
        return frame.iloc[0:0]
    keys = ["pretrain_key", "resolution", "seed"]
    wide = done.pivot_table(index=keys, columns="transfer_set", values="accuracy", aggfunc="mean")  # one row per group
    found = []
    for group, accuracy in zip(wide.index, wide.to_dict("records")):
        accuracy = {k: v for k, v in accuracy.items() if not pd.isna(v)}
        summaries = {name: value for name, (value, _) in vtab({k: v for k, v in accuracy.items() if k.startswith("VTAB/")}).items()}
        if (avg := average5(accuracy)) is not None:
            summaries["average-5"] = avg
        found += [(*group, name, value) for name, value in summaries.items()]
    if not found:
        return frame.iloc[0:0]
    summary = pd.DataFrame(found, columns=[*keys, "data", "accuracy"])
    # every other column (model, pre-training config, costs) from the group's first stage
    firsts = done.drop_duplicates(keys).drop(columns=["key", "kind", "data", "transfer_set", "accuracy"])
    out = summary.merge(firsts, on=keys, how="left")
    return out.assign(key=None, kind="summary", transfer_set=out["data"])


def paper_values() -> list[PaperNumber]:
    """The paper's numbers plus average-5 derived from Table 2's five columns where it gives all five."""
    rows = list(numbers())
    by_cell: dict[tuple[str, str], dict[str, PaperNumber]] = {}
    for n in rows:
        if n.source == "Table 2" and n.kind == "finetune":
            by_cell.setdefault((n.model, n.pretrain), {})[n.dataset] = n
    for (model, pretrain), cells in by_cell.items():
        avg = average5({k: v.value for k, v in cells.items()})
        if avg is not None:
            rows.append(PaperNumber("Table 2 (mean of its 5 columns)", model, pretrain, "average-5", 384, "finetune", "accuracy", round(avg, 3), "%", False, (), "average-5 as in Figure 5"))
    return rows


def match(row: dict[str, Any], candidates: list[PaperNumber] | None = None) -> PaperNumber | None:
    """The paper's number for one of our cells: same model, pre-training set, transfer dataset,
    stage kind and settings (`CONDITION_DEFAULTS`, shots); among several, the one at our
    resolution, else the first in file order (Table 5 before Tables 2 and 6)."""
    found = []
    for n in candidates if candidates is not None else paper_values():
        kind = "finetune" if row.get("kind") == "summary" else row.get("kind")  # summaries are of fine-tuning
        if n.metric != "accuracy" or n.kind != kind or n.model != row.get("model"):
            continue
        if n.pretrain != row.get("pretrain_set") or n.dataset != row.get("transfer_set"):
            continue
        if all(_setting(row, key) == value for key, value in n.conditions().items()):
            found.append(n)
    same_resolution = [n for n in found if n.resolution is not None and n.resolution == row.get("resolution")]
    return (same_resolution or found or [None])[0]


def _setting(row: dict[str, Any], key: str) -> str | None:
    value = row.get("fewshot.shots" if key == "shots" else key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = CONDITION_DEFAULTS.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return None if value is None else str(value)


GROUP = ["model", "pretrain_set", "transfer_set", "kind", "resolution", "fewshot.shots", *CONDITION_DEFAULTS]


def paper_table(frame: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Every cell of ours that the paper reports: ours (mean ± std over seeds, n), the paper's
    number, ours − paper and the source. Accuracies in percent."""
    if frame.empty or "transfer_set" not in frame:
        return pd.DataFrame(columns=PAPER_COLUMNS)
    done = frame[(frame["status"] == "done") & frame["transfer_set"].notna() & frame["kind"].isin(["finetune", "fewshot", "summary"])]
    if "accuracy" not in done:
        return pd.DataFrame(columns=PAPER_COLUMNS)
    done = done[done["accuracy"].notna()]
    candidates = paper_values()
    models = {n.model for n in candidates}
    done = done[done["model"].isin(models)]
    group = [c for c in GROUP if c in done.columns]
    rows = []
    for _, cell in done.groupby(group, dropna=False, sort=True):
        first = cell.iloc[0].to_dict()
        paper = match(first, candidates)
        if paper is None:
            continue
        per_seed = cell.groupby("seed")["accuracy"].mean() if "seed" in cell else cell["accuracy"]
        mean, std, n = mean_std(list(per_seed * 100))
        shots = first.get("fewshot.shots")
        kind = first["kind"] if first["kind"] != "fewshot" else f"{int(shots)}-shot linear"
        rows.append({
            "model": first["model"], "pre-training": first["pretrain_set"], "dataset": first["transfer_set"], "kind": kind,
            "resolution": first.get("resolution"), "ours": round(mean, digits), "std": round(std, digits), "n": n,
            "paper": paper.value, "delta": round(mean - paper.value, digits),
            "source": paper.source + (" (approximate)" if paper.approximate else "") + (f"; {paper.note}" if paper.note else ""),
        })
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)
