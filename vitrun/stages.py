"""What each stage kind does: pre-train, fine-tune (with its dev-split trials), few-shot.

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
from vitrun.data import loader, sampling, sources
from vitrun.data.options import SPLIT_SEED, SourceOptions
from vitrun.engine import checkpoint, masked_patch
from vitrun.engine.device import Placement
from vitrun.engine.loop import LoopSettings, decay_groups, supervised, train
from vitrun.evals.fewshot import LinearFewshot
from vitrun.plan import Stage
from vitrun.schema import RunConfig
from vitrun.paper.real import PREDICTIONS_FILE, predictions_bytes
from vitrun.store import StageDir, Store, write_atomic

EVAL_BATCH = 256
# Fine-tuned models are scored on vit_jax's evaluation view (the whole image resized to the
# fine-tuning resolution), the pipeline their training crop comes from; pre-training tests and
# few-shot features keep the centre crop (big_vision's few-shot view is a central crop too).
FINETUNE_EVAL_VIEW = "full"


@dataclass
class Context:
    store: Store
    experiment: str
    placement: Placement
    run: RunConfig
    cache_dir: str | None = None
    on_step: Callable[[int, float], None] | None = None
    on_notice: Callable[[str], None] | None = None  # one-line reports, e.g. a checkpoint set aside
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
        return loader.LoaderSettings(workers=workers, prefetch=self.run.prefetch, device=self.placement.device, decode=self.run.decode)

    def stage_dir(self, key: str) -> StageDir:
        return self.store.stage(self.experiment, key)


def run_stage(stage: Stage, ctx: Context) -> dict[str, Any]:
    return {"pretrain": pretrain, "finetune_dev": finetune_dev, "finetune": finetune, "fewshot": fewshot}[stage.kind](stage, ctx)


def training_flops(stage: Stage) -> float:
    """Estimated FLOPs of the stage: 3× forward (forward + backward) per training image,
    1× forward per evaluated image (test-set sizes are not known before loading: excluded)."""
    section = stage.training
    if not section or not section["steps"]:  # few-shot, or no pre-training (steps = 0, scratch)
        return 0.0
    return 3.0 * models.forward_flops(_spec(stage.config), section["image_size"]) * section["steps"] * section["batch_size"]


# -- kinds -----------------------------------------------------------------------------

def pretrain(stage: Stage, ctx: Context) -> dict[str, Any]:
    cfg, p = stage.config, stage.config["pretrain"]
    if p["steps"] == 0:  # includes objective = "scratch"
        return _initial_weights(stage, ctx)
    ds = _pretrain_data(cfg, ctx)
    train_set = ds.train.subset(sampling.balanced_subset(ds.train.labels, p["size"], cfg["seed"])) if p["size"] else ds.train
    if p["objective"] == "masked-patch":
        return _masked_patch(stage, ctx, ds, train_set)
    model = _initial_model(cfg, ds.num_classes).to(ctx.placement.device)
    optimizer = _pretrain_optimizer(model, p)
    loss_fn = _sigmoid_xent if p.get("loss") == "sigmoid" else F.cross_entropy
    summary = _train(stage, ctx, model, optimizer, _loader_for(stage, ctx, train_set, p), supervised(loss_fn), p)
    sd = ctx.stage_dir(stage.key)
    checkpoint.save_weights(sd.weights_file, model)
    return {
        **summary,
        "accuracy": accuracy(model, ds.test, p["image_size"], ctx),
        "num_classes": ds.num_classes,
        "train_images": len(train_set),
        "images_seen": p["steps"] * p["batch_size"],
    }


def _masked_patch(stage: Stage, ctx: Context, ds: data.Dataset, train_set) -> dict[str, Any]:
    """Self-supervised pre-training (§4.6): the ViT learns to predict corrupted patches; its
    weights (with a placeholder one-class head, as `_initial_weights`) go to the transfer stages."""
    cfg, p = stage.config, stage.config["pretrain"]
    model = masked_patch.MaskedPatchModel(_initial_model(cfg, num_classes=1), p["mask_target"]).to(ctx.placement.device)
    optimizer = _pretrain_optimizer(model, p)
    num_patches = model.vit.grid[0] * model.vit.grid[1]
    images_at = _loader_for(stage, ctx, train_set, p)

    def batch_at(step: int):  # the corruption travels in the labels' place, a pure function of the step
        images, _ = images_at(step)
        return images, masked_patch.plan_for_step(len(images), num_patches, p["mask_rate"], cfg["seed"], step)

    summary = _train(stage, ctx, model, optimizer, batch_at, masked_patch.objective, p)
    checkpoint.save_weights(ctx.stage_dir(stage.key).weights_file, model.vit)
    with ctx.placement.autocast():
        scores = masked_patch.evaluate(model, _device_batches(ds.test, p["image_size"], ctx), p["mask_rate"])
    return {**summary, "accuracy": None, **scores, "num_classes": 1, "train_images": len(train_set), "images_seen": p["steps"] * p["batch_size"]}


def _pretrain_optimizer(model: nn.Module, p: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay on kernels only (Table 3), for either objective."""
    return torch.optim.AdamW(decay_groups(model, p["weight_decay"]), lr=p["lr"], betas=tuple(p["betas"]))


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


def finetune_dev(stage: Stage, ctx: Context) -> dict[str, Any]:
    """One learning-rate trial (App. B.1.1): fine-tune on the training split less its dev
    share, score on the dev share. The `finetune` stage picks the best trial."""
    f, t = stage.config["finetune"], stage.config["transfer"]
    ds = ctx.dataset(t, f["image_size"], t["classes"], t["per_class"])
    fraction, (train_part, dev_part) = _dev_split(t, ds.train)
    model, summary = _finetuned(stage, ctx, train_part, ds.num_classes, f["lr"])
    return {**summary, "accuracy": accuracy(model, dev_part, f["image_size"], ctx, FINETUNE_EVAL_VIEW), "lr": f["lr"], "dev_fraction": fraction, "train_images": len(train_part), "dev_images": len(dev_part)}


def finetune(stage: Stage, ctx: Context) -> dict[str, Any]:
    """Fine-tune on the whole training split and test: at the recipe's one learning rate, or
    at the rate whose dev trial (the parent `finetune_dev` stages) scored best."""
    f, t = stage.config["finetune"], stage.config["transfer"]
    ds = ctx.dataset(t, f["image_size"], t["classes"], t["per_class"])
    chosen: dict[str, Any] = {}
    lr = f["lr"]
    if isinstance(lr, list):
        trials = [ctx.stage_dir(key).read()["metrics"] for key in stage.parents[1:]]
        dev = {str(trial["lr"]): trial["accuracy"] for trial in trials}
        lr = max(lr, key=lambda rate: dev[str(rate)])  # ties: the first listed
        chosen = {"lr": lr, "dev_accuracy": dev}
        warning = _dev_warning(dev, trials[0].get("dev_images", 0), lr)
        if warning:
            chosen["dev_warning"] = warning
            if ctx.on_notice:
                ctx.on_notice(f"{stage.data}: {warning}")
    model, summary = _finetuned(stage, ctx, ds.train, ds.num_classes, lr)
    predicted = predictions(model, ds.test, f["image_size"], ctx, FINETUNE_EVAL_VIEW)
    # kept for metrics computed later from other labels (ImageNet-ReaL: `vitrun report --real`)
    write_atomic(ctx.stage_dir(stage.key).path / PREDICTIONS_FILE, predictions_bytes(predicted.tolist()))
    if f.get("save_weights"):  # for `vitrun evaluate` and `vitrun export`
        checkpoint.save_weights(ctx.stage_dir(stage.key).weights_file, model)
    hits = (predicted == ds.test.labels).double().mean().item()
    return {**summary, **chosen, "accuracy": hits, "train_images": len(ds.train), "num_classes": ds.num_classes}


MIN_DEV_IMAGES = 50  # below this a dev split's accuracies move in steps of 2% or more


def _dev_warning(dev: dict[str, float], images: int, chosen: float) -> str | None:
    """Why the learning-rate search may have chosen by noise, or None: a dev split too small to
    tell rates apart, or a best rate ahead of the next by less than one dev image."""
    scores = sorted(dev.values(), reverse=True)
    if images and images < MIN_DEV_IMAGES:
        return (f"the dev split has {images} images, too few to tell learning rates apart (accuracies {', '.join(f'{v:.0%}' for v in dev.values())}); "
                f"chose lr {chosen}; raise dev_fraction, or give one lr to skip the search")
    if len(scores) > 1 and images and scores[0] - scores[1] < 1 / images:
        return f"the best learning rates tie on the dev split ({images} images); chose lr {chosen}, the first listed"
    return None


def _finetuned(stage: Stage, ctx: Context, images, num_classes: int, lr: float) -> tuple[nn.Module, dict[str, Any]]:
    f, t = stage.config["finetune"], stage.config["transfer"]
    model = _pretrained(stage, ctx)
    # Fine-tuning protocol (App. B.1.1): the whole pre-training head goes, a zero-initialised
    # linear layer comes; a higher resolution resamples the position embeddings in 2-D.
    model.reset_head(num_classes)
    model.set_image_size(f["image_size"], mode=f["pos_embed_resample"])
    model.to(ctx.placement.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=f["momentum"], weight_decay=0.0)
    section = {**f, "schedule": "cosine", "crop": t.get("crop") or "inception"}
    summary = _train(stage, ctx, model, optimizer, _loader_for(stage, ctx, images, section), supervised(F.cross_entropy), section)
    return model, summary


def fewshot(stage: Stage, ctx: Context) -> dict[str, Any]:
    """Linear k-shot accuracy on frozen features, averaged over `draws` draws of the shots.

    With a list of `l2_reg` values the shots come from the training split less its dev share;
    the value with the best mean dev accuracy over the draws is the one tested.
    """
    cfg, s, t = stage.config, stage.config["fewshot"], stage.config["transfer"]
    image_size = cfg["pretrain"]["image_size"]
    ds = ctx.dataset(t, image_size, t["classes"], t["per_class"])
    model = _pretrained(stage, ctx).to(ctx.placement.device)
    l2_regs = s["l2_reg"] if isinstance(s["l2_reg"], list) else [s["l2_reg"]]
    pool, dev_x = ds.train, None
    if len(l2_regs) > 1:
        _, (pool, dev) = _dev_split(t, ds.train)
        dev_x = features(model, dev, image_size, ctx)
    test_x = features(model, ds.test, image_size, ctx)
    test_hits, dev_hits = [], []  # per draw: accuracy for each l2
    for draw in range(s["draws"]):
        shots = sampling.k_shot(pool.labels, s["shots"], cfg["seed"] * 1000 + draw)
        solver = LinearFewshot(features(model, pool.subset(shots), image_size, ctx), pool.labels[shots])
        test_hits.append([_hit_rate(solver.predict(test_x, l2), ds.test.labels) for l2 in l2_regs])
        if dev_x is not None:
            dev_hits.append([_hit_rate(solver.predict(dev_x, l2), dev.labels) for l2 in l2_regs])
    best = 0
    out: dict[str, Any] = {}
    if dev_hits:
        dev_mean = [sum(col) / len(col) for col in zip(*dev_hits)]
        best = max(range(len(l2_regs)), key=dev_mean.__getitem__)
        out = {"l2_reg": l2_regs[best], "dev_accuracy": {str(l2): acc for l2, acc in zip(l2_regs, dev_mean)}}
    scores = [row[best] for row in test_hits]
    return {**out, "accuracy": sum(scores) / len(scores), "accuracy_per_draw": scores, "feature_dim": test_x.shape[1]}


def _hit_rate(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted.cpu() == labels).double().mean().item()


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
    weights = checkpoint.load_weights(parent.verified_weights())  # never weights that changed on disk
    num_classes = parent.read()["metrics"]["num_classes"]
    model = models.build(_spec(cfg), num_classes, p["image_size"])
    model.load_state_dict(weights)
    return model


def _dev_split(transfer: dict[str, Any], train):
    """(fraction, (train less dev, dev)): the held-out share of a transfer set's training split
    that learning rates and l2 are picked on (App. B.1.1), the same images for every run."""
    fraction = sources.dev_fraction(transfer["data"], SourceOptions.of(transfer))
    return fraction, sources.dev_split(train, fraction, SPLIT_SEED)


def _loader_for(stage: Stage, ctx: Context, images, section: dict):
    """`batch_at(step)` over `images` for a training section ([pretrain] or [finetune]).

    The training crop is the inception crop for both (vit_jax's fine-tuning pipeline and
    big_vision's: a random 5-100% of the area, resized, flipped) unless the data's `crop` says.
    """
    crop = section.get("crop") or "inception"
    return loader.train_batches(images, section["image_size"], section["batch_size"], section["steps"], stage.config["seed"], crop, ctx.loader_settings())


def _train(stage, ctx, model, optimizer, batch_at, objective, section: dict) -> dict[str, Any]:
    settings = LoopSettings(
        steps=section["steps"],
        warmup_steps=section["warmup_steps"],
        schedule=section["schedule"],
        grad_clip=section["grad_clip"],
        log_every=ctx.run.log_every,
        checkpoint_seconds=ctx.run.checkpoint_seconds,
    )
    return train(model, optimizer, batch_at, objective, settings, ctx.placement, ctx.stage_dir(stage.key), stage.config["seed"], ctx.on_step, ctx.on_notice)


def _sigmoid_xent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """big_vision's sigmoid cross-entropy: per-class binary losses, summed over classes."""
    targets = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()


def _device_batches(images, image_size: int, ctx: Context, view: str = "center"):
    for x, y in loader.eval_batches(images, image_size, EVAL_BATCH, ctx.loader_settings(), view):
        yield x.to(ctx.placement.device), y


@torch.no_grad()
def _map_batches(fn, images, image_size: int, ctx: Context) -> torch.Tensor:
    out = []
    for x, _ in _device_batches(images, image_size, ctx):
        with ctx.placement.autocast():
            out.append(fn(x).float())
    return torch.cat(out)


def features(model: nn.Module, images, image_size: int, ctx: Context) -> torch.Tensor:
    """Frozen representations (pre-logits or pooled), (N, F), for few-shot evaluation."""
    model.eval()
    return _map_batches(model.representation, images, image_size, ctx)


@torch.no_grad()
def predictions(model: nn.Module, images, image_size: int, ctx: Context, view: str = "center") -> torch.Tensor:
    """The predicted class of each image, int64 (N,), in the split's order; argmax taken per
    batch on the device, so memory holds one batch of logits, never all of them."""
    model.eval()
    out = []
    for x, _ in _device_batches(images, image_size, ctx, view):
        with ctx.placement.autocast():
            out.append(model(x).argmax(1))
    return torch.cat(out).cpu()


@torch.no_grad()
def accuracy(model: nn.Module, images, image_size: int, ctx: Context, view: str = "center") -> float:
    """Top-1 accuracy, counted per batch on the device: memory stays one batch of logits
    (all logits of a 50k-image, 21k-class test set would be 4 GB)."""
    model.eval()
    hits = torch.zeros((), dtype=torch.int64, device=ctx.placement.device)
    for x, y in _device_batches(images, image_size, ctx, view):
        with ctx.placement.autocast():
            hits += (model(x).argmax(1) == y.to(x.device)).sum()
    return hits.item() / len(images)
