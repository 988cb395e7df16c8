"""Hand-built stage.json records for report tests: what `vitrun recipe` would write."""

from __future__ import annotations

import itertools
from typing import Any

from vitrun.store import Store

_counter = itertools.count()
VIT_B16 = {"name": "ViT-B/16", "family": "vit", "classifier": "token", "pos_embed": "1d", "pos_embed_at": "stem"}


def write(store: Store, experiment: str, kind: str, config: dict[str, Any], accuracy: float | None, parents=(), flops=None, status="done", shots=None) -> str:
    """One finished (or failed, diverged) stage; returns its key."""
    key = f"{kind}-{next(_counter):012x}"
    if shots is not None:
        config = {**config, "fewshot": {"shots": shots, "draws": 3}}
    record = {
        "key": key, "kind": kind, "experiment": experiment, "status": status, "config": config, "parents": list(parents),
        "metrics": {} if accuracy is None else {"accuracy": accuracy}, "wall_time_s": 1.0, "flops": flops, "device": "cpu (fp32)",
        "versions": {"vitrun": "0.1.0", "torch": "2.x", "python": "3.11"},
    }
    store.stage(experiment, key).finish(record)
    return key


def pretrain_config(model: dict[str, Any], data: str, seed: int = 0, **pretrain: Any) -> dict[str, Any]:
    return {"seed": seed, "model": model, "pretrain": {"data": data, "image_size": 224, "steps": 10, "objective": "supervised", **pretrain}}


def transfer_config(upstream: dict[str, Any], data: str, image_size: int = 384, name: str | None = None) -> dict[str, Any]:
    return {**upstream, "transfer": {"data": data, "name": name or data}, "finetune": {"image_size": image_size, "steps": 10, "lr": 0.01}}


def smoke_b16(store: Store, experiment: str = "pretrain_b16", accuracies=(0.80, 0.81), source: str = "hf:timm/imagenet-22k-wds") -> None:
    """What `vitrun recipe pretrain_b16.toml --smoke` leaves: ViT-B/16 pre-trained on an ImageNet-21k
    source, fine-tuned on ImageNet at 384, one seed per accuracy."""
    for seed, acc in enumerate(accuracies):
        upstream = pretrain_config(VIT_B16, source, seed)
        key = write(store, experiment, "pretrain", upstream, None, flops=2e15)
        write(store, experiment, "finetune", transfer_config(upstream, "hf:ILSVRC/imagenet-1k", 384, name="imagenet"), acc, (key,))
