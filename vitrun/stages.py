"""What each stage kind does: pre-train, fine-tune, few-shot.

Each function takes a planned `Stage` and the run's `Context` and returns its metrics;
the runner around them handles the store, locks and progress display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitrun import data, models
from vitrun.data import augment, sampling
from vitrun.engine import checkpoint
from vitrun.engine.device import Placement
from vitrun.engine.loop import LoopSettings, decay_groups, train
from vitrun.evals.fewshot import linear_fewshot
from vitrun.plan import Stage
from vitrun.schema import RunConfig
from vitrun.store import StageDir, Store

EVAL_BATCH = 256


@dataclass
class Context:
    store: Store
    experiment: str
    placement: Placement
    run: RunConfig
    cache_dir: str | None = None
    on_step: Callable[[int, float], None] | None = None
    _datasets: dict[tuple, data.Dataset] = field(default_factory=dict)

    def dataset(self, source: str, image_size: int, classes: int | None = None, per_class: int | None = None) -> data.Dataset:
        """Load once per run: transfer sets are shared by every pre-trained model."""
        key = (source, image_size, classes, per_class)
        if key not in self._datasets:
            self._datasets[key] = data.load(source, image_size=image_size, classes=classes, per_class=per_class, cache_dir=self.cache_dir)
        return self._datasets[key]

    def stage_dir(self, key: str) -> StageDir:
        return self.store.stage(self.experiment, key)


def run_stage(stage: Stage, ctx: Context) -> dict[str, Any]:
    return {"pretrain": pretrain, "finetune": finetune, "fewshot": fewshot}[stage.kind](stage, ctx)


def training_flops(stage: Stage) -> float:
    """Estimated FLOPs of the stage: 3× forward (forward + backward) per training image,
    1× forward per evaluated image (test-set sizes are not known before loading: excluded)."""
    cfg = stage.config
    spec = _spec(cfg)
    if stage.kind == "pretrain":
        p = cfg["pretrain"]
        return 3.0 * models.forward_flops(spec, p["image_size"]) * p["steps"] * p["batch_size"]
    if stage.kind == "finetune":
        f = cfg["finetune"]
        return 3.0 * models.forward_flops(spec, f["image_size"]) * f["steps"] * f["batch_size"]
    return 0.0


# -- kinds -----------------------------------------------------------------------------

def pretrain(stage: Stage, ctx: Context) -> dict[str, Any]:
    cfg, p = stage.config, stage.config["pretrain"]
    ds = _pretrain_data(cfg, ctx)
    train_set = ds.train.subset(sampling.balanced_subset(ds.train.labels, p["size"], cfg["seed"])) if p["size"] else ds.train
    model = models.build(_spec(cfg), ds.num_classes, p["image_size"]).to(ctx.placement.device)
    optimizer = torch.optim.AdamW(decay_groups(model, p["weight_decay"]), lr=p["lr"], betas=tuple(p["betas"]))
    loss_fn = _sigmoid_xent if p.get("loss") == "sigmoid" else F.cross_entropy
    summary = _train(stage, ctx, model, optimizer, train_set, p["image_size"], loss_fn, p)
    sd = ctx.stage_dir(stage.key)
    checkpoint.save_weights(sd.weights_file, model)
    return {
        **summary,
        "accuracy": accuracy(model, ds.test, p["image_size"], ctx.placement),
        "num_classes": ds.num_classes,
        "train_images": len(train_set),
        "images_seen": p["steps"] * p["batch_size"],
    }


def finetune(stage: Stage, ctx: Context) -> dict[str, Any]:
    cfg, f, t = stage.config, stage.config["finetune"], stage.config["transfer"]
    ds = ctx.dataset(t["data"], f["image_size"], t["classes"], t["per_class"])
    model = _pretrained(stage, ctx)
    # Fine-tuning protocol (App. B.1.1): the whole pre-training head goes, a zero-initialised
    # linear layer comes; a higher resolution resamples the position embeddings in 2-D.
    model.reset_head(ds.num_classes)
    model.set_image_size(f["image_size"])
    model.to(ctx.placement.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=f["lr"], momentum=f["momentum"], weight_decay=0.0)
    summary = _train(stage, ctx, model, optimizer, ds.train, f["image_size"], F.cross_entropy, {**f, "schedule": "cosine"})
    return {**summary, "accuracy": accuracy(model, ds.test, f["image_size"], ctx.placement), "train_images": len(ds.train)}


def fewshot(stage: Stage, ctx: Context) -> dict[str, Any]:
    cfg, s, t = stage.config, stage.config["fewshot"], stage.config["transfer"]
    image_size = cfg["pretrain"]["image_size"]
    ds = ctx.dataset(t["data"], image_size, t["classes"], t["per_class"])
    model = _pretrained(stage, ctx).to(ctx.placement.device)
    test_x = features(model, ds.test, image_size, ctx.placement)
    scores = []
    for draw in range(s["draws"]):
        shots = sampling.k_shot(ds.train.labels, s["shots"], cfg["seed"] * 1000 + draw)
        train_x = features(model, ds.train.subset(shots), image_size, ctx.placement)
        predicted = linear_fewshot(train_x, ds.train.labels[shots], test_x, s["l2_reg"])
        scores.append((predicted.cpu() == ds.test.labels).double().mean().item())
    return {"accuracy": sum(scores) / len(scores), "accuracy_per_draw": scores, "feature_dim": test_x.shape[1]}


# -- shared pieces ---------------------------------------------------------------------

def _spec(cfg: dict[str, Any]) -> models.ModelSpec:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items()}
    return models.ModelSpec(**fields)


def _pretrain_data(cfg: dict[str, Any], ctx: Context) -> data.Dataset:
    """The pre-training pool: for generated sources just enough images per class for `size`.

    Generated images are fixed by (data seed 0, class, index), so the pools of growing sizes
    are nested; the run's seed changes initialisation and order, not the dataset.
    """
    p = cfg["pretrain"]
    classes = p["classes"]
    generator = data.GENERATORS.get(p["data"])
    per_class = None
    if p["size"] and generator:
        classes = classes or generator.DEFAULT_CLASSES
        per_class = math.ceil(p["size"] / classes)
    return ctx.dataset(p["data"], p["image_size"], classes, per_class)


def _pretrained(stage: Stage, ctx: Context) -> nn.Module:
    """The parent pre-training's model with its final weights (pre-training head included)."""
    cfg, p = stage.config, stage.config["pretrain"]
    parent = ctx.stage_dir(stage.parents[0])
    weights = checkpoint.load_weights(parent.weights_file)
    num_classes = parent.read()["metrics"]["num_classes"]
    model = models.build(_spec(cfg), num_classes, p["image_size"])
    model.load_state_dict(weights)
    return model


def _train(stage, ctx, model, optimizer, images: data.ImageSet, image_size: int, loss_fn, section: dict) -> dict[str, Any]:
    seed, batch_size = stage.config["seed"], section["batch_size"]
    order = _EpochOrder(len(images), seed)

    def batch_at(step: int):
        idx = order.batch(step, batch_size)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return augment.random_crop_flip(images.images[idx], image_size, gen), images.labels[idx]

    settings = LoopSettings(
        steps=section["steps"],
        warmup_steps=section["warmup_steps"],
        schedule=section["schedule"],
        grad_clip=section["grad_clip"],
        log_every=ctx.run.log_every,
        checkpoint_seconds=ctx.run.checkpoint_seconds,
    )
    return train(model, optimizer, batch_at, loss_fn, settings, ctx.placement, ctx.stage_dir(stage.key), seed, ctx.on_step)


class _EpochOrder:
    """Sampling without replacement, a fresh permutation per epoch, any batch found by step."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._perms = n, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))}
        return self._perms[epoch]

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        positions = torch.arange(step * batch_size, (step + 1) * batch_size)
        epochs, offsets = positions // self.n, positions % self.n
        return torch.cat([self._perm(int(e))[offsets[epochs == e]] for e in epochs.unique()])


def _sigmoid_xent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """big_vision's sigmoid cross-entropy: per-class binary losses, summed over classes."""
    targets = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()


@torch.no_grad()
def _map_batches(fn, images: data.ImageSet, image_size: int, placement: Placement) -> torch.Tensor:
    out = []
    for start in range(0, len(images), EVAL_BATCH):
        x = augment.center(images.images[start : start + EVAL_BATCH], image_size).to(placement.device)
        with placement.autocast():
            out.append(fn(x).float())
    return torch.cat(out)


def features(model: nn.Module, images: data.ImageSet, image_size: int, placement: Placement) -> torch.Tensor:
    """Frozen representations (pre-logits or pooled), (N, F), for few-shot evaluation."""
    model.eval()
    return _map_batches(model.representation, images, image_size, placement)


def accuracy(model: nn.Module, images: data.ImageSet, image_size: int, placement: Placement) -> float:
    model.eval()
    logits = _map_batches(model, images, image_size, placement)
    return (logits.argmax(1).cpu() == images.labels).double().mean().item()
