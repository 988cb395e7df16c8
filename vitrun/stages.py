"""What each stage kind does: pre-train, fine-tune (with its dev-split trials), few-shot.

Each function takes a planned `Stage` and the run's `Context` and returns its metrics;
the runner around them handles the store, locks and progress display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from vitrun import data, models
from vitrun.data import loader, sampling, sources
from vitrun.data.options import SPLIT_SEED, SourceOptions
from vitrun.data.streaming import StreamImageSet
from vitrun.engine import checkpoint, masked_patch
from vitrun.engine.device import Placement, to_device
from vitrun.engine.distributed import World, micro_batch_setting, split_batch
from vitrun.engine.extras import StageExtras
from vitrun.engine.loop import LoopSettings, decay_groups, supervised, train
from vitrun.evals.fewshot import LinearFewshot
from vitrun.models.vit import set_regularisation
from vitrun.plan import FINETUNE_VIEWS, Stage
from vitrun.schema import FinetuneConfig, PretrainConfig, RunConfig
from vitrun.paper.real import PREDICTIONS_FILE, predictions_bytes
from vitrun.store import StageDir, Store, write_atomic

EVAL_BATCH = 256
# Fine-tuned models are scored on vit_jax's evaluation view (the whole image resized to the
# fine-tuning resolution), the pipeline their training crop comes from; pre-training tests and
# few-shot features keep the centre crop (big_vision's few-shot view is a central crop too).
FINETUNE_EVAL_VIEW = FINETUNE_VIEWS["test"]  # "full"


@dataclass
class Context:
    store: Store
    experiment: str
    placement: Placement
    run: RunConfig
    cache_dir: str | None = None
    on_step: Callable[[int, float], None] | None = None
    on_notice: Callable[[str], None] | None = None  # one-line reports, e.g. a checkpoint set aside
    world: World = field(default_factory=World)  # the ranks training together (torchrun); one process by default
    _datasets: dict[tuple, data.Dataset] = field(default_factory=dict)

    def dataset(self, section: dict[str, Any], image_size: int, classes: int | None = None, per_class: int | None = None) -> data.Dataset:
        """Load once per run: transfer sets are shared by every pre-trained model.

        section: the stage config's [pretrain] or [transfer] table (source name and options;
        a transfer's `train_size`, absent from the config when unset).
        """
        source, options, train_size = section["data"], SourceOptions.of(section), section.get("train_size")
        # Real sources are decoded at whatever size a batch asks for: one load serves all.
        size = image_size if data.is_embedded(source) else None
        key = (source, options, size, classes, per_class, train_size)
        if key not in self._datasets:
            self._datasets[key] = data.load(source, image_size=image_size, classes=classes, per_class=per_class, cache_dir=self.cache_dir, options=options, train_size=train_size)
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
    cfg, p = stage.config, pretrain_section(stage)
    if p.steps == 0:  # includes objective = "scratch"
        return _initial_weights(stage, ctx)
    ds = _pretrain_data(cfg, ctx)
    train_set = _subset(ds.train, p.size, cfg["seed"]) if p.size else ds.train
    if p.objective == "masked-patch":
        return _masked_patch(stage, ctx, ds, train_set)
    held_out = None
    if p.eval_every:  # early stopping scores a held-out share of train, never test
        _, (train_set, held_out) = _dev_split(cfg["pretrain"], train_set)
    model = _initial_model(cfg, ds.num_classes).to(ctx.placement.device)
    optimizer = _pretrain_optimizer(model, p, ctx.placement.fused)
    smoothing = p.label_smoothing
    loss_fn = partial(_sigmoid_xent, smoothing=smoothing) if p.loss == "sigmoid" else partial(F.cross_entropy, label_smoothing=smoothing)
    summary = _train(stage, ctx, model, optimizer, _loader_for(stage, ctx, train_set, p, p.crop), supervised(loss_fn), p, p.schedule, held_out)
    if ctx.world.is_main():  # rank 0 owns the store
        checkpoint.save_weights(ctx.stage_dir(stage.key).weights_file, model)
    return {
        **summary,
        "accuracy": accuracy(model, ds.test, p.image_size, ctx),
        "num_classes": ds.num_classes,
        "train_images": _count(train_set),
        "images_seen": p.steps * p.batch_size,
    }


def _subset(images, size: int, seed: int):
    """The `size`-image pre-training subset: class-balanced, or a stream's first `size` examples."""
    if isinstance(images, StreamImageSet):
        return images.first(size)
    return images.subset(sampling.balanced_subset(images.labels, size, seed))


def _count(images) -> int | None:
    """Training images, None for a stream of unknown length."""
    return images.size if isinstance(images, StreamImageSet) else len(images)


def _masked_patch(stage: Stage, ctx: Context, ds: data.Dataset, train_set) -> dict[str, Any]:
    """Self-supervised pre-training (§4.6): the ViT learns to predict corrupted patches; its
    weights (with a placeholder one-class head, as `_initial_weights`) go to the transfer stages."""
    cfg, p = stage.config, pretrain_section(stage)
    model = masked_patch.MaskedPatchModel(_initial_model(cfg, num_classes=1), p.mask_target).to(ctx.placement.device)
    optimizer = _pretrain_optimizer(model, p, ctx.placement.fused)
    num_patches = model.vit.grid[0] * model.vit.grid[1]
    split = _split(ctx, p)
    whole = split.world == 1 and split.accumulation == 1 and not split.auto  # "auto" may cut micro-steps
    # A RANDOM replacement may come from any image of the global batch: a split run loads the
    # whole batch and hands each slice its sources' pixels (`slice_with_sources`).
    images_at = _loader_for(stage, ctx, train_set, p, p.crop, whole_batch=True)
    a, b = ctx.world.rank * split.per_rank, (ctx.world.rank + 1) * split.per_rank

    def batch_at(step: int):  # the corruption travels in the labels' place, a pure function of the step
        images, _ = images_at(step)
        plan = masked_patch.plan_for_step(len(images), num_patches, p.mask_rate, cfg["seed"], step)
        if whole:
            return images, plan
        return masked_patch.slice_with_sources(images, plan, model.patch, a, b)

    summary = _train(stage, ctx, model, optimizer, batch_at, masked_patch.objective, p, p.schedule, find_unused_parameters=True)
    if ctx.world.is_main():
        checkpoint.save_weights(ctx.stage_dir(stage.key).weights_file, model.vit)
    with ctx.placement.autocast():
        # not sharded: each batch's corruption is a function of its index (every rank scores all)
        scores = masked_patch.evaluate(model, _device_batches(ds.test, p.image_size, ctx, sharded=False), p.mask_rate)
    return {**summary, "accuracy": None, **scores, "num_classes": 1, "train_images": _count(train_set), "images_seen": p.steps * p.batch_size}


def _pretrain_optimizer(model: nn.Module, p: PretrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay on kernels only (Table 3), for either objective;
    `fused`: one kernel per update on CUDA (same arithmetic, within fp32 rounding)."""
    return torch.optim.AdamW(decay_groups(model, p.weight_decay), lr=p.lr, betas=p.betas, fused=fused or None)


def _initial_weights(stage: Stage, ctx: Context) -> dict[str, Any]:
    """`pretrain.steps = 0`: store the initial weights for the transfer stages; no data is read.

    The head is a placeholder (one class): fine-tuning replaces it and few-shot never reads it.
    """
    model = _initial_model(stage.config, num_classes=1)
    if ctx.world.is_main():
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
    f, t = finetune_section(stage), stage.config["transfer"]
    ds = ctx.dataset(t, f.image_size, t["classes"], t["per_class"])
    fraction, (train_part, dev_part) = _dev_split(t, ds.train)
    held_out = dev_part if f.eval_every else None
    model, summary = _finetuned(stage, ctx, train_part, ds.num_classes, f.lr, held_out)
    return {**summary, "accuracy": accuracy(model, dev_part, f.image_size, ctx, FINETUNE_EVAL_VIEW), "lr": f.lr, "dev_fraction": fraction, "train_images": len(train_part), "dev_images": len(dev_part)}


def finetune(stage: Stage, ctx: Context) -> dict[str, Any]:
    """Fine-tune on the whole training split and test: at the recipe's one learning rate, or
    at the rate whose dev trial (the parent `finetune_dev` stages) scored best."""
    f, t = finetune_section(stage), stage.config["transfer"]
    ds = ctx.dataset(t, f.image_size, t["classes"], t["per_class"])
    chosen: dict[str, Any] = {}
    lr = f.lr
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
    train_images, held_out = ds.train, None
    if f.eval_every:  # early stopping on the dev share: it is held out of training
        _, (train_images, held_out) = _dev_split(t, ds.train)
    model, summary = _finetuned(stage, ctx, train_images, ds.num_classes, lr, held_out)
    predicted = predictions(model, ds.test, f.image_size, ctx, FINETUNE_EVAL_VIEW)
    # kept for metrics computed later from other labels (ImageNet-ReaL: `vitrun report --real`)
    if ctx.world.is_main():
        write_atomic(ctx.stage_dir(stage.key).path / PREDICTIONS_FILE, predictions_bytes(predicted.tolist()))
    if f.save_weights and ctx.world.is_main():  # for `vitrun evaluate` and `vitrun export`
        checkpoint.save_weights(ctx.stage_dir(stage.key).weights_file, model)
    hits = (predicted == ds.test.labels).double().mean().item()
    return {**summary, **chosen, "accuracy": hits, "train_images": len(train_images), "num_classes": ds.num_classes}


MIN_DEV_IMAGES = 50  # below this a dev split's accuracies move in steps of 2% or more


def _dev_warning(dev: dict[str, float], images: int, chosen: float) -> str | None:
    """Why the learning-rate search may have chosen by noise, or None: a dev split too small to
    tell rates apart, or a best rate ahead of the next by less than one dev image."""
    scores = sorted(dev.values(), reverse=True)
    if images and images < MIN_DEV_IMAGES:
        return (f"the dev split has {images} images, too few to tell learning rates apart (accuracies {', '.join(f'{v:.0%}' for v in dev.values())}); "
                f"chose lr {chosen}; raise dev_fraction (or dev_size), or give one lr to skip the search")
    if len(scores) > 1 and images and scores[0] - scores[1] < 1 / images:
        return f"the best learning rates tie on the dev split ({images} images); chose lr {chosen}, the first listed"
    return None


def _finetuned(stage: Stage, ctx: Context, images, num_classes: int, lr: float, held_out=None) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune the parent's weights on `images`; `held_out` (the dev share) when `eval_every` scores it."""
    f, t = finetune_section(stage), stage.config["transfer"]
    model = _pretrained(stage, ctx)
    # Fine-tuning protocol (App. B.1.1): the whole pre-training head goes, a zero-initialised
    # linear layer comes; a higher resolution resamples the position embeddings in 2-D.
    model.reset_head(num_classes)
    model.set_image_size(f.image_size, mode=f.pos_embed_resample)
    model.to(ctx.placement.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=f.momentum, weight_decay=0.0, fused=ctx.placement.fused or None)
    loss_fn = partial(F.cross_entropy, label_smoothing=f.label_smoothing)
    summary = _train(stage, ctx, model, optimizer, _loader_for(stage, ctx, images, f, t.get("crop")), supervised(loss_fn), f, "cosine", held_out)
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
    that learning rates and l2 are picked on (App. B.1.1), the same images for every run:
    `dev_size` random images (VTAB-1k: 200 of 1,000), else a stratified `dev_fraction`."""
    if transfer.get("dev_size"):
        train_idx, dev_idx = sampling.random_split(len(train.labels), transfer["dev_size"], SPLIT_SEED)
        return transfer["dev_size"] / len(train.labels), (train.subset(train_idx), train.subset(dev_idx))
    fraction = sources.dev_fraction(transfer["data"], SourceOptions.of(transfer))
    return fraction, sources.dev_split(train, fraction, SPLIT_SEED)


def pretrain_section(stage: Stage) -> PretrainConfig:
    """The stage config's [pretrain] as the frozen, typed section (defaults filled in); the
    generator version the plan keys by (`plan.with_generator_version`) is no recipe key."""
    section = {k: v for k, v in stage.config["pretrain"].items() if k != "data_version"}
    return PretrainConfig.model_validate(section, strict=False)


def finetune_section(stage: Stage) -> FinetuneConfig:
    """The stage config's [finetune] (overrides merged, image_size resolved) as the typed section."""
    return FinetuneConfig.model_validate(stage.config["finetune"], strict=False)


Training = Union[PretrainConfig, FinetuneConfig]


def _loader_for(stage: Stage, ctx: Context, images, section: Training, crop: str | None, whole_batch: bool = False):
    """`batch_at(step)` over `images` for a training section ([pretrain] or [finetune]): this
    rank's slice of each global batch (or, `whole_batch`, all of it).

    The training crop is the inception crop for both (vit_jax's fine-tuning pipeline and
    big_vision's: a random 5-100% of the area, resized, flipped) unless the data's `crop` says.
    """
    part = (0, 1) if whole_batch else (ctx.world.rank, ctx.world.size)
    return loader.train_batches(images, section.image_size, section.batch_size, section.steps, stage.config["seed"], crop or "inception", ctx.loader_settings(), part)


def _split(ctx: Context, section: Training):
    """The section's global batch over this run's ranks and micro-steps."""
    return split_batch(section.batch_size, ctx.world.size, micro_batch_setting(ctx.run.micro_batch, ctx.placement.device.type))


def _train(stage, ctx, model, optimizer, batch_at, objective, section: Training, schedule: str, held_out=None, find_unused_parameters: bool = False) -> dict[str, Any]:
    """Train `model` as `section` says; afterwards it holds the weights the stage keeps (the
    best evaluated step, else the Polyak average, else the last step)."""
    set_regularisation(model, section.dropout, section.drop_path)
    split = _split(ctx, section)
    evaluate = None
    if held_out is not None:
        view = FINETUNE_EVAL_VIEW if isinstance(section, FinetuneConfig) else "center"
        evaluate = partial(accuracy, images=held_out, image_size=section.image_size, ctx=ctx, view=view)
    # TensorBoard is a log: rank 0 writes it, as it writes every other file
    board = ctx.stage_dir(stage.key).path / "tensorboard" if ctx.run.tensorboard and ctx.world.is_main() else None
    extras = StageExtras(model, section.steps, section.batch_size, section.ema, section.eval_every, section.keep, evaluate, board)
    settings = LoopSettings(
        steps=section.steps,
        warmup_steps=section.warmup_steps,
        schedule=schedule,
        grad_clip=section.grad_clip,
        log_every=ctx.run.log_every,
        checkpoint_seconds=ctx.run.checkpoint_seconds,
        checkpoint_steps=ctx.run.checkpoint_steps,
        keep_checkpoints=ctx.run.keep_checkpoints,
        accumulation=split.accumulation,
        auto_micro_batch=split.auto,
        find_unused_parameters=find_unused_parameters,
    )
    summary = train(model, optimizer, batch_at, objective, settings, ctx.placement, ctx.stage_dir(stage.key), stage.config["seed"], ctx.on_step, ctx.on_notice, ctx.world, extras.loop)
    return {**summary, **extras.finish(model)}


def _sigmoid_xent(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """big_vision's sigmoid cross-entropy: per-class binary losses, summed over classes.

    logits: (B, K), labels: (B,). Label smoothing as for softmax: targets (1 − ε)·onehot + ε/K.
    """
    targets = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / logits.shape[-1]
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()


def _device_batches(images, image_size: int, ctx: Context, sharded: bool = True, view: str = "center"):
    """This rank's share of the evaluation batches (every `world`-th batch), or all of them, on the device."""
    shard = (ctx.world.rank, ctx.world.size) if sharded else (0, 1)
    for x, y in loader.eval_batches(images, image_size, EVAL_BATCH, ctx.loader_settings(), shard=shard, view=view):
        yield to_device(x, ctx.placement.device), y  # on CUDA the loader hands it over there already


def _gathered(parts: list[torch.Tensor], ctx: Context) -> torch.Tensor:
    """Per-batch results of every rank, back in the split's order: rank r computed batches
    r, r + world, …, so batch i is rank i % world's (i // world)-th."""
    local = [part.cpu() for part in parts]
    ctx.world.check()  # a rank that failed while evaluating: stop here, not in the gather
    ranks = ctx.world.gather(local)
    ordered = [ranks[i % len(ranks)][i // len(ranks)] for i in range(sum(len(r) for r in ranks))]
    return torch.cat(ordered) if ordered else torch.empty(0)


@torch.no_grad()
def _map_batches(fn, images, image_size: int, ctx: Context) -> torch.Tensor:
    out = []
    for x, _ in _device_batches(images, image_size, ctx):
        with ctx.placement.autocast():
            out.append(fn(x).float())
    return _gathered(out, ctx).to(ctx.placement.device)


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
    for x, _ in _device_batches(images, image_size, ctx, view=view):
        with ctx.placement.autocast():
            out.append(model(x).argmax(1))
    return _gathered(out, ctx)


@torch.no_grad()
def accuracy(model: nn.Module, images, image_size: int, ctx: Context, view: str = "center") -> float:
    """Top-1 accuracy, counted per batch on the device: memory stays one batch of logits
    (all logits of a 50k-image, 21k-class test set would be 4 GB); summed over ranks."""
    model.eval()
    hits = torch.zeros((), dtype=torch.int64, device=ctx.placement.device)
    for x, y in _device_batches(images, image_size, ctx, view=view):
        with ctx.placement.autocast():
            hits += (model(x).argmax(1) == y.to(x.device)).sum()
    ctx.world.check()
    return ctx.world.sum(hits).item() / len(images)
