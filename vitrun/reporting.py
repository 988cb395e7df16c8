"""One experiment's whole report: its tables, the paper beside them, `[[expect]]` outcomes,
unfinished stages, versions and devices. The CLI renders it; nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from vitrun import report
from vitrun.expect import Outcome, evaluate, outcome_frame
from vitrun.paper.join import add_paper_columns, add_real, paper_table
from vitrun.schema import ExpectConfig, TableSpec
from vitrun.store import Store

PAPER_TITLE = "The paper beside ours (accuracy %, delta = ours − paper)"
EXPECT_TITLE = "Expectations (the recipe's expect cells: ours against target ± tolerance)"


@dataclass
class ExperimentReport:
    name: str
    frame: pd.DataFrame
    tables: list[report.Table]
    paper: pd.DataFrame | None  # None unless asked for (--paper)
    outcomes: list[Outcome]
    unfinished: list[str]
    recipe: dict[str, Any] = field(default_factory=dict)  # recipe.json: name, path, recipe, report
    extra_notes: list[str] = field(default_factory=list)  # other runs left out; ImageNet stages --real could not score

    def listings(self) -> list[tuple[str, pd.DataFrame, list[str]]]:
        """Tables that are lists of cells rather than pivots: (title, frame, notes)."""
        out = []
        if self.paper is not None:
            notes = [] if not self.paper.empty else ["no cell of ours matches the paper's (model, pre-training set, dataset); see vitrun/paper/numbers.csv"]
            out.append((PAPER_TITLE, self.paper, notes))
        if self.outcomes:
            failed = sum(not o.passed for o in self.outcomes)
            out.append((EXPECT_TITLE, outcome_frame(self.outcomes), [f"{failed} of {len(self.outcomes)} cells miss their target"] if failed else []))
        return out

    def notes(self) -> list[str]:
        """Experiment-level lines under the tables."""
        if not self.unfinished:
            return list(self.extra_notes)
        shown = ", ".join(self.unfinished[:5]) + (" …" if len(self.unfinished) > 5 else "")
        return [f"{len(self.unfinished)} unfinished stage{'s' if len(self.unfinished) > 1 else ''} (no stage.json yet, not in the tables): {shown}", *self.extra_notes]

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    def versions(self) -> list[str]:
        return _distinct(self.frame, "versions")

    def devices(self) -> list[str]:
        return _distinct(self.frame, "device")

    def document(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"unfinished": self.unfinished}
        if self.paper is not None:
            extra["paper"] = _records(self.paper)
        if self.outcomes:
            extra["expect"] = _records(outcome_frame(self.outcomes))
        return report.to_json(self.name, self.tables, extra)


def build(store: Store, name: str, paper: bool = False, real: list[list[int]] | None = None,
          run: str | None = None, every_run: bool = False, records: list[dict[str, Any]] | None = None,
          rows: dict[str, list[Any]] | None = None) -> ExperimentReport:
    """`real`: ReaL labels (`vitrun.paper.real.load_real_labels`) to score ImageNet stages with.
    `run`: whose stages the tables show (a `LoadedRecipe.run_label`; default the recipe as
    written, else the latest run); `every_run`: every stage, with a `run` row level naming
    each stage's run. `records`: the experiment's verified records when already read
    (`Store.scan`), or their rows (`vitrun.rows`), else they are read here. Raises report.ReportError (a table names an unknown column) or
    ValueError (a bad [[expect]])."""
    frame, real_notes = report.load_frame(store, name, records, rows), []
    saved = store.recipe(name) or {}
    unfinished = report.unfinished_stages(store, name, frame["key"].dropna() if "key" in frame else ())
    frame, run_notes = _one_run(frame, saved.get("runs") or [], run, every_run)
    if real is not None:
        frame, real_notes = add_real(frame, store.root / name, real)
    frame = add_paper_columns(frame)
    specs = [TableSpec(**t) for t in saved.get("report", {}).get("tables", [])] or report.default_tables(frame)
    if every_run and "run" in frame and frame["run"].nunique() > 1:
        specs = [spec.model_copy(update={"rows": ["run", *_as_rows(spec.rows)]}) for spec in specs]
    tables = report.build_tables(frame, specs)
    cells = [ExpectConfig(**c) for c in _as_list((saved.get("recipe") or {}).get("expect"))]
    return ExperimentReport(name, frame, tables, paper_table(frame) if paper else None, evaluate(frame, cells), unfinished, saved, run_notes + real_notes)


AS_WRITTEN = "as written"  # the run label of a recipe run without --set


def _one_run(frame: pd.DataFrame, runs: list[dict[str, Any]], run: str | None, every_run: bool) -> tuple[pd.DataFrame, list[str]]:
    """The rows of one run (a recipe as written, or one `--set` variant), so a table never
    averages stages of different settings; with every_run all rows, labelled in `run`.
    recipe.json of an older vitrun records no runs: every stage counts as the recipe's."""
    if frame.empty or not runs:
        return frame, []
    plans = {r.get("set", ""): set(r.get("stages") or []) for r in runs}
    current = run if run in plans else "" if "" in plans else list(plans)[-1]
    order = [current] + [label for label in plans if label != current]

    def label(key: str) -> str:
        found = next((name for name in order if key in plans[name]), None)
        return "other settings" if found is None else (found or AS_WRITTEN)

    frame = frame.assign(run=frame["key"].map(label))
    mine = frame["key"].isin(plans[current])
    if every_run:
        return frame, []
    others = frame[~mine]
    if others.empty:
        return frame, []
    counts = others["run"].value_counts()
    listed = "; ".join(f"{name} ({n} stage{'s' if n > 1 else ''})" for name, n in counts.items())
    return frame[mine], [f"not in these tables, from other runs of this experiment: {listed}; `vitrun report --all` shows every run, labelled"]


def _as_rows(rows: Any) -> list[str]:
    return [rows] if isinstance(rows, str) else list(rows)


def render_listing(title: str, frame: pd.DataFrame, notes: list[str], fmt: str) -> str:
    shown = frame.fillna("–").astype(str)
    if fmt == "markdown":
        return f"### {title}\n\n{shown.to_markdown(index=False)}\n" + "".join(f"\n{n}" for n in notes)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "latex":
        return shown.to_latex(index=False, escape=True, caption=report.latex_escape(title))
    return f"{title}\n{shown.to_string(index=False)}" + "".join(f"\n{n}" for n in notes) + "\n"


def tidy_listing(title: str, frame: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """A listing's rows for the long CSV, tagged with its experiment and title."""
    return frame.assign(experiment=experiment, table=title)[["experiment", "table", *frame.columns]]


def rich_listing(title: str, frame: pd.DataFrame, notes: list[str]):
    from rich.table import Table as RichTable

    out = RichTable(title=title, title_justify="left", header_style="bold", caption="\n".join(notes) or None, caption_justify="left")
    for column in frame.columns:
        out.add_column(str(column), justify="left" if frame[column].dtype == object else "right")
    for row in frame.itertuples(index=False):
        out.add_row(*("–" if pd.isna(v) else _styled(str(v)) for v in row))
    return out


def _styled(text: str) -> str:
    return {"FAIL": "[bold red]FAIL[/bold red]", "pass": "[green]pass[/green]", "no result": "[bold red]no result[/bold red]"}.get(text, text)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    import json

    return json.loads(frame.to_json(orient="records"))


def _distinct(frame: pd.DataFrame, column: str) -> list[str]:
    if frame.empty or column not in frame:
        return []
    return sorted({str(v) for v in frame[column].dropna()})


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value)
