"""Every `stage.json` → one long DataFrame → the recipe's pivot tables and figures."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from vitrun.schema import TableSpec
from vitrun.columns import ReportError, check_name, columnar, stage_row
from vitrun.store import STAGE_FILE, Store

FORMATS = ("table", "markdown", "csv", "latex", "json")
EXTENSIONS = {"markdown": "md", "csv": "csv", "latex": "tex", "json": "json", "table": "txt"}


_STAGE_DIR = re.compile(r"^[a-z_]+-[0-9a-f]{12}$")  # a stage key; report/ and analysis/ are not stages


@dataclass(frozen=True)
class Table:
    """A pivot: `frame` the aggregate (scaled, rounded); for a mean, `std` and `count` are the
    standard deviation over seeds and the seeds per cell; `status` names the cells that have
    no finished value but failed, diverged stages; `notes` go under the table."""

    name: str
    frame: pd.DataFrame  # pivoted, scaled and rounded
    spec: TableSpec
    std: pd.DataFrame | None = None
    count: pd.DataFrame | None = None
    status: pd.DataFrame | None = None
    notes: tuple[str, ...] = ()

    def cell(self, index: Any, column: Any) -> str:
        """One cell as shown: "61.0 ± 1.0", "61.0 (n=2)" when seeds differ by cell, a status, or "–"."""
        value = self.frame.at[index, column]
        if pd.isna(value):
            status = self.status.at[index, column] if self.status is not None and index in self.status.index and column in self.status.columns else None
            return str(status) if isinstance(status, str) else "–"
        text = f"{int(value)}" if self.spec.aggregate == "count" else f"{value:.{self.spec.digits}f}"
        if self.std is not None:
            std = self.std.at[index, column]
            if not pd.isna(std):
                text += f" ± {std:.{self.spec.digits}f}"
            if not self._uniform_count():
                text += f" (n={int(self.count.at[index, column])})"
        return text

    def display(self) -> pd.DataFrame:
        """The table as strings, cell by cell."""
        return pd.DataFrame([[self.cell(i, c) for c in self.frame.columns] for i in self.frame.index], index=self.frame.index, columns=self.frame.columns)

    def _uniform_count(self) -> bool:
        counts = _counts(self.count) - {0} if self.count is not None else set()
        return len(counts) <= 1


def load_frame(store: Store, experiment: str | None = None, records: Iterable[dict[str, Any]] | None = None, rows: dict[str, list[Any]] | None = None) -> pd.DataFrame:
    """One row per recorded stage: dotted config columns, metrics, cost, status.

    Short aliases sit beside the dotted columns: `model` (model.name), `data` (the
    transfer dataset of transfer stages, the pre-training set's name or source of pre-training stages),
    `status` ("done", or "failed"/"diverged" as the record says), `resolution` (the
    stage's image size), `pretrain_set` and `transfer_set` (the paper's dataset names
    where a source is one, see `vitrun.paper.paper_dataset`), `pretrain_key` (the
    pre-training a transfer stage starts from) and `pretrain_exaflops` (that
    pre-training's training FLOPs / 1e18, the compute axis of Figure 5). `rows`: the records'
    rows when already made, column by column (`vitrun.rows`).
    """
    if rows is not None:
        return frame_from_columns(rows)
    return frame_of(store.records(experiment) if records is None else records)


def frame_of(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """`load_frame` over any stage records (read from a store, or built by tests)."""
    return frame_from_columns(columnar([stage_row(record) for record in records]))


def frame_from_columns(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """The frame of `columns.stage_row` rows given column by column (`columns.columnar`), with
    the columns derived across rows."""
    frame = pd.DataFrame(columns)
    if not frame.empty and "accuracy" not in frame:  # every stage failed: still a table of statuses
        frame["accuracy"] = float("nan")
    if not frame.empty:
        pretrain_flops = frame[frame["kind"] == "pretrain"].set_index("key")["flops"]
        frame["pretrain_exaflops"] = pd.to_numeric(frame["pretrain_key"].map(pretrain_flops), errors="coerce") / 1e18
    return frame


def unfinished_stages(store: Store, experiment: str, finished: Iterable[str] = ()) -> list[str]:
    """Stage directories of `experiment` without a stage.json: started or waiting, not done.
    `finished`: keys already read from records, so only the other directories are looked into."""
    folder = store.root / experiment
    if not folder.is_dir():
        return []
    known = set(finished)
    with os.scandir(folder) as entries:
        candidates = [e.name for e in entries if e.name not in known and _STAGE_DIR.match(e.name) and e.is_dir()]
    return sorted(name for name in candidates if not (folder / name / STAGE_FILE).exists())


def default_tables(frame: pd.DataFrame) -> list[TableSpec]:
    """Accuracy per model and pre-training size for each stage kind present; per model and
    dataset where no stage has a size (pivoting on an all-empty column would show nothing)."""
    specs = []
    for kind in ("finetune", "fewshot", "pretrain", "summary"):
        rows = frame[frame["kind"] == kind] if not frame.empty else frame
        if rows.empty:
            continue
        by_size = "pretrain.size" in rows and rows["pretrain.size"].notna().any()
        over = "transfer datasets" if by_size else "seeds"
        names = {"finetune": f"Fine-tuning accuracy (%), mean over {over}", "fewshot": f"Few-shot linear accuracy (%), mean over {over} and shots", "pretrain": "Pre-training test accuracy (%)", "summary": "The paper's summaries of fine-tuning accuracy (%): average-5, VTAB-1k"}
        columns = "data" if kind == "summary" else "pretrain.size" if by_size else "data"
        specs.append(TableSpec(name=names[kind], kind=kind, rows=["model", "pretrain.size"] if kind == "summary" and by_size else "model", columns=columns))
    return specs


def build_tables(frame: pd.DataFrame, specs: Iterable[TableSpec]) -> list[Table]:
    tables = []
    for i, spec in enumerate(specs):
        selected = _select(frame, spec, i)
        if selected.empty:
            continue
        if spec.per:
            for value, group in selected.groupby(spec.per, sort=True):
                tables.append(_pivot(f"{spec.name} — {spec.per} = {value}", group, spec))
        else:
            tables.append(_pivot(spec.name, selected, spec))
    return tables


def _select(frame: pd.DataFrame, spec: TableSpec, index: int) -> pd.DataFrame:
    """The rows a table draws on: finished ones with a value, and failed or diverged ones
    (shown as such, never averaged in)."""
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
    return selected[(selected["status"] != "done") | selected[spec.values].notna()]


def _pivot(name: str, frame: pd.DataFrame, spec: TableSpec) -> Table:
    """Aggregate each cell. A mean is taken over seeds *of per-seed values* (each seed first
    averaged over whatever else the cell spans, e.g. datasets), so std and n are over seeds."""
    rows, columns = _as_list(spec.rows), _as_list(spec.columns)
    by = rows + columns
    done = frame[(frame["status"] == "done") & frame[spec.values].notna()]
    std = count = None
    if done.empty:
        mean = pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=by) if len(by) > 1 else pd.Index([], name=by[0]))
    elif spec.aggregate == "mean" and "seed" in done.columns and "seed" not in by:
        per_seed = done.assign(seed=done["seed"].fillna(-1)).groupby(by + ["seed"])[spec.values].mean()  # a record without a seed is one seed
        grouped = per_seed.groupby(level=list(range(len(by))))
        mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    else:
        mean = done.groupby(by)[spec.values].agg(spec.aggregate)
    failed = frame[frame["status"] != "done"]
    status = failed.groupby(by)["status"].agg(lambda s: ", ".join(sorted(set(s)))) if not failed.empty else None
    index = mean.index.union(status.index) if status is not None else mean.index
    shape = lambda series: _unstack(series.reindex(index), columns)  # noqa: E731
    table = shape(mean)
    if spec.aggregate != "count":
        table = (table * spec.scale).round(spec.digits)
    std = (shape(std) * spec.scale).round(spec.digits) if std is not None else None
    count = shape(count).fillna(0) if count is not None else None
    status_frame = shape(status).reindex_like(table) if status is not None else None
    notes = []
    if count is not None and (counts := sorted(_counts(count) - {0})) and counts != [1]:  # one seed: nothing to say
        notes.append(f"mean ± std over seeds (n = {counts[0]} per cell)" if len(counts) == 1 else "mean ± std over seeds (n per cell in brackets)")
    if not failed.empty:
        tally = failed["status"].value_counts()
        notes.append("not averaged in: " + ", ".join(f"{n} {s}" for s, n in sorted(tally.items())) + f" stage{'s' if len(failed) > 1 else ''}")
    table, std, count, status_frame = (_integral_labels(f) for f in (table, std, count, status_frame))
    return Table(name, table, spec, std, count, status_frame, tuple(notes))


def _counts(count: pd.DataFrame) -> set[int]:
    """The distinct seed counts of a table's cells (any number of column levels; blanks skipped)."""
    return {int(v) for v in count.to_numpy().ravel() if not pd.isna(v)}


def _integral_labels(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Row and column labels such as shots or sizes read back as floats (1.0) when a column
    mixes them with blanks: show whole numbers as integers (1)."""
    if frame is None:
        return None

    def tidy(index: pd.Index) -> pd.Index:
        if isinstance(index, pd.MultiIndex):
            return index.set_levels([tidy(level) for level in index.levels], verify_integrity=False)
        if index.dtype.kind == "f" and len(index) and all(pd.isna(v) or float(v).is_integer() for v in index):
            return pd.Index([v if pd.isna(v) else int(v) for v in index], name=index.name, dtype=object)
        return index

    frame = frame.copy()
    frame.index, frame.columns = tidy(frame.index), tidy(frame.columns)
    return frame


def _unstack(series: pd.Series, columns: list[str]) -> pd.DataFrame:
    table = series.unstack(columns) if len(series.index.names) > len(columns) else series.to_frame().T
    table.columns.name = " / ".join(columns)
    return table


def _check_column(frame: pd.DataFrame, name: str, where: str) -> None:
    check_name(frame.columns, name, where)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# -- rendering -------------------------------------------------------------------------

def to_json(experiment: str, tables: list[Table], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """{experiment, tables: [{name, index, columns, data, std, n, status, notes}], …extra}; NaN → null."""
    out = []
    for table in tables:
        entry = {"name": table.name, **_split(table.frame)}
        for key, frame in (("std", table.std), ("n", table.count), ("status", table.status)):
            if frame is not None:
                entry[key] = _split(frame)["data"]
        entry["notes"] = list(table.notes)
        out.append(entry)
    return {"experiment": experiment, "tables": out, **(extra or {})}


def _split(frame: pd.DataFrame) -> dict[str, Any]:
    split = json.loads(frame.to_json(orient="split"))  # NaN → null, numpy → plain numbers
    return {"index": split["index"], "columns": split["columns"], "data": split["data"]}


def render_text(table: Table, fmt: str) -> str:
    """One table as text every standard tool parses: Markdown and LaTeX with one header row
    (row levels as columns, columns as `name = value`), CSV in the long tidy form (`to_csv`)."""
    if fmt == "csv":
        return to_csv(table)
    shown = flat(table)
    if fmt == "markdown":
        return f"### {table.name}\n\n{shown.to_markdown(index=False)}\n" + ("\n" + "  \n".join(table.notes) + "\n" if table.notes else "")
    if fmt == "latex":
        caption = latex_escape(table.name + ("; " + "; ".join(table.notes) if table.notes else ""))
        return shown.to_latex(index=False, escape=True, caption=caption)
    if fmt == "table":
        return shown.to_string(index=False) + "".join(f"\n{note}" for note in table.notes) + "\n"
    raise ValueError(f"unknown format {fmt!r}")


def flat(table: Table) -> pd.DataFrame:
    """The table as strings with a single header row: each row level a column, each column
    labelled `name = value` (`pretrain.size = 500`) or its value alone when unnamed."""
    shown = table.display()
    names = [n for n in shown.columns.names if n is not None]
    name = " · ".join(map(str, names)) if len(names) == shown.columns.nlevels else None
    labels = [" · ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in shown.columns]
    shown.columns = [f"{name} = {label}" if name else label for label in labels]
    levels = [str(n) if n is not None else "row" for n in shown.index.names]
    shown.index = shown.index.set_names(levels)
    return shown.reset_index().astype(str)


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def to_csv(table: Table, experiment: str | None = None) -> str:
    return tidy(table, experiment).to_csv(index=False)


def tidy(table: Table, experiment: str | None = None) -> pd.DataFrame:
    """The long form: one line per cell with its row and column labels, value, and (for a mean
    over seeds) std and n, and a status where the cell has none but failed stages."""
    rows = []
    row_names = [str(n) for n in table.frame.index.names]
    column_name = table.frame.columns.name or "column"
    for index in table.frame.index:
        keys = index if isinstance(index, tuple) else (index,)
        for column in table.frame.columns:
            value = table.frame.at[index, column]
            entry = {"experiment": experiment, "table": table.name, **dict(zip(row_names, keys)),
                     column_name: " · ".join(map(str, column)) if isinstance(column, tuple) else column,
                     table.spec.values: None if pd.isna(value) else value}
            if table.std is not None:
                entry["std"] = table.std.at[index, column]
            if table.count is not None:
                entry["n"] = int(table.count.at[index, column])
            if table.status is not None and index in table.status.index and column in table.status.columns and isinstance(table.status.at[index, column], str):
                entry["status"] = table.status.at[index, column]
            rows.append(entry)
    frame = pd.DataFrame(rows)
    return frame if experiment is not None else frame.drop(columns="experiment")


def rich_table(table: Table):
    from rich.table import Table as RichTable

    frame = table.frame
    out = RichTable(title=table.name, title_justify="left", header_style="bold", caption="\n".join(table.notes) or None, caption_justify="left")
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
            text = table.cell(index, column)
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
