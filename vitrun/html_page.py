"""`vitrun report --format html`: one self-contained page per experiment (tables, figures
base64-embedded, the recipe, versions and devices), no scripts, no external links, so it
opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from vitrun import __version__
from vitrun.figures import Figure

ANALYSIS_INDEX = Path("analysis") / "index.json"  # written by `vitrun analyze`: [{what, target, title, png, csv}]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } caption { text-align: left; font-weight: 600; padding: .3em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; } th { background: #f3f3f3; }
td.fail { color: #b00; font-weight: 600; } td.pass { color: #070; }
p.note { color: #555; margin: .2em 0 1em; font-size: .92em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: .92em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def render(built: Any, figures: list[Figure], experiment_dir: Path) -> str:
    """The page for one `reporting.ExperimentReport`."""
    parts = [f"<h1>vitrun report: {_e(built.name)}</h1>", f'<p class="note">vitrun {_e(__version__)}, written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC from {len(built.frame)} stage records.</p>']
    parts.append("<h2>Tables</h2>")
    for table in built.tables:
        parts.append(_table(table.display(), table.name, list(table.notes), index=True))
    for title, frame, notes in built.listings():
        parts.append(_table(frame, title, notes, index=False))
    parts += [f'<p class="note">{_e(n)}</p>' for n in built.notes()]
    analysis = _analysis_figures(experiment_dir)
    if figures or analysis:
        parts.append("<h2>Figures</h2>")
        parts += [_figure(f.png, f.title) for f in figures]
        parts += analysis
    parts.append("<h2>Versions and devices</h2>")
    parts.append(_list("versions", built.versions()) + _list("devices", built.devices()))
    recipe = built.recipe.get("recipe")
    if recipe:
        parts.append(f"<h2>Recipe</h2><p class=\"note\">{_e(built.recipe.get('path', ''))}, as run (sweep included)</p>")
        parts.append(f"<pre>{_e(json.dumps(recipe, indent=2, default=str))}</pre>")
    body = "\n".join(parts)
    return f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>vitrun report: {_e(built.name)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n'


def _e(text: Any) -> str:
    return html.escape(str(text))


def _table(frame: pd.DataFrame, title: str, notes: list[str], index: bool) -> str:
    head_names = [str(n) if n is not None else "" for n in frame.index.names] if index else []
    columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    rows = ["<tr>" + "".join(f"<th>{_e(c)}</th>" for c in head_names + columns) + "</tr>"]
    for idx, row in zip(frame.index, frame.itertuples(index=False)):
        cells = [f"<th>{_e(i)}</th>" for i in (idx if isinstance(idx, tuple) else (idx,))] if index else []
        for value in row:
            text = "–" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
            cls = {"FAIL": ' class="fail"', "no result": ' class="fail"', "pass": ' class="pass"'}.get(text, "")
            cells.append(f"<td{cls}>{_e(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{_e(title)}</caption>"
    return f"<table>{caption}\n" + "\n".join(rows) + "\n</table>\n" + "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _figure(png: Path, title: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}"><figcaption>{_e(title)}</figcaption></figure>'


def _analysis_figures(experiment_dir: Path) -> list[str]:
    """The analysis figures `results/<experiment>/analysis/index.json` lists (paths relative to the experiment)."""
    index = experiment_dir / ANALYSIS_INDEX
    if not index.is_file():
        return []
    try:
        entries = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return [f'<p class="note">{_e(index)} is unreadable; analysis figures left out</p>']
    out = []
    for entry in entries if isinstance(entries, list) else []:
        png = experiment_dir / str(entry.get("png", "")) if isinstance(entry, dict) else None
        if png is None or not png.is_file():
            out.append(f'<p class="note">analysis figure missing: {_e(entry)}</p>')
            continue
        title = entry.get("title") or entry.get("what") or png.stem
        target = f" ({entry['target']})" if entry.get("target") else ""
        out.append(_figure(png, f"{title}{target}"))
    return out


def _list(label: str, values: list[str]) -> str:
    items = "".join(f"<li>{_e(v)}</li>" for v in values) or "<li>not recorded</li>"
    return f"<p>{_e(label)}:</p><ul>{items}</ul>"
