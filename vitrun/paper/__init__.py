"""The paper's own numbers (arXiv 2010.11929), shipped as data, and how our runs meet them.

`numbers.csv` holds Tables 2, 5, 6 and 8 and the numbers the text states (Section 4.6),
transcribed from the paper; Figure 3 plots Table 5's numbers. Each row names its source,
model, pre-training set, transfer dataset, resolution, stage kind and metric; `condition`
lists the settings the number needs (`model.pos_embed=2d`, `shots=5`), and `approximate`
marks values read off a figure (the text states no numbers for Figures 4 and 9, so none
are recorded). Nothing here imports torch or pandas.
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

NUMBERS_FILE = Path(__file__).with_name("numbers.csv")

# The paper's transfer datasets and VTAB-1k's 19 tasks in their three groups (Zhai et al. 2019).
VTAB_GROUPS: dict[str, tuple[str, ...]] = {
    "natural": ("caltech101", "cifar100", "dtd", "flowers102", "pets", "sun397", "svhn"),
    "specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "structured": ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_elev"),
}  # 7 + 4 + 8 = 19 tasks
VTAB_TASKS: tuple[str, ...] = tuple(t for group in VTAB_GROUPS.values() for t in group)
AVERAGE5 = ("ImageNet-ReaL", "Pets", "Flowers", "CIFAR-10", "CIFAR-100")  # Figure 5's average-5

# Settings a paper number assumes unless its `condition` says otherwise: a stage whose
# config differs (a masked-patch pre-training, GAP, 2-D embeddings) never meets it.
CONDITION_DEFAULTS = {"pretrain.objective": "supervised", "model.classifier": "token", "model.pos_embed": "1d", "model.pos_embed_at": "stem"}

# Checked in order: ReaL before ImageNet, 21k before ImageNet, CIFAR-100 before CIFAR-10.
_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"real", "ImageNet-ReaL"),
    (r"imagenet-?2[12]k|in2[12]k|imagenet-w21|imagenet21|fall11", "ImageNet-21k"),
    (r"jft", "JFT-300M"),
    (r"imagenet|ilsvrc|in1k", "ImageNet"),
    (r"cifar-?100", "CIFAR-100"),
    (r"cifar-?10", "CIFAR-10"),
    (r"pet", "Pets"),
    (r"flower", "Flowers"),
)


@functools.lru_cache(maxsize=4096)  # a report asks for the same few sources thousands of times
def paper_dataset(source: str | None) -> str | None:
    """The paper's name for a data source, or None when it is none of the paper's datasets.

    `source` is a recipe's `data` or `name`, any case, with or without a `KIND:` prefix:
    "hf:timm/imagenet-22k-wds", "wds:/data/imagenet-22k", "ImageNet-21k" → "ImageNet-21k";
    "hf:ILSVRC/imagenet-1k" → "ImageNet"; "torchvision:OxfordIIITPet" → "Pets";
    "hf:uoft-cs/cifar100" → "CIFAR-100". A name starting with "vtab" and naming one of the
    19 tasks ("vtab/dtd", "VTAB-1k sun397") → "VTAB/<task>". Embedded generators
    ("fractal", "digits", "shapes") are not paper datasets.
    """
    if not source:
        return None
    text = str(source).lower().replace("_", "-").replace(" ", "-")
    if text.startswith("vtab"):
        flat = text.replace("-", "_")
        task = next((t for t in sorted(VTAB_TASKS, key=len, reverse=True) if t in flat), None)
        return f"VTAB/{task}" if task else None
    for pattern, name in _PATTERNS:
        if re.search(pattern, text):
            return name
    return None


# The paper's pre-training cost beside ours on every report row (`join.add_paper_columns`).
PAPER_COST_COLUMNS = ("paper_exaflops", "paper_core_days")


def section_dataset(section: Mapping[str, Any] | None) -> str | None:
    """The paper dataset of a recipe section ([pretrain] or a [[transfer]]): `name` first, then `data`."""
    if not section:
        return None
    return paper_dataset(section.get("name")) or paper_dataset(section.get("data"))


@dataclass(frozen=True)
class PaperNumber:
    source: str  # "Table 5"
    model: str
    pretrain: str  # ImageNet, ImageNet-21k, JFT-300M
    dataset: str  # transfer dataset ("" for pre-training compute)
    resolution: int | None
    kind: str  # finetune, fewshot, pretrain
    metric: str  # accuracy (%), exaflops, core_days
    value: float
    unit: str
    approximate: bool
    condition: tuple[tuple[str, str], ...]  # settings this number needs beyond the defaults
    note: str

    def conditions(self) -> dict[str, str]:
        """Every setting a matching stage must have: the defaults, overridden by `condition`."""
        return {**CONDITION_DEFAULTS, **dict(self.condition)}


@functools.lru_cache(maxsize=1)
def numbers() -> tuple[PaperNumber, ...]:
    with NUMBERS_FILE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return tuple(
        PaperNumber(
            source=r["source"], model=r["model"], pretrain=r["pretrain"], dataset=r["dataset"],
            resolution=int(r["resolution"]) if r["resolution"] else None, kind=r["kind"], metric=r["metric"],
            value=float(r["value"]), unit=r["unit"], approximate=r["approximate"] == "true",
            condition=tuple(tuple(c.split("=", 1)) for c in r["condition"].split(";") if c), note=r["note"],
        )
        for r in rows
    )


def pretrain_compute(model: str, pretrain: str | None) -> dict[str, float]:
    """The paper's pre-training cost of `model` on `pretrain`: {"exaflops": …, "core_days": …} where given."""
    out: dict[str, float] = {}
    for n in numbers():
        if n.kind == "pretrain" and n.model == model and n.pretrain == pretrain and not n.condition:
            out.setdefault(n.metric, n.value)
    return out
