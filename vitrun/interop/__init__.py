"""Weights in and out of vitrun: timm modules, official Google `.npz` checkpoints, recipe inits.

    from_timm(timm_model)                  -> vitrun model, same logits (ViT, BiT, hybrid)
    to_timm(model)                         -> timm module, same logits
    from_npz(path, spec=None, num_classes=None, image_size=None) -> vitrun model
    to_npz(model, path)                    -> writes the official layout (vit_jax / BiT)
    check_init("timm:NAME" | "npz:PATH")   -> None or ValueError (torch-free, no network)
    load_init(init, spec, num_classes, image_size) -> vitrun model for a recipe

Importing this package imports neither torch nor timm; timm (optional: `pip install timm`) is
needed only by from_timm, to_timm and "timm:" inits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .pretrained import check_init, load_init

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from vitrun.models.registry import ModelSpec

__all__ = ["from_timm", "to_timm", "from_npz", "to_npz", "check_init", "load_init"]


def from_timm(timm_model: Any) -> "nn.Module":
    """The vitrun model equal to a timm module (see `timm_models.from_timm`)."""
    from .timm_models import from_timm as convert

    return convert(timm_model)


def to_timm(model: "nn.Module") -> Any:
    """The timm module equal to a vitrun model (see `timm_models.to_timm`)."""
    from .timm_models import to_timm as convert

    return convert(model)


def from_npz(path: "str | Path", spec: "ModelSpec | None" = None, num_classes: int | None = None,
             image_size: int | None = None) -> "nn.Module":
    """A vitrun model from an official `.npz` checkpoint (see `npz.from_npz`)."""
    from .npz import from_npz as load

    return load(path, spec=spec, num_classes=num_classes, image_size=image_size)


def to_npz(model: "nn.Module", path: "str | Path") -> None:
    """Write a vitrun model in the official `.npz` layout (see `npz.to_npz`)."""
    from .npz import to_npz as save

    save(model, path)
