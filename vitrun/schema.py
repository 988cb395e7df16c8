"""The recipe schema: frozen, typed sections holding every default.

Defaults follow the paper's protocol (arXiv 2010.11929, Appendix B.1); scale knobs
(steps, batch, resolution) are meant to be set by each recipe. Unknown keys and wrong
types are rejected; nothing here imports torch, so `vitrun validate` stays fast.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from vitrun.models import registry as model_registry


class Section(BaseModel):
    # strict: TOML already gives types, so "100" for an int is a user mistake worth reporting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelConfig(BaseModel):
    """`[model]`: a paper name plus architecture options (classifier, dropout, width …).

    Options are checked by the model registry, so every option it knows is valid here.
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    name: str

    @model_validator(mode="after")
    def _known_architecture(self) -> "ModelConfig":
        model_registry.spec(self.name, **self.options())  # raises ValueError with a suggestion
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def resolved(self) -> dict[str, Any]:
        """The full architecture (every default filled in) for stage keys and stage.json."""
        from dataclasses import asdict

        return asdict(model_registry.spec(self.name, **self.options()))


class PretrainConfig(Section):
    """`[pretrain]`: upstream training (Adam, warm-up, linear decay; paper Table 3)."""

    data: str = "fractal"
    classes: Optional[PositiveInt] = Field(None, description="classes to generate (generated sources)")
    size: Optional[PositiveInt] = Field(None, description="class-balanced subset of N training images")
    image_size: PositiveInt = 224
    steps: PositiveInt
    batch_size: PositiveInt = 4096
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10_000, ge=0)
    schedule: Literal["linear", "cosine"] = "linear"
    grad_clip: Optional[PositiveFloat] = None
    objective: Literal["supervised"] = "supervised"
    # Softmax cross-entropy suits single-label sets; big_vision pre-trains on ImageNet-21k
    # with sigmoid cross-entropy (multi-label), available as "sigmoid".
    loss: Literal["softmax", "sigmoid"] = "softmax"


class FinetuneConfig(Section):
    """`[finetune]`: transfer by fine-tuning (SGD momentum 0.9, cosine, clip 1; App. B.1.1)."""

    steps: PositiveInt
    batch_size: PositiveInt = 512
    lr: PositiveFloat = 0.01
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_steps: int = Field(500, ge=0)
    grad_clip: Optional[PositiveFloat] = 1.0
    image_size: Optional[PositiveInt] = Field(None, description="default: the pre-training resolution")


class FewshotConfig(Section):
    """`[fewshot]`: closed-form linear regression onto {-1, 1}^K on frozen features."""

    shots: list[PositiveInt] = Field(default_factory=lambda: [1, 5, 10, 25], min_length=1)
    l2_reg: PositiveFloat = 2.0**10  # big_vision's fixed regulariser
    draws: PositiveInt = 3  # random draws of the k shots, accuracy averaged


class TransferConfig(Section):
    """One `[[transfer]]` dataset: fine-tuned on and evaluated few-shot."""

    data: str
    name: Optional[str] = None
    classes: Optional[PositiveInt] = None
    per_class: Optional[PositiveInt] = None

    @property
    def label(self) -> str:
        return self.name or self.data


class RunConfig(Section):
    """`[run]`: how to run, never what: these keys do not change stage keys."""

    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    threads: Optional[PositiveInt] = None
    checkpoint_seconds: PositiveFloat = 60.0
    log_every: PositiveInt = 10


Column = Union[str, list[str]]


class TableSpec(Section):
    """One `[[report.tables]]`: a pivot of the results DataFrame."""

    name: str
    kind: Optional[Literal["pretrain", "finetune", "fewshot"]] = None
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


class Recipe(Section):
    """A whole recipe file after sweep expansion (every swept key holds one value)."""

    name: str
    description: str = ""
    seed: int = Field(0, ge=0)
    model: ModelConfig
    pretrain: PretrainConfig
    finetune: Optional[FinetuneConfig] = None
    fewshot: Optional[FewshotConfig] = None
    transfer: list[TransferConfig] = Field(default_factory=list)
    run: RunConfig = Field(default_factory=RunConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _transfer_needed(self) -> "Recipe":
        if (self.finetune or self.fewshot) and not self.transfer:
            raise ValueError("[finetune] and [fewshot] need at least one [[transfer]] dataset")
        return self
