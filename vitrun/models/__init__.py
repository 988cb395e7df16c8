"""Models of "An Image is Worth 16x16 Words" (arXiv 2010.11929): ViT, BiT ResNet, hybrid.

    spec("ViT-B/16", classifier="gap")  -> ModelSpec (torch-free: recipes validate without it)
    create("ViT-B/16", num_classes=10, image_size=224) -> nn.Module
    build(spec, num_classes, image_size)                -> nn.Module
    load_resampled(model, state_dict)                   -> loads a checkpoint of another resolution
    describe(names)                                     -> Table 1 rows: sizes, parameters, FLOPs

Every model has `spec`, `num_classes`, `image_size`, `forward(x)` (logits),
`representation(x)` (few-shot features), `reset_head(n)` and `set_image_size(s, mode)`.
Importing this package does not import torch; the functions that need it import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .flops import forward_flops
from .registry import ModelSpec, names, spec
from .summary import describe

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ModelSpec", "spec", "names", "create", "build", "forward_flops", "load_resampled", "describe"]


def create(name: str, num_classes: int, image_size: int, **overrides: Any) -> "nn.Module":
    """Build a freshly initialised model from a paper name plus options."""
    return build(spec(name, **overrides), num_classes, image_size)


def build(spec: ModelSpec, num_classes: int, image_size: int) -> "nn.Module":
    """Build a freshly initialised model from a resolved spec."""
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not (isinstance(image_size, int) and image_size > 0):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    # Imported here so that `import vitrun.models` stays torch-free.
    if spec.family == "vit":
        from .vit import build_vit as builder
    elif spec.family == "resnet":
        from .resnet import build_resnet as builder
    elif spec.family == "hybrid":
        from .hybrid import build_hybrid as builder
    else:
        raise ValueError(f"unknown model family {spec.family!r}")
    return builder(spec, num_classes, image_size)


def load_resampled(model: "nn.Module", state_dict: Mapping[str, "torch.Tensor"], mode: str = "bilinear") -> list[str]:
    """Load a state dict trained at another resolution, resampling its position tensors.

    See `position.load_resampled`; returns the resampled keys.
    """
    from .position import load_resampled as load

    return load(model, state_dict, mode)
