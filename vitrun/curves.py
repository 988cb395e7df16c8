"""Training curves from each stage's `metrics.jsonl`: loss, learning rate and gradient norm
against the step, one figure per experiment and training kind (`vitrun report --curves`).

The training loop appends one line every `log_every` steps; a line torn by a full disk or a
kill is skipped here (the loop itself drops it on resume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from vitrun.store import METRICS_FILE, STAGE_FILE, Store, read_metrics as read_rows

TRAINING_KINDS = ("pretrain", "finetune_dev", "finetune")
PANELS = (
    ("loss", "training loss", "log"),
    ("lr", "learning rate", "linear"),
    ("grad_norm", "gradient norm (before clipping)", "log"),
    ("eval_accuracy", "held-out accuracy (eval_every)", "linear"),  # only stages that evaluated
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged steps of one metrics.jsonl (torn or foreign lines skipped, see store.read_metrics)."""
    return [row for row in read_rows(path) if "step" in row]


def curves_frame(store: Store, experiment: str) -> pd.DataFrame:
    """One row per logged step of every training stage of `experiment` that has a record:
    experiment, key, kind, label (model · data · size), step, loss, lr, grad_norm, and
    eval_accuracy at the steps of a finished stage's evaluation curve (`eval_every`)."""
    rows = []
    for folder in sorted((store.root / experiment).glob(f"*/{METRICS_FILE}")):
        try:
            record = json.loads((folder.parent / STAGE_FILE).read_text())
        except (OSError, ValueError):
            record = {"kind": folder.parent.name.split("-")[0], "config": {}}  # unfinished: still worth a look
        if record.get("kind") not in TRAINING_KINDS:
            continue
        label = _label(record)
        for row in read_metrics(folder):
            rows.append({"experiment": experiment, "key": folder.parent.name, "kind": record["kind"], "label": label, **row})
        for step, accuracy in (record.get("metrics") or {}).get("eval_curve") or ():
            rows.append({"experiment": experiment, "key": folder.parent.name, "kind": record["kind"], "label": label, "step": step, "eval_accuracy": accuracy})
    return pd.DataFrame(rows)


def _label(record: dict[str, Any]) -> str:
    config = record.get("config") or {}
    model = (config.get("model") or {}).get("name", "?")
    pretrain = config.get("pretrain") or {}
    transfer = config.get("transfer") or {}
    if record.get("kind") == "pretrain":
        data = pretrain.get("name") or pretrain.get("data", "")
        size = pretrain.get("size")
        return f"{model} · {data}" + (f" · {size:,}" if size else "")
    lr = (config.get("finetune") or {}).get("lr")
    return f"{model} · {transfer.get('name') or transfer.get('data', '')}" + (f" · lr {lr}" if lr is not None and not isinstance(lr, list) else "")


def save_curves(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """PNG figures `curves-<kind>.png` under out_dir, one per training kind in `frame`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if frame.empty:
        return written
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind in [k for k in TRAINING_KINDS if k in set(frame["kind"])]:
        rows = frame[frame["kind"] == kind]
        panels = [p for p in PANELS if p[0] in rows and rows[p[0]].notna().any()]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 3, 4), squeeze=False)
        for ax, (column, title, scale) in zip(axes[0], panels):
            for label, stage in rows.groupby("label", sort=True):
                stage = stage.dropna(subset=[column]).sort_values("step")  # eval points sit between log rows
                ax.plot(stage["step"], stage[column], label=label, linewidth=1.2, marker="o" if len(stage) < 20 else None, markersize=3)
            values = rows[column].dropna()
            wide = len(values) and (values > 0).all() and values.max() / values.min() > 10  # log only where it helps
            ax.set_yscale(scale if wide else "linear")
            ax.set_xlabel("step")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles[:24], labels[:24], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        fig.suptitle(f"{rows['experiment'].iloc[0]}: {kind} curves ({rows['key'].nunique()} stages)")
        fig.tight_layout()
        path = out_dir / f"curves-{kind}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
