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

Position information (App. D.4, options `pos_embed` and `pos_embed_at`; tensors and their
resampling in position.py): "1d" (default), "2d", "relative" or "none", added once before the
first block ("stem", default) or at every block's input ("every-layer": a table per block;
"every-layer-shared": one table). The embedding dropout acts once, at the stem, after the
positions are added, and also when there are none ("none") or they bias attention instead
("relative"): Table 8's arms then differ in position information only, not in regularisation.

Departures: GELU is the exact erf form (PyTorch and timm default); flax's default, used by the
official code, is the tanh approximation (they differ by < 1e-3). Stochastic depth
(`drop_path`, 0 by default as in the paper) is a vitrun option from DeiT/timm. Parameter names
follow timm's, so its state dicts load directly. Attention runs through
`F.scaled_dot_product_attention`; the relative bias enters as its float `attn_mask`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .position import (
    MODES,
    grid_2d,
    relative_bias,
    relative_index,
    relative_rows,
    resample_axis,
    resample_pos_embed,
    resample_relative,
)
from .registry import ModelSpec

__all__ = ["VisionTransformer", "PatchEmbed", "Attention", "Block", "build_vit", "resample_pos_embed"]

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
    """Multi-head self-attention; q, k, v from one fused Linear (timm's `qkv` layout).

    relative_rows > 0 adds the paper's relative attention (position.py): a table
    `relative_pos` (relative_rows, D/h), shared by the heads, whose logits bias the content's.

    `keep_attention = True` (opt-in, for the analyses of §4.5: evals/analysis.py) computes the
    same softmax explicitly and keeps its probabilities in `attention` (B, h, N, N); the
    default path stays the fused `F.scaled_dot_product_attention`, which never forms them.
    """

    def __init__(self, width: int, heads: int, dropout: float, relative_rows: int = 0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        self.relative_pos = nn.Parameter(torch.empty(relative_rows, width // heads).normal_(std=0.02)) if relative_rows else None
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, relative_index: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D), relative_index: (N, N) table rows (relative only) -> (B, N, D)"""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, h, D/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, D/h)
        bias = None if self.relative_pos is None else relative_bias(q, self.relative_pos, relative_index)  # (B, h, N, N)
        if self.keep_attention:
            logits = q @ k.transpose(-2, -1) / math.sqrt(D // self.heads)  # (B, h, N, N)
            probs = (logits if bias is None else logits + bias).softmax(dim=-1)  # (B, h, N, N): rows sum to 1
            self.attention = probs.detach()
            x = probs @ v  # (B, h, N, D/h)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, N, D/h), softmax(qkᵀ/√(D/h) + bias)v
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


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016; DeiT/timm): drop a residual branch per sample.

    Training: each sample's branch is zeroed with probability `rate`, kept ones scaled by
    1/(1 − rate) so the expectation is unchanged. Evaluation: the identity.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...) -> (B, ...)"""
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


def set_regularisation(model: nn.Module, dropout: float, drop_path: float) -> None:
    """Set a built model's dropout rate and stochastic depth for the stage that trains it.

    They are training hyper-parameters (Table 3 ties dropout to the stage: 0.1 pre-training on
    ImageNet/-21k, 0 fine-tuning), set per stage in [pretrain]/[finetune], not architecture:
    every `nn.Dropout` gets `dropout`; the `DropPath` rates grow linearly over the blocks from 0
    to `drop_path` (timm/DeiT), as `VisionTransformer.__init__` lays them out. Works on any
    module holding a ViT (hybrid, masked-patch wrapper); a ResNet has neither: unchanged.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    paths = [module for module in model.modules() if isinstance(module, DropPath)]
    rates = torch.linspace(0, drop_path, len(paths), device="cpu").tolist() if paths else []
    for module, rate in zip(paths, rates):
        module.rate = rate


class Block(nn.Module):
    """Pre-norm encoder block (Eq. 2–3): x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float, drop_path: float = 0.0, relative_rows: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads, dropout, relative_rows)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp, dropout)
        self.drop_path = DropPath(drop_path)  # no parameters: used for both branches

    def forward(self, x: torch.Tensor, relative_index: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)"""
        x = x + self.drop_path(self.attn(self.norm1(x), relative_index))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# -- the model -------------------------------------------------------------------------

class VisionTransformer(nn.Module):
    """ViT; the hybrid is this class with a ResNet stem as its `patch_embed` (see hybrid.py).

    A patch embedder maps (B, 3, H, W) -> (B, D, gh, gw) and has `grid(image_size)` and `proj`.
    Position parameters, by `spec.pos_embed` (the others are None; L = depth for
    "every-layer", else 1): "1d" `pos_embed` (L, prefix + gh*gw, D); "2d" `pos_embed_x`
    (L, gw, D/2), `pos_embed_y` (L, gh, D/2), `pos_embed_cls` (L, prefix, D) with a class
    token; "relative" `blocks.i.attn.relative_pos`.
    """

    def __init__(self, spec: ModelSpec, num_classes: int, image_size: int, patch_embed: nn.Module | None = None):
        super().__init__()
        self.spec, self.num_classes, self.image_size = spec, num_classes, image_size
        D = spec.width
        self.patch_embed = patch_embed if patch_embed is not None else PatchEmbed(spec.patch, D)
        self.grid = self.patch_embed.grid(image_size)
        self.num_prefix_tokens = 1 if spec.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if self.num_prefix_tokens else None
        self._new_pos_embed()
        self.pos_drop = nn.Dropout(spec.dropout)
        rows = relative_rows(self.grid, self.num_prefix_tokens) if spec.pos_embed == "relative" else 0
        # Stochastic depth grows linearly from 0 at the first block to `drop_path` at the last (timm).
        rates = torch.linspace(0, spec.drop_path, spec.depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[Block(D, spec.heads, spec.mlp, spec.dropout, rate, rows) for rate in rates])
        # fc_norm moves the final LayerNorm after pooling (timm's layout for GAP models).
        self.norm = nn.Identity() if spec.fc_norm else nn.LayerNorm(D, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(D, eps=LN_EPS) if spec.fc_norm else nn.Identity()
        self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(D, D), act=nn.Tanh())) if spec.pre_logits else nn.Identity()
        self.head = zero_linear(D, num_classes)
        self._init_weights()

    def _new_pos_embed(self) -> None:
        """The absolute tables (App. D.4), normal(0.02) as the official 1d (BERT's init)."""
        kind, D, prefix, (gh, gw) = self.spec.pos_embed, self.spec.width, self.num_prefix_tokens, self.grid
        L = self.spec.depth if self.spec.pos_embed_at == "every-layer" else 1

        def table(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape).normal_(std=0.02))

        self.pos_embed = table(L, prefix + gh * gw, D) if kind == "1d" else None
        self.pos_embed_x = table(L, gw, D // 2) if kind == "2d" else None
        self.pos_embed_y = table(L, gh, D // 2) if kind == "2d" else None
        # The class token's 2-D embedding: the counterpart of the 1d table's first row.
        self.pos_embed_cls = table(L, prefix, D) if kind == "2d" and prefix else None

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

    def forward_features(self, x: torch.Tensor, corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, prefix + gh*gw, D), after the final LayerNorm (unless fc_norm).

        corrupt: (B, gh*gw, D) -> (B, gh*gw, D), applied to the patch embeddings before the
        class token and positions are added (masked-patch pre-training, §4.6; see
        engine/masked_patch.py). None (default) leaves them as they are.
        """
        x = self.patch_embed(x)  # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, D): patches in row-major order
        if corrupt is not None:
            x = corrupt(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + gh*gw, D)
        expected = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        if self.spec.pos_embed != "none" and x.shape[1] != expected:
            raise ValueError(
                f"input gives {x.shape[1]} tokens but the position embedding has {expected} "
                f"(built for {self.image_size} px): call set_image_size() first"
            )
        pos = self.position_embeddings()  # (L, N, D) or None
        index = relative_index(self.grid, self.num_prefix_tokens, x.device) if self.spec.pos_embed == "relative" else None
        every_layer = self.spec.pos_embed_at != "stem"
        for i, block in enumerate(self.blocks):
            if pos is not None and (i == 0 or every_layer):
                x = x + pos[i if len(pos) > 1 else 0]  # (B, N, D) + (N, D)
            if i == 0:  # official: dropout right after the embeddings, once, whatever the positions
                x = self.pos_drop(x)
            x = block(x, index)
        return self.norm(x)

    def position_embeddings(self) -> torch.Tensor | None:
        """The absolute embeddings as added to the tokens: (L, prefix + gh*gw, D), or None.

        "1d" is its table; "2d" is assembled from the X and Y tables (and the class token's);
        "relative" and "none" have none. L = depth for "every-layer", else 1.
        """
        if self.pos_embed is not None:
            return self.pos_embed
        if self.pos_embed_x is None:
            return None
        grid = grid_2d(self.pos_embed_x, self.pos_embed_y)  # (L, gh*gw, D)
        return grid if self.pos_embed_cls is None else torch.cat([self.pos_embed_cls, grid], dim=1)  # (L, N, D)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, D): the class token, or the mean of the patch tokens ("gap")."""
        pooled = x[:, 0] if self.spec.classifier == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
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
        self.head = zero_linear(self.spec.width, num_classes, like=self.head.weight)
        self.num_classes = num_classes
        self.spec = replace(self.spec, pre_logits=False)

    @torch.no_grad()
    def set_image_size(self, image_size: int, mode: str = "bilinear") -> None:
        """Use a new resolution (§3.2): position tensors of the patch grid are resampled in 2-D.

        mode: "bilinear" (default; corners to corners, as the official scipy zoom), "bicubic"
        or "nearest". 1d tables are resampled as grids, 2d's X and Y tables each along its
        axis, relative tables through 2-D displacements (position.resample_relative);
        class-token embeddings are kept. Resampled tensors become new Parameters (same
        requires_grad): call this before building the optimiser.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        grid = self.patch_embed.grid(image_size)
        if grid != self.grid:
            old, prefix = self.grid, self.num_prefix_tokens
            if self.pos_embed is not None:
                _replace(self, "pos_embed", resample_pos_embed(self.pos_embed, grid, old, prefix, mode))
            if self.pos_embed_x is not None:
                _replace(self, "pos_embed_x", resample_axis(self.pos_embed_x, grid[1], mode))
                _replace(self, "pos_embed_y", resample_axis(self.pos_embed_y, grid[0], mode))
            for block in self.blocks:
                if block.attn.relative_pos is not None:
                    _replace(block.attn, "relative_pos", resample_relative(block.attn.relative_pos, grid, old, prefix, mode))
        self.grid, self.image_size = grid, image_size


# -- helpers for the layers above --------------------------------------------------------

def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Swap a parameter for a resampled one of another shape, keeping requires_grad."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))


def _lecun_normal_(w: torch.Tensor) -> None:
    """flax's default kernel init: truncated normal (±2σ) with variance 1 / fan_in."""
    std = math.sqrt(1.0 / w[0].numel()) / 0.87962566103423978  # std of N(0,1) truncated to ±2
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


def zero_linear(fan_in: int, fan_out: int, like: torch.Tensor | None = None) -> nn.Linear:
    """The classifier head, ViT's and BiT's: zero kernel and bias, as official (logits start at 0)."""
    kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
    head = nn.Linear(fan_in, fan_out, **kw)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def build_vit(spec: ModelSpec, num_classes: int, image_size: int) -> VisionTransformer:
    return VisionTransformer(spec, num_classes, image_size)
