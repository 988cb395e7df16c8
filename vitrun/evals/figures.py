"""Figures in the style of the paper's Figures 6, 7 and 12 (matplotlib, Agg: no display needed).

Each function takes plain arrays and a path and writes one PNG; the numbers come from
evals/analysis.py (Figures 6, 7) and benchmark.py (Figure 12).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def embedding_filters(components: np.ndarray, ratios: np.ndarray, title: str, path: Path) -> None:
    """Figure 7 left: components (k, 3, P, P) as RGB tiles, 7 per row, each scaled to [0, 1].

    One mosaic image (one artist): tens of subplots would take seconds to render.
    """
    plt = _pyplot()
    k, _, P, _ = components.shape
    cols = min(7, k)
    rows = -(-k // cols)
    gap = max(1, P // 4)
    mosaic = np.ones((rows * (P + gap) - gap, cols * (P + gap) - gap, 3))
    for i, component in enumerate(components):
        tile = component.transpose(1, 2, 0)  # (P, P, 3)
        low, high = tile.min(), tile.max()
        r, c = divmod(i, cols)
        mosaic[r * (P + gap) : r * (P + gap) + P, c * (P + gap) : c * (P + gap) + P] = (tile - low) / (high - low) if high > low else 0.5
    fig, ax = plt.subplots(figsize=(1.1 * cols, 1.1 * rows + 0.5))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for i, ratio in enumerate(ratios):
        r, c = divmod(i, cols)
        ax.text(c * (P + gap) + P / 2 - 0.5, r * (P + gap) - 0.6, f"{100 * ratio:.1f}%", ha="center", va="bottom", fontsize=6)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def position_similarity(similarity: np.ndarray, grid: tuple[int, int], layers: Sequence[str], title: str, path: Path) -> None:
    """Figure 7 centre: similarity (L, n, n) drawn per table as a gh×gw mosaic of gh×gw maps.

    Tile (r, c) shows patch (r, c)'s cosine similarity with every patch.
    """
    plt = _pyplot()
    gh, gw = grid
    L = len(similarity)
    cols = min(L, 4)
    rows = -(-L // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows + 0.3), squeeze=False)
    image = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= L:
            continue
        mosaic = np.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), np.nan)  # one blank pixel between tiles
        maps = similarity[i].reshape(gh, gw, gh, gw)  # (query row, query col, key row, key col)
        for r in range(gh):
            for c in range(gw):
                mosaic[r * (gh + 1) : r * (gh + 1) + gh, c * (gw + 1) : c * (gw + 1) + gw] = maps[r, c]
        image = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(layers[i], fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="cosine similarity")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def attention_distance(distance: np.ndarray, image_size: int, title: str, path: Path) -> None:
    """Figure 7 right: distance (L, h) in pixels, one dot per head at each depth."""
    plt = _pyplot()
    L, h = distance.shape
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(h, 2)))
    for head in range(h):
        ax.scatter(np.arange(1, L + 1), distance[:, head], s=14, color=colours[head], label=f"head {head + 1}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, image_size)
    ax.set_xlim(0.5, L + 0.5)
    if h <= 16:
        ax.legend(fontsize=6, ncol=2, frameon=False, loc="lower right")
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def rollout_overlays(images: np.ndarray, maps: np.ndarray, title: str, path: Path) -> None:
    """Figure 6: images (B, H, W, 3) in [0, 1] above the same images weighted by maps (B, H, W)."""
    plt = _pyplot()
    B, H, W, _ = images.shape
    gap = max(1, W // 16)
    mosaic = np.ones((2 * H + gap, B * (W + gap) - gap, 3))
    for i in range(B):
        weight = maps[i] / maps[i].max() if maps[i].max() > 0 else maps[i]
        left = i * (W + gap)
        mosaic[:H, left : left + W] = images[i]
        mosaic[H + gap :, left : left + W] = images[i] * weight[..., None]
    fig, ax = plt.subplots(figsize=(1.5 * B, 3.3))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([H / 2, H + gap + H / 2], ["input", "attention"], fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def inference(rows: Sequence[dict], per: str, title: str, path: Path) -> None:
    """Figure 12: images/s (`per` core or device) and the largest batch against input size.

    rows: {"model", "image_size", "images_per_s_per_unit", "max_batch"} (max_batch may be None).
    """
    plt = _pyplot()
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    markers = {"vit": "o", "resnet": "s", "hybrid": "^"}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["image_size"])
        marker = markers.get(mine[0].get("family", ""), "o")
        sizes = [r["image_size"] for r in mine]
        speed.plot(sizes, [r["images_per_s_per_unit"] for r in mine], marker=marker, label=model)
        fits = [(r["image_size"], r["max_batch"]) for r in mine if r["max_batch"]]
        if fits:
            memory.plot(*zip(*fits), marker=marker, label=model)
    for ax, label in ((speed, f"images/s per {per}"), (memory, "largest batch that fits")):
        ax.set_xlabel("input size (pixels)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(sorted({r["image_size"] for r in rows}))
    speed.legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
