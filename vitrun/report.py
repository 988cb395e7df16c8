"""Every `stage.json` → one long DataFrame → the recipe's pivot tables and figures."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from vitrun.schema import TableSpec
from vitrun.store import Store

FORMATS = ("table", "markdown", "csv", "latex", "json")
EXTENSIONS = {"markdown": "md", "csv": "csv", "latex": "tex", "json": "json", "table": "txt"}


class ReportError(Exception):
    """A report spec names something the results do not have."""


@dataclass(frozen=True)
class Table:
    name: str
    frame: pd.DataFrame  # pivoted, scaled and rounded
    spec: TableSpec


def load_frame(store: Store, experiment: str | None = None) -> pd.DataFrame:
    """One row per finished stage: dotted config columns, metrics, cost.

    Short aliases sit beside the dotted columns: `model` (model.name) and `data` (the
    transfer dataset of transfer stages, the pre-training set's name or source of pre-training stages).
    """
    rows = []
    for record in store.records(experiment):
        config = record.get("config", {})
        row: dict[str, Any] = {"experiment": record.get("experiment"), "key": record.get("key"), "kind": record.get("kind")}
        row.update(_flatten(config))
        row["model"] = config.get("model", {}).get("name")
        transfer = config.get("transfer") or {}
        pretrain = config.get("pretrain", {})
        row["data"] = transfer.get("name") or transfer.get("data") or pretrain.get("name") or pretrain.get("data")
        row.update({k: v for k, v in record.get("metrics", {}).items() if not isinstance(v, (list, dict))})
        row.update({"wall_time_s": record.get("wall_time_s"), "flops": record.get("flops"), "device": record.get("device")})
        rows.append(row)
    return pd.DataFrame(rows)


def default_tables(frame: pd.DataFrame) -> list[TableSpec]:
    """Accuracy per model and pre-training size for each stage kind present; per model and
    dataset where no stage has a size (pivoting on an all-empty column would show nothing)."""
    specs = []
    for kind in ("finetune", "fewshot", "pretrain"):
        rows = frame[frame["kind"] == kind] if not frame.empty else frame
        if rows.empty:
            continue
        by_size = "pretrain.size" in rows and rows["pretrain.size"].notna().any()
        over = "transfer datasets" if by_size else "seeds"
        names = {"finetune": f"Fine-tuning accuracy (%), mean over {over}", "fewshot": f"Few-shot linear accuracy (%), mean over {over} and shots", "pretrain": "Pre-training test accuracy (%)"}
        specs.append(TableSpec(name=names[kind], kind=kind, columns="pretrain.size" if by_size else "data"))
    return specs


def build_tables(frame: pd.DataFrame, specs: Iterable[TableSpec]) -> list[Table]:
    tables = []
    for i, spec in enumerate(specs):
        selected = _select(frame, spec, i)
        if selected.empty:
            continue
        if spec.per:
            for value, group in selected.groupby(spec.per, sort=True):
                tables.append(Table(f"{spec.name} — {spec.per} = {value}", _pivot(group, spec), spec))
        else:
            tables.append(Table(spec.name, _pivot(selected, spec), spec))
    return tables


def _select(frame: pd.DataFrame, spec: TableSpec, index: int) -> pd.DataFrame:
    if frame.empty:
        return frame
    selected = frame[frame["kind"] == spec.kind] if spec.kind else frame
    for key, wanted in spec.where.items():
        _check_column(frame, key, f"report.tables[{index}].where")
        values = wanted if isinstance(wanted, list) else [wanted]
        selected = selected[selected[key].isin(values)]
    names = [*_as_list(spec.rows), *_as_list(spec.columns), spec.values] + ([spec.per] if spec.per else [])
    for name in names:
        _check_column(frame, name, f"report.tables[{index}]")
    return selected.dropna(subset=[spec.values])


def _pivot(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    table = frame.pivot_table(index=_as_list(spec.rows), columns=_as_list(spec.columns), values=spec.values, aggfunc=spec.aggregate)
    if spec.aggregate != "count":
        table = (table * spec.scale).round(spec.digits)
    table.columns.name = " / ".join(_as_list(spec.columns))
    return table


def _check_column(frame: pd.DataFrame, name: str, where: str) -> None:
    if name not in frame.columns:
        close = difflib.get_close_matches(name, [str(c) for c in frame.columns], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ReportError(f"{where}: unknown column {name!r}{hint}")


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = str(value) if isinstance(value, list) else value
    return out


# -- rendering -------------------------------------------------------------------------

def to_json(experiment: str, tables: list[Table]) -> dict[str, Any]:
    out = []
    for table in tables:
        split = json.loads(table.frame.to_json(orient="split"))  # NaN → null, numpy → plain numbers
        out.append({"name": table.name, "index": split["index"], "columns": split["columns"], "data": split["data"]})
    return {"experiment": experiment, "tables": out}


def render_text(table: Table, fmt: str) -> str:
    frame = table.frame
    if fmt == "markdown":
        return f"### {table.name}\n\n{frame.to_markdown()}\n"
    if fmt == "csv":
        return frame.to_csv()
    if fmt == "latex":
        return frame.to_latex(caption=table.name, float_format=f"%.{table.spec.digits}f")
    raise ValueError(f"unknown format {fmt!r}")


def rich_table(table: Table):
    from rich.table import Table as RichTable

    frame = table.frame
    out = RichTable(title=table.name, title_justify="left", header_style="bold")
    index_names = [str(n) for n in frame.index.names]
    for name in index_names:
        out.add_column(name, style="cyan")
    for column in frame.columns:
        label = " ".join(map(str, column)) if isinstance(column, tuple) else str(column)
        out.add_column(label, justify="right")
    best = frame.max(axis=0)
    for index, row in frame.iterrows():
        cells = [str(i) for i in (index if isinstance(index, tuple) else (index,))]
        for column, value in row.items():
            text = "–" if pd.isna(value) else f"{value:.{table.spec.digits}f}"
            cells.append(f"[bold]{text}[/bold]" if not pd.isna(value) and value == best[column] and len(frame) > 1 else text)
        out.add_row(*cells)
    return out


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80] or "table"


def save_figure(table: Table, path: Path) -> None:
    """A table as a figure: numeric columns (sizes, rates) as lines, one per row (Figure 4
    style); categorical columns (datasets, objectives) as grouped bars, in the table's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = table.frame
    try:
        xs, numeric = [float(c) for c in frame.columns], True
    except (TypeError, ValueError):
        xs, numeric = list(range(len(frame.columns))), False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    width = 0.8 / max(len(frame), 1)
    for i, (index, row) in enumerate(frame.iterrows()):
        label = " · ".join(map(str, index)) if isinstance(index, tuple) else str(index)
        if numeric:
            ax.plot(xs, row.values, marker="o", label=label)
        else:
            ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], row.values, width, label=label)
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(xs, [str(c) for c in frame.columns])  # label the measured points, not decades
    ax.set_xlabel(frame.columns.name or "")
    ax.set_ylabel(f"{table.spec.values}" + (" (%)" if table.spec.scale == 100 else ""))
    ax.set_title(table.name, fontsize=9)
    ax.grid(alpha=0.3, axis="both" if numeric else "y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
