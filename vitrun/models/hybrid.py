"""The hybrid: a ResNet stem as ViT's patch embedder (arXiv 2010.11929, §3.1 "Hybrid
Architecture"; official `vit_jax/models_vit.py` with a `resnet` config).

"R50+ViT-B/16" runs BiT-R50's root and its first three stages (units 3, 4, 9: stage 4's units
folded into stage 3, see `registry.fold_blocks`) to a stride-16 feature map, then embeds each
cell with a 1x1 "patch" into the Transformer. As in the official code (and timm's 98,659,112
parameters) the stem uses post-activation units and has no final norm: each unit already ends
in a ReLU. Being a `VisionTransformer`, the hybrid takes every ViT option (pos_embed "2d" or
"relative", pos_embed_at, drop_path, …); its patch grid is the feature map's.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import ModelSpec
from .resnet import ResNetTrunk
from .vit import VisionTransformer


class HybridEmbed(nn.Module):
    """ResNet trunk → P×P patch projection (P = spec.patch, 1 in every paper hybrid)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.patch = spec.patch
        self.backbone = ResNetTrunk(spec.blocks, spec.width_factor, preact=False, eps_convention=spec.eps_convention)
        self.proj = nn.Conv2d(self.backbone.out_channels, spec.width, spec.patch, stride=spec.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, D, H/(stride·P), W/(stride·P))"""
        return self.proj(self.backbone(x))  # (B, C, H/stride, W/stride) -> (B, D, gh, gw)

    def grid(self, image_size: int) -> tuple[int, int]:
        side = self.backbone.output_size(image_size) // self.patch
        if side < 1:
            raise ValueError(f"image size {image_size} is too small for a stride-{self.backbone_stride} stem")
        return side, side

    @property
    def backbone_stride(self) -> int:
        return 2 ** (len(self.backbone.stages) + 1)


def build_hybrid(spec: ModelSpec, num_classes: int, image_size: int) -> VisionTransformer:
    return VisionTransformer(spec, num_classes, image_size, patch_embed=HybridEmbed(spec))
