"""The columns of a report's frame, known without pandas: one stage record → one row, and
the columns a plan's records will have, so `vitrun validate` checks report tables before
anything runs without importing pandas (about a second of start-up)."""

from __future__ import annotations

import difflib
import math
from typing import Any, Collection, Iterable

from vitrun.paper import PAPER_COST_COLUMNS, section_dataset

# What stages record in their `metrics` (vitrun/stages.py, engine/loop.py, engine/masked_patch.py,
# runner.py): the columns a report may use besides the config's, known before anything runs.
METRICS = ("accuracy", "final_loss", "steps", "num_classes", "train_images", "images_seen", "dev_fraction",
           "dev_images", "lr", "l2_reg", "feature_dim", "masked_patch_accuracy", "masked_patch_loss",
           "diverged_at_step", "loss")
DERIVED = ("accuracy", "pretrain_exaflops")  # added to the whole frame (`report.frame_of`)


class ReportError(Exception):
    """A report spec names something the results do not have; str() is one line."""


def stage_row(record: dict[str, Any]) -> dict[str, Any]:
    """One report row of a stage record: dotted config columns, metrics, cost, status, and the
    aliases `report.load_frame` documents."""
    config = record.get("config", {})
    row: dict[str, Any] = {"experiment": record.get("experiment"), "key": record.get("key"), "kind": record.get("kind"), "status": record.get("status") or "done"}
    row.update(flatten(config))
    row["model"] = config.get("model_label") or config.get("model", {}).get("name")
    pretrain = config.get("pretrain") or {}
    transfer = config.get("transfer") or {}
    row["data"] = transfer.get("name") or transfer.get("data") or pretrain.get("name") or pretrain.get("data")
    section = config.get("finetune") if record.get("kind") in ("finetune", "finetune_dev") else None
    row["resolution"] = (section or {}).get("image_size") or pretrain.get("image_size")
    row["pretrain_set"] = section_dataset(pretrain) or pretrain.get("data")
    row["transfer_set"] = section_dataset(transfer)
    parents = record.get("parents") or []
    row["pretrain_key"] = record.get("key") if record.get("kind") == "pretrain" else (parents[0] if parents else None)
    row.update({k: v for k, v in (record.get("metrics") or {}).items() if not isinstance(v, (list, dict))})
    row.update({"wall_time_s": record.get("wall_time_s"), "flops": record.get("flops"), "device": record.get("device")})
    row["versions"] = " ".join(f"{k} {v}" for k, v in sorted((record.get("versions") or {}).items())) or None
    return row


def columnar(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as one list per column, in order of first appearance, NaN where a row lacks the
    column (as pandas fills records): what a DataFrame is built from and what pickles fast."""
    out: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        for key, value in row.items():
            column = out.get(key)
            if column is None:
                column = out[key] = [math.nan] * len(rows)
            column[i] = value
    return out


def planned_columns(stages: Iterable[Any]) -> set[str]:
    """Every column a report of these planned stages (`plan.Stage`s) can use: config, metrics,
    aliases, the frame's derived columns and the paper's cost columns; "run" names the `--set` variant."""
    columns = {"run", *DERIVED, *PAPER_COST_COLUMNS}
    for stage in stages:
        record = {"experiment": "", "key": stage.key, "kind": stage.kind, "status": "done", "config": stage.config,
                  "parents": list(stage.parents), "metrics": dict.fromkeys(METRICS, 0.0), "flops": 0.0, "wall_time_s": 0.0,
                  "device": "", "versions": {}}
        columns.update(stage_row(record))
    return columns


def check_name(columns: Collection[str], name: str, where: str) -> None:
    """ReportError naming `name` and the closest column when `columns` lacks it."""
    if name in columns:
        return
    listed = [str(c) for c in columns]
    close = ([c for c in listed if c.rsplit(".", 1)[-1] == name]  # "shots" → "fewshot.shots"
             or difflib.get_close_matches(name, listed, n=1, cutoff=0.6)
             or sorted(c for c in listed if c.startswith(name)))  # "acc" → "accuracy"
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ReportError(f"{where}: unknown column {name!r}{hint}")


def check_spec(spec: Any, columns: Collection[str], where: str) -> None:
    """ReportError for the first column a `[[report.tables]]` spec uses that `columns` lacks."""
    for key in spec.where:
        check_name(columns, key, f"{where}.where")
    for name in [*_as_list(spec.rows), *_as_list(spec.columns), spec.values] + ([spec.per] if spec.per else []):
        check_name(columns, name, where)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"name": …}} → {"model.name": …}; lists become their text (one cell each).
    Written flat for the two levels configs have: a report flattens thousands of them."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + key
        if value.__class__ is dict:
            for inner, leaf in value.items():
                cls = leaf.__class__
                if cls is dict:
                    out.update(flatten(leaf, f"{name}.{inner}."))
                else:
                    out[f"{name}.{inner}"] = str(leaf) if cls is list else leaf
        else:
            out[name] = str(value) if value.__class__ is list else value
    return out
