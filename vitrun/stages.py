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
from vitrun.data import loader, sampling
from vitrun.data.options import SourceOptions
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

    def dataset(self, section: dict[str, Any], image_size: int, classes: int | None = None, per_class: int | None = None) -> data.Dataset:
        """Load once per run: transfer sets are shared by every pre-trained model.

        section: the stage config's [pretrain] or [transfer] table (source name and options).
        """
        source, options = section["data"], SourceOptions.of(section)
        # Real sources are decoded at whatever size a batch asks for: one load serves all.
        size = image_size if data.is_embedded(source) else None
        key = (source, options, size, classes, per_class)
        if key not in self._datasets:
            self._datasets[key] = data.load(source, image_size=image_size, classes=classes, per_class=per_class, cache_dir=self.cache_dir, options=options)
        return self._datasets[key]

    def loader_settings(self) -> loader.LoaderSettings:
        workers = self.run.workers if self.run.workers is not None else loader.LoaderSettings.auto_workers(self.placement.device)
        return loader.LoaderSettings(workers=workers, prefetch=self.run.prefetch, device=self.placement.device)

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
    if p["steps"] == 0:
        return _initial_weights(stage, ctx)
    ds = _pretrain_data(cfg, ctx)
    train_set = ds.train.subset(sampling.balanced_subset(ds.train.labels, p["size"], cfg["seed"])) if p["size"] else ds.train
    model = _initial_model(cfg, ds.num_classes).to(ctx.placement.device)
    optimizer = torch.optim.AdamW(decay_groups(model, p["weight_decay"]), lr=p["lr"], betas=tuple(p["betas"]))
    loss_fn = _sigmoid_xent if p.get("loss") == "sigmoid" else F.cross_entropy
    summary = _train(stage, ctx, model, optimizer, train_set, p["image_size"], loss_fn, p, p.get("crop") or "inception")
    sd = ctx.stage_dir(stage.key)
    checkpoint.save_weights(sd.weights_file, model)
    return {
        **summary,
        "accuracy": accuracy(model, ds.test, p["image_size"], ctx),
        "num_classes": ds.num_classes,
        "train_images": len(train_set),
        "images_seen": p["steps"] * p["batch_size"],
    }


def _initial_weights(stage: Stage, ctx: Context) -> dict[str, Any]:
    """`pretrain.steps = 0`: store the initial weights for the transfer stages; no data is read.

    The head is a placeholder (one class): fine-tuning replaces it and few-shot never reads it.
    """
    model = _initial_model(stage.config, num_classes=1)
    checkpoint.save_weights(ctx.stage_dir(stage.key).weights_file, model)
    return {"accuracy": None, "num_classes": 1, "steps": 0, "train_images": 0, "images_seen": 0}


def _initial_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """Where a pre-training starts (its own checkpoint, if any, is restored later by the loop):
    1. the recipe's `model.init` weights (timm or official npz), with a new zero head;
    2. otherwise a fresh model, initialised from the recipe's seed (torch seeds each new
       process at random, so without it the same stage gave different weights per run).
    """
    torch.manual_seed(cfg["seed"])
    image_size = cfg["pretrain"]["image_size"]
    if cfg.get("init"):
        from vitrun.interop import load_init

        return load_init(cfg["init"], _spec(cfg), num_classes, image_size)
    return models.build(_spec(cfg), num_classes, image_size)


def finetune(stage: Stage, ctx: Context) -> dict[str, Any]:
    f, t = stage.config["finetune"], stage.config["transfer"]
    ds = ctx.dataset(t, f["image_size"], t["classes"], t["per_class"])
    model = _pretrained(stage, ctx)
    # Fine-tuning protocol (App. B.1.1): the whole pre-training head goes, a zero-initialised
    # linear layer comes; a higher resolution resamples the position embeddings in 2-D.
    model.reset_head(ds.num_classes)
    model.set_image_size(f["image_size"], mode=f["pos_embed_resample"])
    model.to(ctx.placement.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=f["lr"], momentum=f["momentum"], weight_decay=0.0)
    crop = t.get("crop") or _default_finetune_crop(t["data"])
    summary = _train(stage, ctx, model, optimizer, ds.train, f["image_size"], F.cross_entropy, {**f, "schedule": "cosine"}, crop)
    return {**summary, "accuracy": accuracy(model, ds.test, f["image_size"], ctx), "train_images": len(ds.train)}


def fewshot(stage: Stage, ctx: Context) -> dict[str, Any]:
    cfg, s, t = stage.config, stage.config["fewshot"], stage.config["transfer"]
    image_size = cfg["pretrain"]["image_size"]
    ds = ctx.dataset(t, image_size, t["classes"], t["per_class"])
    model = _pretrained(stage, ctx).to(ctx.placement.device)
    test_x = features(model, ds.test, image_size, ctx)
    scores = []
    for draw in range(s["draws"]):
        shots = sampling.k_shot(ds.train.labels, s["shots"], cfg["seed"] * 1000 + draw)
        train_x = features(model, ds.train.subset(shots), image_size, ctx)
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
    return ctx.dataset(p, p["image_size"], classes, per_class)


def _pretrained(stage: Stage, ctx: Context) -> nn.Module:
    """The parent pre-training's model with its final weights (pre-training head included)."""
    cfg, p = stage.config, stage.config["pretrain"]
    parent = ctx.stage_dir(stage.parents[0])
    weights = checkpoint.load_weights(parent.weights_file)
    num_classes = parent.read()["metrics"]["num_classes"]
    model = models.build(_spec(cfg), num_classes, p["image_size"])
    model.load_state_dict(weights)
    return model


def _default_finetune_crop(source: str) -> str:
    """The paper's fine-tuning crop is "resize" (shorter side to the target, random crop, flip).

    Embedded images are generated square at the target size, where that crop is only a
    flip; they keep the inception crop the quickstart was measured with.
    """
    return "inception" if data.is_embedded(source) else "resize"


def _train(stage, ctx, model, optimizer, images, image_size: int, loss_fn, section: dict, crop: str) -> dict[str, Any]:
    seed = stage.config["seed"]
    batch_at = loader.train_batches(images, image_size, section["batch_size"], section["steps"], seed, crop, ctx.loader_settings())
    settings = LoopSettings(
        steps=section["steps"],
        warmup_steps=section["warmup_steps"],
        schedule=section["schedule"],
        grad_clip=section["grad_clip"],
        log_every=ctx.run.log_every,
        checkpoint_seconds=ctx.run.checkpoint_seconds,
    )
    return train(model, optimizer, batch_at, loss_fn, settings, ctx.placement, ctx.stage_dir(stage.key), seed, ctx.on_step)


def _sigmoid_xent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """big_vision's sigmoid cross-entropy: per-class binary losses, summed over classes."""
    targets = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()


@torch.no_grad()
def _map_batches(fn, images, image_size: int, ctx: Context) -> torch.Tensor:
    out = []
    for x, _ in loader.eval_batches(images, image_size, EVAL_BATCH, ctx.loader_settings()):
        with ctx.placement.autocast():
            out.append(fn(x.to(ctx.placement.device)).float())
    return torch.cat(out)


def features(model: nn.Module, images, image_size: int, ctx: Context) -> torch.Tensor:
    """Frozen representations (pre-logits or pooled), (N, F), for few-shot evaluation."""
    model.eval()
    return _map_batches(model.representation, images, image_size, ctx)


def accuracy(model: nn.Module, images, image_size: int, ctx: Context) -> float:
    model.eval()
    logits = _map_batches(model, images, image_size, ctx)
    return (logits.argmax(1).cpu() == images.labels).double().mean().item()
