"""Write a vitrun model as a file other tools load: timm, the official `.npz`, or safetensors.

    export(model, path, "timm")        -> timm's state dict (safetensors, or .pth/.bin by suffix)
                                          + how to create the timm model it fits
    export(model, path, "npz")         -> the official vit_jax / BiT layout (`to_npz`)
    export(model, path, "safetensors") -> vitrun's own state dict, with the spec in the metadata

A timm export loads with `timm.create_model(NAME, **kwargs).load_state_dict(...)`, NAME and
kwargs as returned (`timm_recipe`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("timm", "npz", "safetensors")


def export(model: nn.Module, path: str | Path, fmt: str) -> dict[str, Any]:
    """Write `model` to `path` in `fmt`; returns what a user needs to load it (printed by the CLI)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        from .npz import to_npz

        to_npz(model, path)
        return {"load": f"vitrun.interop.from_npz({str(path)!r}) or a recipe's init = \"npz:{path}\""}
    if fmt == "safetensors":
        metadata = {"vitrun.spec": json.dumps(dataclasses.asdict(model.spec)), "vitrun.num_classes": str(model.num_classes),
                    "vitrun.image_size": str(model.image_size)}
        _write_state(model.state_dict(), path, metadata)
        return {"load": f"vitrun.interop.export.load_safetensors({str(path)!r})"}
    if fmt == "timm":
        from .timm_models import to_timm

        timm_model = to_timm(model)
        _write_state(timm_model.state_dict(), path, {})
        name, kwargs = timm_recipe(model)
        reader = f"torch.load({str(path)!r})" if path.suffix in (".pth", ".pt", ".bin") else f"safetensors.torch.load_file({str(path)!r})"
        how = (f"timm.create_model({name!r}, **{kwargs!r}).load_state_dict({reader})" if name
               else "timm has no named architecture of this size: build it with vitrun.interop.to_timm(model) in Python")
        return {"timm_model": name, "timm_kwargs": kwargs, "load": how}
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def load_safetensors(path: str | Path) -> nn.Module:
    """A vitrun model from a file written by `export(..., "safetensors")`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vitrun import models

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "vitrun.spec" not in meta:
        raise ValueError(f"{path}: not a vitrun safetensors export (no vitrun.spec in its metadata)")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta["vitrun.spec"]).items()}
    spec = models.ModelSpec(**fields)
    model = models.build(spec, int(meta["vitrun.num_classes"]), int(meta["vitrun.image_size"]))
    model.load_state_dict(load_file(str(path)))
    return model


def timm_recipe(model: nn.Module) -> tuple[str | None, dict[str, Any]]:
    """timm's architecture name and keyword arguments whose module takes `to_timm(model)`'s
    state dict: `timm.create_model(name, **kwargs).load_state_dict(...)`.

    ViTs of any size: exact (timm's `vit_base_patch16_224` with every size given). BiT ResNets
    and hybrids: timm's named model of that depth and width (None where timm has none); its
    numerics are timm's, so a model with eps_convention = "official" differs by ~1e-3 in the
    logits (the npz export keeps the official numerics exactly).
    """
    spec = model.spec
    kwargs: dict[str, Any] = {"num_classes": model.num_classes}
    if spec.family == "vit":
        kwargs.update(img_size=model.image_size, patch_size=spec.patch, embed_dim=spec.width, depth=spec.depth,
                      num_heads=spec.heads, mlp_ratio=(spec.mlp + 0.5) / spec.width,
                      global_pool="token" if spec.classifier == "token" else "avg", class_token=spec.class_token,
                      fc_norm=spec.fc_norm, pos_embed="learn" if spec.pos_embed == "1d" else "none")
        return "vit_base_patch16_224", kwargs
    import timm

    if spec.family == "resnet":
        name = f"resnetv2_{3 * sum(spec.blocks) + 2}x{spec.width_factor:g}_bit"
    else:
        kwargs["img_size"] = model.image_size
        size = {768: "base", 1024: "large"}.get(spec.width, "unknown")
        name = f"vit_{size}_r50_s{spec.patch * (spec.stride or 1)}_224"
    return (name if timm.is_model(name) else None), kwargs


def _write_state(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix in (".pth", ".pt", ".bin"):
        torch.save(tensors, path)
        return
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
