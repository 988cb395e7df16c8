"""Vision Transformer (Dosovitskiy et al., arXiv 2010.11929, §3.1, Eq. 1–4).

An image is cut into P×P patches, each linearly embedded (a strided conv); a class token is
prepended, position embeddings added, and a stack of pre-norm Transformer blocks
(LN → MHSA → residual, LN → MLP → residual) ends in a LayerNorm. The head is the pre-training
"pre-logits" (Dense + tanh) then a linear classifier; fine-tuning replaces both by one
zero-initialised linear layer (App. B.1.1).

Faithful to the official code (google-research/vision_transformer, `models_vit.py`):
LayerNorm eps 1e-6; dropout after the attention output projection, after both MLP layers and
after adding the position embeddings, none inside attention (every official config has
attention dropout 0); "gap" averages the tokens after the final LayerNorm; initialisation:
zero head, xavier-uniform dense kernels (q, k and v each as its own D×D matrix), MLP biases
normal(1e-6), other biases 0, lecun-normal patch embedding and pre-logits, class token 0,
position embeddings normal(0.02).

One departure: GELU is the exact erf form (PyTorch and timm default); flax's default, used by
the official code, is the tanh approximation (they differ by < 1e-3). Parameter names follow
timm's, so its state dicts load directly.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelSpec

LN_EPS = 1e-6


# -- blocks ----------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Flatten P×P patches and project them linearly: one conv with kernel = stride = P."""

    def __init__(self, patch: int, width: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, width, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, D, H/P, W/P)"""
        return self.proj(x)

    def grid(self, image_size: int) -> tuple[int, int]:
        if image_size % self.patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {self.patch}")
        return image_size // self.patch, image_size // self.patch


class Attention(nn.Module):
    """Multi-head self-attention; q, k, v from one fused Linear (timm's `qkv` layout)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)"""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, h, D/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, D/h)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, D/h), softmax(qkᵀ/√(D/h))v
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D): heads concatenated
        return self.drop(self.proj(x))


class Mlp(nn.Module):
    """Dense → GELU → dropout → Dense → dropout."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)"""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm encoder block (Eq. 2–3): x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)"""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# -- the model -------------------------------------------------------------------------

class VisionTransformer(nn.Module):
    """ViT; the hybrid is this class with a ResNet stem as its `patch_embed` (see hybrid.py).

    A patch embedder maps (B, 3, H, W) -> (B, D, gh, gw) and has `grid(image_size)` and `proj`.
    """

    def __init__(self, spec: ModelSpec, num_classes: int, image_size: int, patch_embed: nn.Module | None = None):
        super().__init__()
        self.spec, self.num_classes, self.image_size = spec, num_classes, image_size
        D = spec.width
        self.patch_embed = patch_embed if patch_embed is not None else PatchEmbed(spec.patch, D)
        self.grid = self.patch_embed.grid(image_size)
        self.num_prefix_tokens = 1 if spec.classifier == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if self.num_prefix_tokens else None
        self.pos_embed = self._new_pos_embed()
        self.pos_drop = nn.Dropout(spec.dropout)
        self.blocks = nn.Sequential(*[Block(D, spec.heads, spec.mlp, spec.dropout) for _ in range(spec.depth)])
        # fc_norm moves the final LayerNorm after pooling (timm's layout for GAP models).
        self.norm = nn.Identity() if spec.fc_norm else nn.LayerNorm(D, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(D, eps=LN_EPS) if spec.fc_norm else nn.Identity()
        self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(D, D), act=nn.Tanh())) if spec.pre_logits else nn.Identity()
        self.head = _zero_linear(D, num_classes)
        self._init_weights()

    def _new_pos_embed(self) -> nn.Parameter | None:
        # Dispatch point for Appendix D.4's variants ("2d": X and Y tables of D/2; "relative":
        # an attention bias) — each would add its own parameters here and in `_add_position`.
        if self.spec.pos_embed == "none":
            return None
        tokens = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        return nn.Parameter(torch.empty(1, tokens, self.spec.width).normal_(std=0.02))  # BERT's init, as official

    def _init_weights(self) -> None:
        # Explicit per layer, not a blanket `apply`: a hybrid's ResNet stem keeps its own init.
        for block in self.blocks:
            q_k_v = block.attn.qkv.weight.view(3, self.spec.width, self.spec.width)  # (3, D, D)
            for w in q_k_v:  # xavier over D×D each, as flax's separate query/key/value kernels
                nn.init.xavier_uniform_(w)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.xavier_uniform_(block.attn.proj.weight)
            nn.init.zeros_(block.attn.proj.bias)
            for fc in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
        _lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.pre_logits, nn.Sequential):
            _lecun_normal_(self.pre_logits.fc.weight)  # flax Dense default
            nn.init.zeros_(self.pre_logits.fc.bias)

    # -- forward pieces ----------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, prefix + gh*gw, D), after the final LayerNorm (unless fc_norm)."""
        x = self.patch_embed(x)  # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, D): patches in row-major order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + gh*gw, D)
        x = self._add_position(x)
        x = self.blocks(x)
        return self.norm(x)

    def _add_position(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)"""
        if self.pos_embed is None:
            return x  # the official code skips the dropout along with the embedding
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(
                f"input gives {x.shape[1]} tokens but the position embedding has {self.pos_embed.shape[1]} "
                f"(built for {self.image_size} px): call set_image_size() first"
            )
        return self.pos_drop(x + self.pos_embed)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, D): the class token, or the mean of all tokens ("gap")."""
        pooled = x[:, 0] if self.spec.classifier == "token" else x.mean(dim=1)
        return self.fc_norm(pooled)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, D): pre-logits output if present, else the pooled features."""
        return self.pre_logits(self.pool(self.forward_features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1] -> logits (B, num_classes)"""
        return self.head(self.representation(x))

    # -- transfer ----------------------------------------------------------------------

    def reset_head(self, num_classes: int) -> None:
        """Fine-tuning (App. B.1.1): drop the pre-logits, add a zero-initialised linear head.

        `self.spec` follows (pre_logits=False) so the spec still rebuilds this module.
        """
        self.pre_logits = nn.Identity()
        self.head = _zero_linear(self.spec.width, num_classes, like=self.head.weight)
        self.num_classes = num_classes
        self.spec = replace(self.spec, pre_logits=False)

    @torch.no_grad()
    def set_image_size(self, image_size: int) -> None:
        """Use a new resolution: the patch-grid position embeddings are resampled in 2-D.

        The embedding becomes a new Parameter: call this before building the optimiser.
        """
        grid = self.patch_embed.grid(image_size)
        if self.pos_embed is not None and grid != self.grid:
            resampled = resample_pos_embed(self.pos_embed, grid, self.grid, self.num_prefix_tokens)
            self.pos_embed = nn.Parameter(resampled, requires_grad=self.pos_embed.requires_grad)
        self.grid, self.image_size = grid, image_size


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Interpolate the patch-grid part of a 1-D position embedding in 2-D; prefix kept as is.

    pos_embed: (1, prefix + gh*gw, D) -> (1, prefix + nh*nw, D). Bilinear with corners mapped
    to corners (align_corners=True) equals the official `scipy.ndimage.zoom(order=1)`.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    (gh, gw), D = old_grid, pos_embed.shape[-1]
    if grid.shape[1] != gh * gw:
        raise ValueError(f"position embedding has {grid.shape[1]} grid tokens, not {gh}x{gw}")
    grid = grid.reshape(1, gh, gw, D).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    corners = True if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode=mode, align_corners=corners)  # (1, D, nh, nw)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, nh*nw, D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


# -- helpers for the layers above --------------------------------------------------------

def _lecun_normal_(w: torch.Tensor) -> None:
    """flax's default kernel init: truncated normal (±2σ) with variance 1 / fan_in."""
    std = math.sqrt(1.0 / w[0].numel()) / 0.87962566103423978  # std of N(0,1) truncated to ±2
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


def _zero_linear(fan_in: int, fan_out: int, like: torch.Tensor | None = None) -> nn.Linear:
    """The classifier head: zero kernel and bias, as official (logits start at 0)."""
    kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
    head = nn.Linear(fan_in, fan_out, **kw)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def build_vit(spec: ModelSpec, num_classes: int, image_size: int) -> VisionTransformer:
    return VisionTransformer(spec, num_classes, image_size)
