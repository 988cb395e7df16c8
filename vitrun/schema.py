"""The recipe schema: frozen, typed sections holding every default.

Defaults follow the paper's protocol (arXiv 2010.11929, Appendix B.1); scale knobs
(steps, batch, resolution) are meant to be set by each recipe. Unknown keys and wrong
types are rejected; nothing here imports torch, so `vitrun validate` stays fast.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_serializer, model_validator

from vitrun.models import registry as model_registry


class Section(BaseModel):
    # strict: TOML already gives types, so "100" for an int is a user mistake worth reporting.
    # TOML reads `inf` and `nan` as numbers: no setting means either (allow_inf_nan=False).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Upper bounds: far above any run of the paper, low enough that a typo (an extra digit, 2^63)
# is refused before anything runs instead of failing after hours of pre-training.
MAX_STEPS = 10**8
MAX_BATCH = 2**20
MAX_IMAGE_SIZE = 8192
MAX_CLASSES = 10**6
MAX_IMAGES = 10**10
Steps = Annotated[int, Field(ge=0, le=MAX_STEPS)]
PositiveSteps = Annotated[int, Field(gt=0, le=MAX_STEPS)]
Batch = Annotated[int, Field(gt=0, le=MAX_BATCH)]
ImageSize = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE)]
Classes = Annotated[int, Field(gt=0, le=MAX_CLASSES)]
Images = Annotated[int, Field(gt=0, le=MAX_IMAGES)]
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


class ModelConfig(BaseModel):
    """`[model]`: a paper name plus architecture options (classifier, pos_embed, width …).

    Dropout and stochastic depth are set per stage in `[pretrain]`/`[finetune]` (TrainingFields).

    Options are checked by the model registry, so every option it knows is valid here.
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)
    name: str
    # Start from pre-trained weights: "timm:NAME" (timm's weights, from the Hugging Face hub or
    # its cache) or "npz:PATH" (an official Google checkpoint; a relative path is relative to
    # where vitrun runs, as data paths are).
    init: Optional[str] = None
    # The name tables show for this model (default: `name`): `--smoke` trains "ViT-B/16" as a
    # tiny stand-in labelled "ViT-B/16", so its tables (and the paper beside them) are the real ones.
    label: Optional[str] = None

    @field_validator("init")
    @classmethod
    def _loadable(cls, init: Optional[str]) -> Optional[str]:
        if init is not None:
            from vitrun.interop import check_init  # torch-free

            check_init(init)
        return init

    @model_validator(mode="after")
    def _known_architecture(self) -> "ModelConfig":
        for key in TRAINING_HYPERPARAMETERS:
            if key in self.options():
                raise ValueError(f"{key} is a training hyper-parameter now, not architecture: move `{key} = {self.options()[key]}` from [model] to [pretrain] (Table 3: 0.1 pre-training on ImageNet/-21k) and/or [finetune] (0 in the paper)")
        model_registry.spec(self.name, **self.options())  # raises ValueError with a suggestion
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def resolved(self) -> dict[str, Any]:
        """The full architecture (every default filled in) for stage keys and stage.json."""
        from dataclasses import asdict

        return asdict(model_registry.spec(self.name, **self.options()))


Fraction = Annotated[float, Field(gt=0, lt=1)]


Rate = Annotated[float, Field(ge=0, lt=1)]
# Architecture options of the registry that are training hyper-parameters: [model] refuses them.
TRAINING_HYPERPARAMETERS = ("dropout", "drop_path")


class TrainingFields(Section):
    """Regularisation, averaging and evaluation of one training stage: in `[pretrain]` and
    `[finetune]` (and a `[[transfer]] finetune` override). Every key left at its default is
    left out of the stage config, so recipes that never set them keep their stage keys."""

    dropout: Rate = Field(0.0, description="ViT/hybrid dropout (after dense layers and positions); Table 3: 0.1 pre-training on ImageNet/-21k, 0 fine-tuning; ResNets have none")
    drop_path: Rate = Field(0.0, description="stochastic depth, linear from 0 at the first block to this at the last (DeiT/timm; 0 in the paper); ResNets have none")
    label_smoothing: Rate = Field(0.0, description="share of the target spread over all classes (supervised loss; 0 in the paper)")
    ema: Optional[Annotated[float, Field(gt=0, lt=1)]] = Field(None, description="Polyak averaging decay, e.g. 0.9999 (Table 2's fine-tuning): the averaged weights are evaluated and saved")
    eval_every: Optional[PositiveSteps] = Field(None, description="evaluate on the dev split (held out of training) every N steps; the curve goes to stage.json")
    keep: Literal["last", "best"] = Field("last", description='weights the stage keeps, tests and passes on: "last", or "best" on the eval_every curve (early stopping, §4.3)')

    @model_validator(mode="after")
    def _best_needs_curve(self) -> "TrainingFields":
        if self.keep == "best" and self.eval_every is None:
            raise ValueError('keep = "best" chooses on the evaluation curve: set eval_every (e.g. eval_every = 500), or keep = "last"')
        return self


def drop_training_defaults(section: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """Leave TrainingFields keys at their default out of a dumped section (stage keys stay)."""
    for name in TrainingFields.model_fields:
        if name in dumped and dumped[name] == type(section).model_fields[name].default:
            del dumped[name]
    return dumped


class DataFields(Section):
    """Where a section's images come from: `data` and the source's options.

    Shared by `[pretrain]` and `[[transfer]]`. `data` is an embedded name (`fractal`,
    `digits`, `shapes`) or `KIND:TARGET` (`hf:`, `wds:`, `parquet:`, `arrow:`, `torchvision:`,
    `folder:`; see vitrun/data/sources.py); which options apply to which kind is checked
    when the recipe loads. Options change the data, so they are part of stage keys; an
    option left unset is left out of the stage config, so adding options to vitrun does
    not change the keys of existing results.
    """

    data: str
    classes: Optional[Classes] = Field(None, description="classes to generate (generators); else the first N classes")
    config: Optional[str] = Field(None, description="hf: dataset configuration (or hf:ID:CONFIG)")
    train_split: Optional[str] = Field(None, description='split (or subfolder) to train on; default "train"')
    test_split: Optional[str] = Field(None, description='split to test on; default "test", else "validation"')
    image_column: Optional[str] = Field(None, description="hf/parquet/arrow: default the first Image feature")
    label_column: Optional[str] = Field(None, description="hf/parquet/arrow: default the first ClassLabel, else 'label'")
    root: Optional[str] = Field(None, description="torchvision: folder holding the files; default <cache>/torchvision")
    download: bool = Field(False, description="torchvision: download into root when missing (needs a network)")
    test_fraction: Optional[Fraction] = Field(None, description="share of train held out as test when a source has no test split; default 0.2")
    eval_size: Optional[Images] = Field(None, description="images held out as test when a source has no test split; default test_fraction of train, at most 50,000")
    dev_fraction: Optional[Fraction] = Field(None, description="held-out share of train for learning-rate selection; default per dataset")
    crop: Optional[Literal["inception", "resize"]] = Field(None, description="training crop; default inception (5-100% of the area, as vit_jax and big_vision), resize: shorter side to the target, random square crop")
    stream: bool = Field(False, description="hf: read as a stream (no Arrow copy, no random access; [pretrain] only): see vitrun/data/streaming.py for what it keeps")

    @model_serializer(mode="wrap")
    def _drop_unset_options(self, handler):
        dumped = handler(self)
        for name in _SOURCE_OPTIONS:
            if name in dumped and dumped[name] == DataFields.model_fields[name].default:
                del dumped[name]
        if dumped.get("name", "") is None:  # an unnamed set keeps the stage keys it had
            del dumped["name"]
        if dumped.get("finetune", "") is None:  # [[transfer]] without a fine-tuning override
            del dumped["finetune"]
        for key in ("epochs", "shots", "train_size", "dev_size"):  # epochs: converted to steps on load (vitrun/epochs.py)
            if key in dumped and dumped[key] is None:
                del dumped[key]
        return drop_training_defaults(self, dumped)


# Keys added with real sources: left out of stage configs while unset (see DataFields).
_SOURCE_OPTIONS = ("config", "train_split", "test_split", "image_column", "label_column", "root", "download", "test_fraction", "eval_size", "dev_fraction", "crop", "stream")


class PretrainConfig(DataFields, TrainingFields):
    """`[pretrain]`: upstream training (Adam, warm-up, linear decay; paper Table 3)."""

    data: str = "fractal"
    # The short name tables show for this pre-training set ("ImageNet-21k" rather than
    # "wds:/data/in21k/*.tar"), as `[[transfer]] name`; part of the stage key only when set.
    name: Optional[str] = None
    size: Optional[Images] = Field(None, description="class-balanced subset of N training images")
    image_size: ImageSize = 224
    # 0: no pre-training; the initial weights (`model.init`, else a seeded random
    # initialisation) go to the transfer stages as they are. Required unless objective = "scratch".
    steps: Optional[Steps] = None
    # Or the budget as the paper states it: passes over the training split, turned into steps
    # (ceil(epochs × images / batch_size)) when the recipe loads (vitrun/epochs.py).
    epochs: Optional[PositiveFloat] = Field(None, description="instead of steps: passes over the training split")
    batch_size: Batch = 4096
    lr: PositiveFloat = 1e-3
    # Decoupled decay as vit_jax and PyTorch's AdamW apply it: each step shrinks kernels by
    # lr(t) · weight_decay, lr(t) the scheduled rate including the base lr. big_vision's `wd`
    # is scaled by the schedule but NOT by the base lr: to port a big_vision config use
    # weight_decay = wd / lr (its wd = 1e-4 at lr = 1e-3 is weight_decay = 0.1 here).
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    warmup_steps: Steps = 10_000
    schedule: Literal["linear", "cosine"] = "linear"
    grad_clip: Optional[PositiveFloat] = None
    # "supervised": classify the pre-training labels. "masked-patch": the paper's self-supervision
    # (§4.6): corrupt `mask_rate` of the patch embeddings, predict `mask_target` of each.
    # "scratch": no pre-training; transfer stages start from a seeded random initialisation
    # (the baseline of §4.6), shared by every data setting of the recipe.
    objective: Literal["supervised", "masked-patch", "scratch"] = "supervised"
    mask_rate: Fraction = Field(0.5, description="masked-patch: share of patches corrupted (80% [mask], 10% another patch, 10% kept)")
    mask_target: Literal["mean-color", "4x4-color", "l2-pixels"] = Field("mean-color", description="masked-patch: 3-bit mean colour (512 classes), 4x4 grid of 3-bit colours, or L2 on the pixels")
    # Softmax cross-entropy suits single-label sets; big_vision pre-trains on ImageNet-21k
    # with sigmoid cross-entropy (multi-label), available as "sigmoid".
    loss: Literal["softmax", "sigmoid"] = "softmax"

    @model_validator(mode="after")
    def _steps_given(self) -> "PretrainConfig":
        if self.steps is None and self.objective != "scratch":
            raise ValueError('steps is missing: give the number of pre-training steps or epochs (only objective = "scratch" goes without)')
        if self.steps and self.objective != "scratch":
            check_warmup("pretrain", self.steps, self.warmup_steps)
        return self

    @model_validator(mode="after")
    def _supervised_only(self) -> "PretrainConfig":
        """Label smoothing and the accuracy curve are about class labels, which a masked-patch
        or scratch pre-training has none of."""
        if self.objective != "supervised":
            for key, value in (("label_smoothing", self.label_smoothing), ("eval_every", self.eval_every)):
                if value:
                    raise ValueError(f'{key} applies to a supervised pre-training; objective = "{self.objective}" has no class labels to use it on: remove pretrain.{key}')
        if self.stream and self.eval_every:  # the held-out share is drawn by label, which a stream cannot
            raise ValueError("eval_every holds out a share of the training split by label, which stream = true cannot; remove one of them")
        return self


def check_warmup(section: str, steps: int, warmup_steps: int) -> None:
    """A warm-up as long as the run never reaches the peak rate nor decays: a recipe error."""
    if warmup_steps >= steps:
        raise ValueError(f"warmup_steps = {warmup_steps} is not below steps = {steps}: the run would end inside its warm-up; "
                         f"set {section}.warmup_steps below steps, e.g. {max(1, steps // 10)} (the paper warms up for 10k of its ≥ 100k pre-training steps)")


# Fine-tuning warm-up when a recipe gives none: the official vit_jax default (500 steps), and
# big_vision's 100 for its 500-step runs (Pets, Flowers). Shorter runs than big_vision ever
# makes get a tenth of their steps (vitrun's choice: no official run is that short).
FINETUNE_WARMUP = 500
FINETUNE_WARMUP_SHORT = 100  # runs of at most 500 steps


def finetune_warmup(steps: int, warmup_steps: Optional[int]) -> int:
    """The warm-up a fine-tuning run uses: the recipe's, else the official default for its length."""
    if warmup_steps is not None:
        return warmup_steps
    if steps > FINETUNE_WARMUP:
        return FINETUNE_WARMUP
    return FINETUNE_WARMUP_SHORT if steps > FINETUNE_WARMUP_SHORT else steps // 10


LEARNING_RATES = (0.001, 0.003, 0.01, 0.03)  # the paper's fine-tuning grid (ImageNet: 0.003 … 0.06)


def _one_or_distinct(value: Union[float, list[float]]) -> Union[float, list[float]]:
    """A list of candidates must be distinct; a list of one is that value (one stage key for both)."""
    if isinstance(value, list):
        if not value:
            raise ValueError("give at least one value")
        if len(set(value)) != len(value):
            raise ValueError(f"values must be distinct, got {value}")
        if len(value) == 1:
            return value[0]
    return value


class FinetuneConfig(TrainingFields):
    """`[finetune]`: transfer by fine-tuning (SGD momentum 0.9, cosine, clip 1; App. B.1.1)."""

    steps: PositiveSteps
    epochs: Optional[PositiveFloat] = Field(None, description="instead of steps: passes over the training split, converted on load")
    batch_size: Batch = 512
    # One rate, or a list scored on the dev split (a held-out `dev_fraction` of the training
    # split, App. B.1.1): the best is retrained on the whole training split and tested.
    lr: Union[PositiveFloat, list[PositiveFloat]] = Field(default_factory=lambda: list(LEARNING_RATES))
    momentum: float = Field(0.9, ge=0, lt=1)
    # Default (unset): 500, or 100 for runs of at most 500 steps, as the official code
    # (`finetune_warmup`); the stage config records the number used, so a recipe that
    # writes the default out keeps the same stage keys as one that leaves it unset.
    warmup_steps: Optional[Steps] = None
    grad_clip: Optional[PositiveFloat] = 1.0
    image_size: Optional[ImageSize] = Field(None, description="default: 384 for real datasets (Table 4; rounded down to whole patches), the pre-training resolution for embedded ones")
    # How position embeddings follow a new resolution: bilinear as the official code
    # (scipy zoom, corners to corners), or bicubic.
    pos_embed_resample: Literal["bilinear", "bicubic"] = "bilinear"
    # Keep the fine-tuned weights (weights.pt in the stage folder) for `vitrun evaluate` and
    # `vitrun export`. Part of the stage key only when true: turning it on re-runs fine-tuning.
    save_weights: bool = False

    _lr = field_validator("lr")(_one_or_distinct)

    @model_validator(mode="after")
    def _warmup_fits(self) -> "FinetuneConfig":
        check_warmup("finetune", self.steps, finetune_warmup(self.steps, self.warmup_steps))
        return self

    @model_serializer(mode="wrap")
    def _drop_default_save(self, handler):
        dumped = handler(self)
        if dumped.get("epochs", 0) is None:  # converted to steps on load (vitrun/epochs.py)
            del dumped["epochs"]
        if not dumped.get("save_weights"):
            dumped.pop("save_weights", None)  # results from before this option keep their keys
        return drop_training_defaults(self, dumped)


class FewshotConfig(Section):
    """`[fewshot]`: closed-form linear regression onto {-1, 1}^K on frozen features."""

    shots: list[Annotated[int, Field(gt=0, le=100_000)]] = Field(default_factory=lambda: [1, 5, 10, 25], min_length=1, max_length=100)
    # big_vision's fixed regulariser; a list is scored on the dev split (shots drawn from the
    # rest of the training split) and the best is used on the test split.
    l2_reg: Union[PositiveFloat, list[PositiveFloat]] = 2.0**10
    draws: int = Field(3, gt=0, le=1000)  # random draws of the k shots, accuracy averaged

    _l2 = field_validator("l2_reg")(_one_or_distinct)


class TransferConfig(DataFields):
    """One `[[transfer]]` dataset: fine-tuned on and evaluated few-shot."""

    name: Optional[str] = None
    per_class: Optional[Images] = None
    # VTAB-1k's protocol (Zhai et al. 2019): 1,000 random training images per task, 800 to train
    # and 200 to pick the learning rate on, then the chosen rate trained on all 1,000.
    train_size: Optional[Images] = Field(None, description="train on a seeded random subset of N training images, not class-balanced (VTAB-1k: 1000); nested across N; after per_class when both are set")
    dev_size: Optional[Images] = Field(None, description="hold out N random training images (not stratified) to pick learning rates on, instead of dev_fraction (VTAB-1k: 200 of train_size = 1000)")
    # Any [finetune] key for this dataset only (Table 4: CIFAR 10k steps, Pets/Flowers 500, ...).
    # Not part of this table's stage config: the merged [finetune] of its stages carries it.
    finetune: Optional[dict[str, Any]] = None
    # Few-shot shot counts for this dataset alone (default: [fewshot] shots), e.g. [1, 5, 10] for
    # Flowers-102, whose training split has 10 images per species.
    shots: Optional[list[Annotated[int, Field(gt=0, le=100_000)]]] = Field(None, min_length=1, max_length=100)

    @property
    def label(self) -> str:
        return self.name or self.data

    @field_validator("stream")
    @classmethod
    def _random_access(cls, stream: bool) -> bool:
        if stream:  # dev splits and k-shot draws pick images by label, anywhere in the split
            raise ValueError("stream = true is for [pretrain] only: a transfer dataset needs random access (dev split, k-shot draws); remove it here")
        return stream

    @model_validator(mode="after")
    def _subset_sizes_fit(self) -> "TransferConfig":
        if self.dev_size is not None and self.dev_fraction is not None:
            raise ValueError(f"[[transfer]] {self.label}: dev_size and dev_fraction both choose the dev split; keep one of them")
        if self.dev_size is not None and self.train_size is not None and self.dev_size >= self.train_size:
            raise ValueError(f"[[transfer]] {self.label}: dev_size = {self.dev_size} leaves none of train_size = {self.train_size} to train on; "
                             f"set dev_size below train_size (VTAB-1k: train_size = 1000, dev_size = 200)")
        if self.train_size is not None and self.per_class is not None and self.classes is not None and self.train_size > self.per_class * self.classes:
            raise ValueError(f"[[transfer]] {self.label}: train_size = {self.train_size} is more than per_class × classes = {self.per_class * self.classes} images; "
                             f"lower train_size or drop per_class")
        return self

    @model_validator(mode="after")
    def _finetune_keys_known(self) -> "TransferConfig":
        for key in self.finetune or {}:
            if key not in FinetuneConfig.model_fields:
                raise ValueError(f"[[transfer]] {self.label}: finetune.{key} is not a [finetune] key{_suggest_key(key, FinetuneConfig.model_fields)}")
        return self


def _suggest_key(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else " (keys: " + ", ".join(known) + ")"


def merged_finetune(base: FinetuneConfig, transfer: TransferConfig) -> FinetuneConfig:
    """`[finetune]` with the transfer's `finetune = {…}` override on top, validated as a whole.

    Raises ValueError naming the transfer and the key that does not fit.
    """
    if not transfer.finetune:
        return base
    from pydantic import ValidationError

    fields = {name: getattr(base, name) for name in base.model_fields_set}
    try:
        return FinetuneConfig.model_validate({**fields, **transfer.finetune})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "finetune"
        raise ValueError(f"[[transfer]] {transfer.label}: finetune.{where}: {first['msg']}") from None


class RunConfig(Section):
    """`[run]`: how to run, never what: these keys do not change stage keys."""

    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    threads: Optional[Annotated[int, Field(gt=0, le=4096)]] = None
    jobs: Optional[Annotated[int, Field(ge=1, le=64)]] = Field(None, description="stage runners side by side on this CPU (each with cores/jobs threads), sharing the plan through stage locks; small models train faster this way than with every thread on one stage; --jobs overrides; CPU only")
    checkpoint_seconds: PositiveFloat = 60.0
    log_every: PositiveSteps = 10
    # Data parallelism and checkpoints at scale (engine/distributed.py, engine/loop.py):
    micro_batch: Optional[Union[PositiveSteps, Literal["auto"]]] = Field(None, description='images per device per micro-step (gradient accumulation); "auto": the largest divisor of the slice that fits in memory, found before the first step; default: "auto" on CUDA, the whole slice on CPU')
    checkpoint_steps: Optional[PositiveSteps] = Field(None, description="also checkpoint every this many steps")
    keep_checkpoints: PositiveSteps = Field(1, description="keep the last N checkpoints (checkpoint-<step>.pt) as well as the newest")
    # Loading of on-disk sources (embedded sources are in memory and use neither):
    workers: Optional[Annotated[int, Field(ge=0, le=1024)]] = Field(None, description="decoding processes; default: the cores training leaves free (GPU: all but one)")
    prefetch: int = Field(2, ge=1, le=1024, description="batches each worker prepares ahead")
    decode: Literal["cpu", "gpu"] = Field("cpu", description="gpu: JPEGs decoded on the CUDA device (nvJPEG); same crops, pixels within decoder rounding; CPU when there is no GPU")
    tensorboard: bool = Field(False, description="write loss, lr, grad norm, images/s and eval curves for TensorBoard under each stage's folder (tensorboard/); needs the vitrun[tensorboard] extra")

    @field_validator("micro_batch", mode="before")
    @classmethod
    def _micro_batch_kind(cls, value: Any) -> Any:
        if isinstance(value, bool) or not (value is None or value == "auto" or (isinstance(value, int) and 0 < value <= MAX_STEPS)):
            raise ValueError(f'expected a positive integer or "auto", got {value!r}')
        return value

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, on: bool) -> bool:
        from vitrun.engine.tblog import available

        if on and not available():
            raise ValueError("tensorboard = true needs the tensorboard package: pip install 'vitrun[tensorboard]' (or set tensorboard = false)")
        return on


Column = Union[str, list[str]]


class TableSpec(Section):
    """One `[[report.tables]]`: a pivot of the results DataFrame."""

    name: str
    # summary: the paper's summaries of fine-tuning rows (average-5, VTAB-1k and its groups)
    kind: Optional[Literal["pretrain", "finetune_dev", "finetune", "fewshot", "summary"]] = None
    rows: Column = "model"
    columns: Column = "pretrain.size"
    values: str = "accuracy"
    aggregate: Literal["mean", "median", "min", "max", "std", "count"] = "mean"
    where: dict[str, Union[str, int, float, bool, list[Union[str, int, float, bool]]]] = Field(default_factory=dict)
    per: Optional[str] = Field(None, description="one table for each value of this column")
    scale: float = 100.0
    digits: int = Field(1, ge=0, le=6)


class ReportConfig(Section):
    tables: list[TableSpec] = Field(default_factory=list)


class ExpectConfig(Section):
    """One `[[expect]]` cell (or a single `[expect]` table): where a result should land.

    `vitrun report` shows ours, the target, the delta and pass/fail; `vitrun report --check`
    exits 1 when a cell misses (or has no result). `pretrain` and `data` take the paper's
    dataset names ("ImageNet-21k", "ImageNet") or a recipe's own `data`/`name`.
    """

    name: Optional[str] = Field(None, description="label for the cell; default: built from the keys below")
    model: Optional[str] = None
    pretrain: Optional[str] = Field(None, description="pre-training set: a paper name or the [pretrain] data")
    data: Optional[str] = Field(None, description='transfer dataset: a paper name, a [[transfer]] name or data, or "average-5", "VTAB-1k"')
    kind: Literal["pretrain", "finetune", "fewshot", "summary"] = "finetune"
    shots: Optional[Images] = None
    image_size: Optional[ImageSize] = None
    where: dict[str, Union[str, int, float, bool]] = Field(default_factory=dict, description="other columns the cell needs, e.g. {\"pretrain.size\" = 500}")
    values: str = "accuracy"
    scale: float = 100.0
    target: float
    tolerance: float = Field(ge=0)


class AnalysisConfig(Section):
    """One `[[analysis]]`: a figure of §4.5 drawn for every pre-training stage after the stages run.

    Not a stage (no key, nothing trains): its PNG + CSV go to results/<experiment>/analysis/,
    as `vitrun analyze EXPERIMENT` writes them (see vitrun/evals/analyze.py).
    """

    what: Literal["embedding-filters", "posemb-similarity", "attention-distance", "rollout"]
    data: Optional[str] = Field(None, description="images for attention-distance and rollout; default the pre-training source")
    images: Images = Field(64, description="test images averaged over (rollout draws the first 8)")


class Recipe(Section):
    """A whole recipe file after sweep expansion (every swept key holds one value)."""

    name: str = Field(description="the experiment's folder under --results")
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    model: ModelConfig
    pretrain: PretrainConfig
    finetune: Optional[FinetuneConfig] = None
    fewshot: Optional[FewshotConfig] = None
    transfer: list[TransferConfig] = Field(default_factory=list)
    run: RunConfig = Field(default_factory=RunConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    analysis: list[AnalysisConfig] = Field(default_factory=list)
    expect: list[ExpectConfig] = Field(default_factory=list)

    @field_validator("expect", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value  # [expect] is one cell, [[expect]] several

    @field_validator("analysis")
    @classmethod
    def _one_of_each(cls, analyses: list[AnalysisConfig]) -> list[AnalysisConfig]:
        whats = [a.what for a in analyses]
        twice = sorted({w for w in whats if whats.count(w) > 1})
        if twice:
            raise ValueError(f"[[analysis]] lists {', '.join(twice)} more than once; keep one table per analysis")
        return analyses

    @field_validator("name")
    @classmethod
    def _one_safe_folder(cls, name: str) -> str:
        """The name is one folder under --results: nothing is ever written outside it."""
        if not SAFE_NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"{name!r} is not a safe folder name: use 1 to 100 letters, digits, '-', '_' or '.' (not '.' or '..'), e.g. name = \"my-run\"")
        return name

    @model_validator(mode="after")
    def _transfer_needed(self) -> "Recipe":
        if (self.finetune or self.fewshot) and not self.transfer:
            raise ValueError("[finetune] and [fewshot] need at least one [[transfer]] dataset")
        for transfer in self.transfer:
            if transfer.finetune and not self.finetune:
                raise ValueError(f"[[transfer]] {transfer.label}: finetune = {{…}} overrides [finetune], but the recipe has no [finetune] table; add one (e.g. [finetune] steps = 500)")
            if self.finetune:
                merged_finetune(self.finetune, transfer)  # every override fits, before anything runs
        return self

    def finetune_for(self, transfer: TransferConfig) -> Optional[FinetuneConfig]:
        """The effective `[finetune]` of one transfer dataset (its override merged), or None."""
        return merged_finetune(self.finetune, transfer) if self.finetune else None

    @model_validator(mode="after")
    def _image_sizes_fit(self) -> "Recipe":
        """Every resolution cuts into whole patches, before anything runs (a fine-tuning size
        that does not would otherwise fail only after pre-training)."""
        spec = model_registry.spec(self.model.name, **self.model.options())
        sizes = [("pretrain.image_size", self.pretrain.image_size)]
        if self.finetune and self.finetune.image_size:
            sizes.append(("finetune.image_size", self.finetune.image_size))
        for transfer in self.transfer if self.finetune else ():
            size = (transfer.finetune or {}).get("image_size")
            if isinstance(size, int):
                sizes.append((f"[[transfer]] {transfer.label}: finetune.image_size", size))
        for key, size in sizes:
            if spec.family == "vit" and size % spec.patch:
                fits = max(spec.patch, size // spec.patch * spec.patch)
                raise ValueError(f"{key} = {size} is not a multiple of {self.model.name}'s patch size {spec.patch}; use e.g. {fits}")
            if spec.family == "hybrid" and size < spec.stride * spec.patch:
                raise ValueError(f"{key} = {size} is smaller than {self.model.name}'s stride {spec.stride * spec.patch}; use at least {spec.stride * spec.patch}")
        return self

    @model_validator(mode="after")
    def _objective_fits(self) -> "Recipe":
        objective = self.pretrain.objective
        if objective == "scratch" and self.model.init:
            raise ValueError(f'pretrain.objective = "scratch" starts from random weights, but model.init = {self.model.init!r}; remove one of them')
        if objective == "masked-patch":
            spec = model_registry.spec(self.model.name, **self.model.options())
            if spec.family != "vit":
                raise ValueError(f'pretrain.objective = "masked-patch" needs a ViT; {self.model.name} is a {spec.family} model (its tokens are not image patches); pair masked-patch with ViT models only, e.g. in a [[sweep]] table')
            if self.pretrain.steps == 0:
                raise ValueError('pretrain.objective = "masked-patch" with pretrain.steps = 0 trains nothing; set steps, or use objective = "scratch"')
            if self.pretrain.mask_target == "4x4-color" and spec.patch % 4:
                raise ValueError(f'pretrain.mask_target = "4x4-color" needs a patch size divisible by 4; {self.model.name} has {spec.patch}')
        return self
