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

from vitrun.schema import Recipe

# Bump when a change to vitrun makes old results incomparable with new ones.
KEY_VERSION = 1
KINDS = ("pretrain", "finetune", "fewshot")


@dataclass(frozen=True)
class Stage:
    kind: str
    key: str
    config: dict[str, Any] = field(compare=False)  # resolved config, ancestors' sections included
    parents: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def data(self) -> str:
        section = self.config.get("transfer") or self.config["pretrain"]
        return section.get("name") or section["data"]

    @property
    def size(self) -> int | None:
        return self.config["pretrain"]["size"]

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
        "model": recipe.model.resolved(),
        "pretrain": recipe.pretrain.model_dump(mode="json"),
    }
    if recipe.model.init:  # only when set: recipes without one keep their keys
        upstream["init"] = recipe.model.init
    pretrain = make_stage("pretrain", upstream)
    out = [pretrain]
    for transfer in recipe.transfer:
        base = {**upstream, "transfer": {**transfer.model_dump(mode="json"), "name": transfer.label}}
        if recipe.finetune:
            finetune = recipe.finetune.model_dump(mode="json")
            finetune["image_size"] = finetune["image_size"] or recipe.pretrain.image_size
            out.append(make_stage("finetune", {**base, "finetune": finetune}, (pretrain.key,)))
        if recipe.fewshot:
            for shots in recipe.fewshot.shots:
                fewshot = {**recipe.fewshot.model_dump(mode="json"), "shots": shots}
                out.append(make_stage("fewshot", {**base, "fewshot": fewshot}, (pretrain.key,)))
    return out


def shard(stages: list[Stage], index: int, count: int) -> list[Stage]:
    """The stages of shard `index` of `count` (1-based).

    A pre-training and every stage below it go to the same shard, so shards never wait
    for each other; roots are dealt out in key order, so every job computes the same split.
    """
    root_of: dict[str, str] = {}
    for stage in stages:
        root_of[stage.key] = root_of[stage.parents[0]] if stage.parents else stage.key
    roots = sorted(set(root_of.values()))
    mine = set(roots[index - 1 :: count])
    return [s for s in stages if root_of[s.key] in mine]
