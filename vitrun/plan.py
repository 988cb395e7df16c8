"""Recipe variants → a DAG of content-addressed stages.

A stage's key hashes its kind, its resolved config and its parents' keys, so identical
work is shared (one pre-training feeds every transfer stage of every variant that asks
for it) and finished work is found again by key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from vitrun.models import registry as model_registry
from vitrun.schema import Recipe, finetune_warmup

# Bump when a change to vitrun makes old results incomparable with new ones.
KEY_VERSION = 1
KINDS = ("pretrain", "finetune_dev", "finetune", "fewshot")
MASK_KEYS = ("mask_rate", "mask_target")


@dataclass(frozen=True)
class Stage:
    kind: str
    key: str
    config: dict[str, Any] = field(compare=False)  # resolved config, ancestors' sections included
    parents: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return self.config.get("model_label") or self.config["model"]["name"]

    @property
    def data(self) -> str:
        section = self.config.get("transfer") or self.config["pretrain"]
        return section.get("name") or section.get("data") or "random init"

    @property
    def size(self) -> int | None:
        return self.config["pretrain"].get("size")

    @property
    def training(self) -> dict[str, Any] | None:
        """The config section this stage trains by (steps, batch_size, image_size), or None:
        [pretrain] for pre-training, [finetune] for fine-tuning and its dev trials."""
        section = {"pretrain": "pretrain", "finetune_dev": "finetune", "finetune": "finetune"}.get(self.kind)
        return self.config[section] if section else None

    @property
    def size_label(self) -> str:
        """The pre-training size as shown: a number, "all" (the whole set) or "–" (scratch)."""
        if self.config["pretrain"].get("objective") == "scratch":
            return "–"
        return "all" if self.size is None else str(self.size)

    @property
    def detail(self) -> str:
        """The data with what tells sibling stages apart: "digits 5-shot", "digits, dev lr 0.003"."""
        if self.kind == "fewshot":
            return f"{self.data} {self.config['fewshot']['shots']}-shot"
        if self.kind == "finetune_dev":
            return f"{self.data}, dev lr {self.config['finetune']['lr']}"
        return self.data

    def variant(self, keys: Iterable[str]) -> str:
        """The values of swept dotted `keys` in this stage's config, e.g. "pos_embed=2d lr=0.001".

        Keys the stage does not have (a fine-tuning key on a few-shot stage) are left out.
        """
        shown = []
        for key in keys:
            value: Any = self.config
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                shown.append(f"{key.rsplit('.', 1)[-1]}={value}")
        return " ".join(shown)


def stage_key(kind: str, config: dict[str, Any], parents: Iterable[str]) -> str:
    payload = json.dumps({"v": KEY_VERSION, "kind": kind, "config": config, "parents": sorted(parents)}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def make_stage(kind: str, config: dict[str, Any], parents: tuple[str, ...] = ()) -> Stage:
    return Stage(kind=kind, key=stage_key(kind, config, parents), config=config, parents=parents)


def plan(variants: Iterable[Recipe]) -> list[Stage]:
    """Stages in a runnable order (every parent before its children), duplicates merged."""
    stages: dict[str, Stage] = {}
    for recipe in variants:
        for stage in _variant_stages(recipe):
            stages.setdefault(stage.key, stage)
    return list(stages.values())


def _variant_stages(recipe: Recipe) -> list[Stage]:
    upstream = {
        "seed": recipe.seed,
        "model": model_config(recipe),
        "pretrain": pretrain_config(recipe),
    }
    if recipe.model.init:  # only when set: recipes without one keep their keys
        upstream["init"] = recipe.model.init
    if recipe.model.label:  # likewise
        upstream["model_label"] = recipe.model.label
    pretrain = make_stage("pretrain", upstream)
    out = [pretrain]
    for transfer in recipe.transfer:
        # The fine-tuning override is keyed through the merged [finetune] of the stages it
        # changes, not through [transfer] (few-shot stages do not depend on it); `shots` picks
        # which few-shot stages exist, each keeps its own count in [fewshot].
        dataset = {k: v for k, v in transfer.model_dump(mode="json", exclude={"finetune"}).items() if k != "shots"}
        dataset = with_generator_version(dataset, transfer.data)
        base = {**upstream, "transfer": {**dataset, "name": transfer.label}}
        if recipe.finetune:
            finetune = _without_unused_regularisers(recipe.finetune_for(transfer).model_dump(mode="json"), recipe)
            finetune["image_size"] = finetune["image_size"] or finetune_image_size(recipe, transfer.data)
            finetune["warmup_steps"] = finetune_warmup(finetune["steps"], finetune["warmup_steps"])
            if ":" in transfer.data:  # a real dataset: its crops and test view are vit_jax's (see FINETUNE_VIEWS)
                base = {**base, "finetune_views": FINETUNE_VIEWS}
            # A list of rates: one dev-split trial each, then the final run with the best.
            # Trials never keep weights: save_weights keys only the final run.
            trial = {k: v for k, v in finetune.items() if k != "save_weights"}
            trials = [make_stage("finetune_dev", {**base, "finetune": {**trial, "lr": lr}}, (pretrain.key,)) for lr in _as_list(finetune["lr"])]
            if len(trials) > 1:
                out.extend(trials)
            parents = (pretrain.key, *(t.key for t in trials)) if len(trials) > 1 else (pretrain.key,)
            out.append(make_stage("finetune", {**base, "finetune": finetune}, parents))
        if recipe.fewshot:
            for shots in transfer.shots or recipe.fewshot.shots:
                fewshot = {**recipe.fewshot.model_dump(mode="json"), "shots": shots}
                out.append(make_stage("fewshot", {**base, "fewshot": fewshot}, (pretrain.key,)))
    return out


def model_config(recipe: Recipe) -> dict[str, Any]:
    """The resolved architecture. Masked-patch pre-training predicts from the output tokens and
    never trains the pre-logits layer, so its ViT is built without one: few-shot must read the
    pooled representation, not an untrained tanh layer (the fine-tuning head drops it anyway)."""
    model = recipe.model.resolved()
    if recipe.pretrain.objective == "masked-patch" and model.get("pre_logits"):
        model["pre_logits"] = False
    return model


# How fine-tuning sees a real dataset's images, in the stage key of its fine-tuning stages: the
# inception crop for training and the whole image for testing, as vit_jax. Fine-tuning results
# from before (a "resize" crop and a centre-crop test view) are another protocol: they re-run,
# never mix in. Embedded sets are generated square at the target size, where both views are
# the image itself: their keys are unchanged.
FINETUNE_VIEWS = {"train": "inception", "test": "full"}

FINETUNE_IMAGE_SIZE = 384  # Table 4: fine-tuning resolution of every real transfer set


def finetune_image_size(recipe: Recipe, source: str) -> int:
    """The fine-tuning resolution when the recipe gives none: 384 for real datasets (Table 4),
    rounded down to whole patches (ViT-H/14: 378); embedded sets are generated at a size of the
    recipe's choosing and keep the pre-training resolution."""
    if ":" not in source:  # embedded (see vitrun.data.is_embedded)
        return recipe.pretrain.image_size
    spec = model_registry.spec(recipe.model.name, **recipe.model.options())
    step = spec.patch if spec.family == "vit" else 1
    return FINETUNE_IMAGE_SIZE // step * step


def with_generator_version(section: dict[str, Any], source: str) -> dict[str, Any]:
    """`section` plus `data_version` when `source` is an embedded generator past its first
    version: results drawn from older pixels (shapes v1) re-run, never mix with the new ones.
    Version-1 generators add nothing, so their stages keep their keys."""
    from vitrun.data import GENERATORS  # deferred: the data package imports torch

    generator = GENERATORS.get(source)
    if generator is not None and generator.VERSION > 1:
        return {**section, "data_version": generator.VERSION}
    return section


def pretrain_config(recipe: Recipe) -> dict[str, Any]:
    """The `[pretrain]` keys a pre-training depends on, so equal work gets one key:
    masked-patch options only for that objective (older recipes keep their keys), and for
    "scratch" nothing but the resolution (no data, no steps: one initialisation per model).
    """
    section = with_generator_version(_without_unused_regularisers(recipe.pretrain.model_dump(mode="json"), recipe), recipe.pretrain.data)
    if section["objective"] == "scratch":
        return {"objective": "scratch", "image_size": section["image_size"], "steps": 0}
    if section["objective"] != "masked-patch":
        for key in MASK_KEYS:
            del section[key]
    return section


def _without_unused_regularisers(section: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """BiT ResNets have no dropout layers and no residual branches to drop: a swept
    `dropout = 0.1` does nothing to them, so it does not key their stages either."""
    if recipe.model.resolved()["family"] == "resnet":
        for key in ("dropout", "drop_path"):
            section.pop(key, None)
    return section


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def shard(stages: list[Stage], index: int, count: int, done: frozenset[str] | set[str] = frozenset()) -> list[Stage]:
    """The stages of shard `index` of `count` (1-based).

    A pre-training and every stage below it go to the same shard, so shards never wait
    for each other; roots are dealt out in key order, so every job computes the same split.
    Stages whose parents are all `done` (the 20 fine-tuning trials of a finished pre-training)
    are also dealt out one by one, in key order, so N jobs run them N at a time. A stage can
    then be in two shards (its tree's and its own): whichever job takes its lock first runs
    it, the other finds it locked, moves on and later finds it finished. Jobs that start
    while stages finish see different `done` sets; every stage still stays in its tree's shard.
    """
    root_of: dict[str, str] = {}
    for stage in stages:
        root_of[stage.key] = root_of[stage.parents[0]] if stage.parents else stage.key
    roots = sorted(set(root_of.values()))
    mine = set(roots[index - 1 :: count])
    ready = sorted(s.key for s in stages if s.parents and s.key not in done and all(p in done for p in s.parents))
    dealt = set(ready[index - 1 :: count])
    return [s for s in stages if root_of[s.key] in mine or s.key in dealt]
