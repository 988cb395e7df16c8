"""The paper's figures from our results (matplotlib, Agg): Figure 3, Figure 4, Figure 5,
Table 8 as bars and Figure 9, each as PNG and SVG; with `paper`, the paper's numbers as
hollow reference markers. A figure is drawn only when the results hold what it plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from vitrun.paper import numbers

FAMILY_MARKERS = {"vit": "o", "resnet": "s", "hybrid": "^"}
FAMILY_NAMES = {"vit": "ViT", "resnet": "BiT", "hybrid": "hybrid"}
PAPER_SETS = ("ImageNet", "ImageNet-21k", "JFT-300M")  # Figure 3's x axis, smallest first


@dataclass(frozen=True)
class Figure:
    what: str  # "figure3" …
    title: str
    png: Path
    svg: Path


def draw_all(frame: pd.DataFrame, folder: Path, paper: bool = False) -> list[Figure]:
    """Every figure the results allow, written under `folder`."""
    if frame.empty or "accuracy" not in frame:
        return []
    done = frame[(frame["status"] == "done") & frame["accuracy"].notna()]
    drawers: list[tuple[str, str, Callable]] = [
        ("figure3", "Figure 3: fine-tuning accuracy vs pre-training set", figure3),
        ("figure4", "Figure 4: 5-shot linear accuracy vs pre-training subset size", figure4),
        ("figure5", "Figure 5: transfer accuracy vs pre-training compute", figure5),
        ("table8", "Table 8: position embeddings, 5-shot linear accuracy", table8),
        ("figure9", "Figure 9: class token vs global average pooling", figure9),
    ]
    out = []
    for what, title, draw in drawers:
        fig = draw(done, title, paper)
        if fig is not None:
            out.append(_save(fig, folder, what, title))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, what: str, title: str) -> Figure:
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{what}.png", folder / f"{what}.svg"
    for ax in fig.axes:  # legends outside the data: right of a lone plot, below each of several
        if not ax.get_legend_handles_labels()[0]:
            continue
        if len(fig.axes) == 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8, frameon=False)
        else:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    fig.savefig(png, bbox_inches="tight", dpi=120)
    fig.savefig(svg, bbox_inches="tight")
    _plt().close(fig)
    return Figure(what, title, png, svg)


def seed_mean(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    """Accuracy (%) per `by` group: each seed's mean over the rest of the group, then the mean over seeds."""
    seeded = rows.assign(seed=rows["seed"] if "seed" in rows else 0)
    return seeded.groupby(by + ["seed"], dropna=False)["accuracy"].mean().groupby(level=list(range(len(by)))).mean() * 100


def _imagenet_or_all(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """ImageNet rows when there are any (the paper's y axis), else every transfer dataset."""
    imagenet = rows[rows["transfer_set"] == "ImageNet"] if "transfer_set" in rows else rows.iloc[0:0]
    return (imagenet, "ImageNet top-1 accuracy (%)") if not imagenet.empty else (rows, "mean transfer accuracy (%)")


def _pretrain_label(row: pd.Series) -> str:
    size = row.get("pretrain.size")
    base = row.get("pretrain_set") or row.get("pretrain.data") or "?"
    return f"{base} {int(size):,}" if pd.notna(size) else str(base)


def _set_order(label: str) -> tuple:
    name, _, size = label.rpartition(" ") if label not in PAPER_SETS else (label, "", "")
    if label in PAPER_SETS:
        return (0, PAPER_SETS.index(label), 0)
    try:
        return (1, name, int(size.replace(",", "")))
    except ValueError:
        return (2, label, 0)


def figure3(done: pd.DataFrame, title: str, paper: bool):
    rows = done[done["kind"] == "finetune"]
    if rows.empty:
        return None
    rows, ylabel = _imagenet_or_all(rows)
    rows = rows.assign(pretrain_label=rows.apply(_pretrain_label, axis=1))
    ys = seed_mean(rows, ["model", "pretrain_label"])
    labels = sorted(rows["pretrain_label"].unique(), key=_set_order)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model, series in ys.groupby(level=0):
        values = series.droplevel(0).reindex(labels)
        (line,) = ax.plot(range(len(labels)), values.values, marker="o", label=model)
        if paper:
            ref = {n.pretrain: n.value for n in numbers() if n.source == "Table 5" and n.model == model}
            points = [(i, ref[x]) for i, x in enumerate(labels) if x in ref]
            if points:
                ax.plot(*zip(*points), linestyle="none", marker="o", markerfacecolor="none", markersize=9, color=line.get_color(), label=f"{model}, paper (Table 5)")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_xlabel("pre-training set (images)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def figure4(done: pd.DataFrame, title: str, paper: bool):
    if "fewshot.shots" not in done or "pretrain.size" not in done:
        return None
    rows = done[(done["kind"] == "fewshot") & (done["fewshot.shots"] == 5) & done["pretrain.size"].notna()]
    if rows.empty:
        return None
    rows, ylabel = _imagenet_or_all(rows)
    ys = seed_mean(rows, ["model", "pretrain.size"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model, series in ys.groupby(level=0):
        series = series.droplevel(0).sort_index()
        ax.plot(series.index.astype(float), series.values, marker="o", label=model)
    sizes = sorted(rows["pretrain.size"].unique())
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{int(s):,}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("pre-training images (subset size, log scale)")
    ax.set_ylabel(ylabel.replace("accuracy", "5-shot linear accuracy"))
    ax.set_title(title, fontsize=10)
    return fig


def figure5(done: pd.DataFrame, title: str, paper: bool):
    if "pretrain_exaflops" not in done:
        return None
    summary = done[(done["kind"] == "summary") & (done["data"] == "average-5")]
    rows, ylabel = (summary, "average-5 accuracy (%)") if not summary.empty else (done[done["kind"] == "finetune"], "mean fine-tuning accuracy over transfer sets (%)")
    rows = rows[rows["pretrain_exaflops"] > 0]
    if rows.empty:
        return None
    family = rows["model.family"] if "model.family" in rows else pd.Series("vit", index=rows.index)
    rows = rows.assign(family=family.fillna("vit"))
    ys = seed_mean(rows, ["family", "model", "pretrain_key"])
    flops = rows.groupby("pretrain_key")["pretrain_exaflops"].first()
    plt = _plt()
    panels = 2 if paper else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for (fam, model), series in ys.groupby(level=[0, 1]):
        xs = flops.reindex(series.index.get_level_values(2)).values
        ax.plot(xs, series.values, linestyle="none", marker=FAMILY_MARKERS.get(fam, "o"), label=f"{FAMILY_NAMES.get(fam, fam)}: {model}")
    ax.set_xscale("log")
    ax.set_xlabel("pre-training compute (exaFLOPs, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + " (ours)", fontsize=10)
    if paper:
        ref = axes[0][1]
        cost = {(n.model, n.note): n.value for n in numbers() if n.source == "Table 6" and n.metric == "exaflops"}
        for n in numbers():
            if n.source == "Table 6" and n.metric == "accuracy":
                fam = "hybrid" if "+" in n.model else "resnet" if n.model.startswith("R") else "vit"
                ref.plot([cost[(n.model, n.note)]], [n.value], linestyle="none", marker=FAMILY_MARKERS[fam], markerfacecolor="none", markersize=8, label=f"{FAMILY_NAMES[fam]}: {n.model}" + (f" ({n.note})" if n.note else ""))
        ref.set_xscale("log")
        ref.set_xlabel("pre-training compute (exaFLOPs, log scale)")
        ref.set_ylabel("ImageNet top-1 accuracy (%)")
        ref.set_title("The paper, Table 6 (JFT-300M)", fontsize=10)
    fig.tight_layout()
    return fig


POS_EMBED = ("none", "1d", "2d", "relative")
POS_EMBED_AT = ("stem", "every-layer", "every-layer-shared")


def table8(done: pd.DataFrame, title: str, paper: bool):
    if "model.pos_embed" not in done:
        return None
    rows = done[(done["kind"] == "fewshot") & done["model.pos_embed"].notna()]
    if "fewshot.shots" in rows and (rows["fewshot.shots"] == 5).any():
        rows = rows[rows["fewshot.shots"] == 5]
    if rows.empty or rows["model.pos_embed"].nunique() < 2:
        return None
    rows, ylabel = _imagenet_or_all(rows)
    ys = seed_mean(rows.assign(at=rows["model.pos_embed_at"].fillna("stem")), ["model.pos_embed", "at"])
    groups = [p for p in POS_EMBED if p in ys.index.get_level_values(0)]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / len(POS_EMBED_AT)
    ref = {(dict(n.condition).get("model.pos_embed"), dict(n.condition).get("model.pos_embed_at", "stem")): n.value for n in numbers() if n.source == "Table 8"}
    for j, at in enumerate(POS_EMBED_AT):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
        values = [ys.get((g, at)) for g in groups]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=f"added at: {at}")
        if paper:
            points = [(x, ref[(g, at)]) for x, g in zip(xs, groups) if (g, at) in ref]
            if points:
                ax.plot(*zip(*points), linestyle="none", marker="_", markersize=14, markeredgewidth=2, color="black", label="paper (Table 8, ViT-B/16 JFT, ImageNet)" if j == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel("position embedding")
    ax.set_ylabel(ylabel.replace("accuracy", "5-shot linear accuracy"))
    ax.set_title(title, fontsize=10)
    return fig


def figure9(done: pd.DataFrame, title: str, paper: bool):
    if "model.classifier" not in done or done["model.classifier"].nunique() < 2:
        return None
    rows = done[done["kind"] == "fewshot"]
    if rows.empty:
        rows = done[done["kind"] == "finetune"]
    rows = rows[rows["model.classifier"].notna()]
    if rows.empty:
        return None
    rows, ylabel = _imagenet_or_all(rows)
    ys = seed_mean(rows, ["model.classifier", "pretrain.lr", "pretrain.steps"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (classifier, lr), series in ys.groupby(level=[0, 1]):
        series = series.droplevel([0, 1]).sort_index()
        ax.plot(series.index.astype(float), series.values, marker="o", label=f"{'class token' if classifier == 'token' else 'GAP'}, lr {lr:g}")
    ax.set_xlabel("pre-training steps")
    ax.set_ylabel(ylabel.replace("accuracy", "few-shot linear accuracy" if (rows["kind"] == "fewshot").all() else "fine-tuning accuracy"))
    ax.set_title(title, fontsize=10)
    return fig
