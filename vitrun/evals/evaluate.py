"""Evaluate a classifier on a labelled split: top-1, top-5, per-class accuracy, confusion matrix.

Counts are accumulated per batch on the model's device: no logits are kept, so a 50,000-image
split costs the memory of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitrun.data import loader
from vitrun.engine.device import Placement


@dataclass(frozen=True)
class Evaluation:
    """confusion[i, j]: images of true class i predicted as class j (K, K)."""

    classes: tuple[str, ...]
    confusion: np.ndarray
    top5_hits: int

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return float(np.trace(self.confusion) / max(self.images, 1))

    @property
    def top5(self) -> float:
        return self.top5_hits / max(self.images, 1)

    @property
    def per_class(self) -> np.ndarray:
        """Recall of each class (K,); NaN for a class with no images in the split."""
        counts = self.confusion.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / counts

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "top1": self.top1,
            "top5": self.top5,
            "per_class": [{"class": name, "images": int(n), "accuracy": None if np.isnan(acc) else float(acc)}
                          for name, n, acc in zip(self.classes, self.confusion.sum(1), self.per_class)],
            "confusion": self.confusion.tolist(),
        }


# `vitrun evaluate` scores a model as fine-tuning tests it (plan.FINETUNE_VIEWS: the whole image
# resized, vit_jax's view), so a fine-tuned stage's accuracy is reproduced; "center" is the view
# of pre-training tests and few-shot features. Square images (the embedded sets) look the same in both.
DEFAULT_VIEW = "full"


@torch.no_grad()
def evaluate(model: nn.Module, images, image_size: int, placement: Placement, batch_size: int = 256,
             settings: loader.LoaderSettings | None = None, view: str = DEFAULT_VIEW) -> Evaluation:
    """Score `model` on `images` (an ImageSet or LazyImageSet) at `view` ("full" or "center") of `image_size`."""
    classes = tuple(images.classes)
    k = len(classes)
    if model.num_classes != k:
        raise ValueError(f"the model has {model.num_classes} classes but the data has {k}; evaluate on the dataset the model was trained on")
    model.eval().to(placement.device)
    confusion = torch.zeros(k * k, dtype=torch.int64, device=placement.device)
    top5_hits = torch.zeros((), dtype=torch.int64, device=placement.device)
    settings = settings or loader.LoaderSettings(device=placement.device)
    for x, y in loader.eval_batches(images, image_size, batch_size, settings, view=view):
        x, y = x.to(placement.device, non_blocking=True), y.to(placement.device, non_blocking=True)
        with placement.autocast():
            logits = model(x).float()
        top = logits.topk(min(5, k), dim=1).indices  # (B, 5)
        top5_hits += (top == y[:, None]).any(1).sum()
        confusion += torch.bincount(y * k + top[:, 0], minlength=k * k)
    return Evaluation(classes, confusion.view(k, k).cpu().numpy(), int(top5_hits))


def save_confusion_png(evaluation: Evaluation, path: Path, title: str) -> None:
    """The confusion matrix as an image, rows normalised (each row: where a class's images went)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(evaluation.classes)
    counts = evaluation.confusion.sum(1, keepdims=True)
    share = np.divide(evaluation.confusion, counts, out=np.zeros(evaluation.confusion.shape), where=counts > 0)
    side = min(4 + 0.35 * k, 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 40:  # beyond that, names are unreadable: the axes keep their indices
        ax.set_xticks(range(k), evaluation.classes, rotation=90)
        ax.set_yticks(range(k), evaluation.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\ntop-1 {evaluation.top1:.1%}, top-5 {evaluation.top5:.1%} on {evaluation.images:,} images", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
