"""BiT ResNet-v2 baselines and the hybrid's ResNet stem (arXiv 2010.11929, §4.1; BiT 1912.11370).

Two bottleneck units, because the official code has two:

* `PreActBottleneck` — the paper's ResNet baselines are BiT: pre-activation ResNet-v2
  (GN → ReLU → conv, three times), Group Normalization and Weight-Standardised convolutions,
  a final GN + ReLU before global average pooling.
* `Bottleneck` — the hybrid's stem (official `vit_jax/models_resnet.py`) uses post-activation
  units (conv → GN → ReLU; the shortcut projection has its own GN; ReLU after the sum) with the
  last GroupNorm of each unit zero-initialised, so every unit starts as the identity.

Both put the stride on the 3x3 conv. Parameter names follow the official checkpoints
(`conv_root`, `gn_root`, `conv1..3`, `gn1..3`, `conv_proj`, `gn_proj`).

Decisions written down:
* Weight standardisation: (w − mean) / (std + 1e-5), as official ViT code (timm: 1e-8 inside
  the sqrt; BiT's own code 1e-10 inside the sqrt — identical for any non-degenerate kernel).
  `ModelSpec.eps_convention = "timm"` switches to timm's numerics — (w − mean) / sqrt(var + 1e-8)
  and GroupNorm eps 1e-5 in hybrid units — so a model converted from timm gives the same logits
  (the gap is ~1e-4 relative per layer, which adds up over 50 layers); see `EPS`.
* GroupNorm groups = gcd(32, channels): 32 at every paper width (channels are multiples of 32
  there), and still a divisor for the narrow CPU widths (R14x0.25: 16 channels → 16 groups).
* GroupNorm eps: 1e-5 in BiT units (BiT code), 1e-6 in hybrid units (flax default, official).
* BiT zero-initialises only the head (no GN closes a pre-activation branch to zero); the
  hybrid zero-initialises each unit's last GN scale, as the official code.
* Padding: BiT pads symmetrically (root: zero pad 1 + 3x3/2 max-pool, as BiT's code); the
  hybrid uses TensorFlow "SAME" padding everywhere, as the official flax code, so that its
  released weights see the same pixel alignment.
* Conv weights start lecun-normal (flax's default); weight standardisation makes the scale moot.
* The BiT head is a Linear on the pooled features (BiT/timm: a 1x1 conv; same parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelSpec
from .vit import zero_linear

WS_EPS = 1e-5
# eps_convention → (weight-standardisation eps, hybrid GroupNorm eps). "official": eps added to
# the std (vit_jax `StdConv`), flax's GroupNorm default; "timm": eps inside the sqrt as timm's
# StdConv2d(eps=1e-8) of its BiT and hybrid models, torch's GroupNorm default. BiT units and the
# BiT final norm use 1e-5 in both.
EPS = {"official": (WS_EPS, 1e-6), "timm": (1e-8, 1e-5)}


# -- layers ----------------------------------------------------------------------------

def standardize(w: torch.Tensor, eps_convention: str = "official") -> torch.Tensor:
    """Weight standardisation of a conv kernel (Cout, Cin, k, k), statistics per output filter:
    (w − μ)/(σ + 1e-5) "official" (vit_jax `StdConv`), (w − μ)/sqrt(σ² + 1e-8) "timm"."""
    flat = w.reshape(w.shape[0], -1)  # (Cout, Cin*k*k)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)  # one pass for both
    if eps_convention == "timm":
        scale = torch.rsqrt(var + EPS["timm"][0])
    else:
        scale = 1.0 / (var.sqrt() + WS_EPS)
    return ((flat - mean) * scale).reshape_as(w)  # (Cout, Cin, k, k)


class _Standardize(torch.autograd.Function):
    """`standardize` through batch norm's fused CPU/GPU kernels, the numerics unchanged (to
    rounding, ~1e-7): autograd's chain through var_mean, sqrt and division was ~15% of an
    R50x1 CPU training step (BENCHMARKS.md); timm standardises through `F.batch_norm` too.

    Each filter is a channel of a (1, Cout, n) batch norm with no affine: b = (w − μ)·r,
    r = (σ² + ε)^-½; "timm" is b itself (ε = 1e-8). "official" is (w − μ)/(σ + 1e-5) = b·c with
    ε = 0 (a tiny ε keeps a constant filter finite) and c = 1/(1 + 1e-5·r) = σ/(σ + 1e-5); its
    gradient is batch norm's backward of g·c, plus the path through c:
    dc/dσ = 1e-5/(σ + 1e-5)² = 1e-5·(r·c)², dσ/dw = b/n, so + Σ(g·b)·1e-5·(r·c)²·b/n.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, eps_convention: str) -> torch.Tensor:
        flat = w.reshape(1, w.shape[0], -1)  # (1, Cout, n): one channel per filter
        timm = eps_convention == "timm"
        eps = EPS["timm"][0] if timm else 1e-30  # official: ε only keeps σ = 0 finite
        b, mean, invstd = torch.native_batch_norm(flat, None, None, None, None, True, 0.0, eps)  # b: (1, Cout, n)
        c = None if timm else 1.0 / (1.0 + WS_EPS * invstd)  # (Cout,): σ/(σ + 1e-5)
        ctx.eps = eps
        ctx.save_for_backward(flat, mean, invstd, c, None if timm else b)
        return (b if timm else b * c[:, None]).reshape_as(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, mean, invstd, c, b = ctx.saved_tensors
        g = grad.reshape(flat.shape)  # (1, Cout, n)
        # With c as batch norm's affine weight: the gradient of b·c through b, and Σ(g·b) per filter.
        dw, g_b, _ = torch.ops.aten.native_batch_norm_backward(g, flat, c, None, None, mean, invstd, True, ctx.eps, [True, c is not None, False])
        if c is not None:  # the path through c: Σ(g·b) · 1e-5·(r·c)²/n, times b
            dc = WS_EPS * (invstd * c) ** 2 * g_b / flat.shape[2]  # (Cout,)
            dw = dw.addcmul_(b, dc[:, None])
        return dw.reshape(grad.shape), None


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardisation (arXiv 1903.10520), no bias.

    tf_same: pad like TensorFlow "SAME" (extra pixel at the end), computed per input size.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, tf_same: bool = False, eps_convention: str = "official"):
        super().__init__(cin, cout, kernel, stride=stride, padding=0 if tf_same else kernel // 2, bias=False)
        self.tf_same = tf_same
        self.eps_convention = eps_convention
        # lecun-normal, flax's default; the scale is moot once the kernel is standardised.
        nn.init.trunc_normal_(self.weight, std=self.weight[0].numel() ** -0.5)

    def standardized_weight(self) -> torch.Tensor:
        """The standardised kernel (Cout, Cin, k, k), through batch norm's kernels (`_Standardize`)."""
        return _Standardize.apply(self.weight, self.eps_convention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, H', W')"""
        padding = self.padding
        if self.tf_same:
            left, right, top, bottom = _same_padding(x.shape[-2:], self.kernel_size[0], self.stride[0])
            if left == right and top == bottom:  # symmetric (all 1x1 and stride-1 convs): the conv pads, no copy
                padding = (top, left)
            else:  # the odd pixel after: only strided 3x3 and 7x7 convs
                x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.standardized_weight(), None, self.stride, padding)


def _same_padding(hw: tuple[int, int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF "SAME": output = ceil(size / stride); the odd pixel of padding goes after."""
    pads = []
    for size in reversed(tuple(hw)):  # F.pad wants (left, right, top, bottom): width first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def group_norm(channels: int, eps: float) -> nn.GroupNorm:
    # gcd(32, C): the paper's 32 groups whenever they divide C (see module docstring).
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=eps)


# -- units -----------------------------------------------------------------------------

class PreActBottleneck(nn.Module):
    """BiT unit: x + conv3(relu(gn3(conv2(relu(gn2(conv1(relu(gn1(x))))))))), stride on conv2."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, eps_convention: str = "official"):
        super().__init__()
        eps, ws = 1e-5, {"eps_convention": eps_convention}
        self.gn1 = group_norm(cin, eps)
        self.conv1 = StdConv2d(cin, mid, 1, **ws)
        self.gn2 = group_norm(mid, eps)
        self.conv2 = StdConv2d(mid, mid, 3, stride, **ws)
        self.gn3 = group_norm(mid, eps)
        self.conv3 = StdConv2d(mid, cout, 1, **ws)
        # The projection reads the pre-activated input, as BiT (no GN of its own).
        self.conv_proj = StdConv2d(cin, cout, 1, stride, **ws) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, H/stride, W/stride)"""
        pre = F.relu(self.gn1(x), inplace=True)  # in place: GN's backward reads its input only
        shortcut = self.conv_proj(pre) if self.conv_proj is not None else x
        y = self.conv1(pre)
        y = self.conv2(F.relu(self.gn2(y), inplace=True))
        y = self.conv3(F.relu(self.gn3(y), inplace=True))
        return y + shortcut


class Bottleneck(nn.Module):
    """Hybrid (official ViT) unit: relu(gn3(conv3(...conv1(x))) + shortcut), stride on conv2."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, eps_convention: str = "official"):
        super().__init__()
        eps, ws = EPS[eps_convention][1], {"tf_same": True, "eps_convention": eps_convention}
        self.conv1 = StdConv2d(cin, mid, 1, **ws)
        self.gn1 = group_norm(mid, eps)
        self.conv2 = StdConv2d(mid, mid, 3, stride, **ws)
        self.gn2 = group_norm(mid, eps)
        self.conv3 = StdConv2d(mid, cout, 1, **ws)
        self.gn3 = group_norm(cout, eps)
        nn.init.zeros_(self.gn3.weight)  # official: the unit starts as (projected) identity
        if stride != 1 or cin != cout:
            self.conv_proj = StdConv2d(cin, cout, 1, stride, **ws)
            self.gn_proj = group_norm(cout, eps)
        else:
            self.conv_proj = self.gn_proj = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, ceil(H/stride), ceil(W/stride))"""
        shortcut = self.gn_proj(self.conv_proj(x)) if self.conv_proj is not None else x
        y = F.relu(self.gn1(self.conv1(x)), inplace=True)
        y = F.relu(self.gn2(self.conv2(y)), inplace=True)
        y = self.gn3(self.conv3(y))
        return F.relu(y + shortcut, inplace=True)


# -- trunk -----------------------------------------------------------------------------

class ResNetTrunk(nn.Module):
    """Root (7x7/2 conv + 3x3/2 max-pool) and stages; stage i has mid width base·2^i, output 4×.

    preact=True: BiT (root without norm). preact=False: the hybrid stem (root GN + ReLU).
    """

    def __init__(self, blocks: tuple[int, ...], width_factor: float, preact: bool, eps_convention: str = "official"):
        super().__init__()
        base = int(round(64 * width_factor))
        self.preact = preact
        self.conv_root = StdConv2d(3, base, 7, 2, tf_same=not preact, eps_convention=eps_convention)
        self.gn_root = None if preact else group_norm(base, EPS[eps_convention][1])
        unit = PreActBottleneck if preact else Bottleneck
        stages, cin = [], base
        for i, n in enumerate(blocks):
            mid = base * 2**i
            units = [unit(cin if j == 0 else 4 * mid, 4 * mid, mid, stride=(1 if i == 0 or j > 0 else 2), eps_convention=eps_convention)
                     for j in range(n)]
            stages.append(nn.Sequential(*units))
            cin = 4 * mid
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, C, H/s, W/s), s = 4 · 2^(stages − 1)"""
        x = self.conv_root(x)  # (B, base, H/2, W/2)
        if self.preact:
            # BiT: zero padding then an unpadded pool (its code; no ReLU precedes it here).
            x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # (B, base, H/4, W/4)
        else:
            x = F.relu(self.gn_root(x), inplace=True)
            # "SAME" max-pool; after the ReLU, zero padding equals flax's -inf padding.
            x = F.max_pool2d(F.pad(x, _same_padding(x.shape[-2:], 3, 2)), 3, 2)  # (B, base, H/4, W/4)
        return self.stages(x)

    def output_size(self, size: int) -> int:
        """Feature-map side for a square input of `size` pixels (the hybrid's "SAME" trunk)."""
        assert not self.preact, "only the hybrid needs its grid size in advance"
        for _ in range(len(self.stages) + 1):  # root conv, pool, then /2 per stage after the first
            size = math.ceil(size / 2)
        return size


# -- the BiT model ---------------------------------------------------------------------

class ResNet(nn.Module):
    """BiT ResNet-v2: trunk → GN → ReLU → global average pool → linear head."""

    def __init__(self, spec: ModelSpec, num_classes: int, image_size: int):
        super().__init__()
        self.spec, self.num_classes, self.image_size = spec, num_classes, image_size
        self.trunk = ResNetTrunk(spec.blocks, spec.width_factor, preact=True, eps_convention=spec.eps_convention)
        self.norm = group_norm(self.trunk.out_channels, 1e-5)
        self.num_features = self.trunk.out_channels
        self.head = zero_linear(self.num_features, num_classes)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, C): pooled features after the final GN + ReLU."""
        x = F.relu(self.norm(self.trunk(x)), inplace=True)  # (B, C, h, w)
        return x.mean(dim=(2, 3))  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1] -> logits (B, num_classes)"""
        return self.head(self.representation(x))

    def reset_head(self, num_classes: int) -> None:
        """Fine-tuning: a new zero-initialised head (a ResNet has no pre-logits to drop)."""
        self.head = zero_linear(self.num_features, num_classes, like=self.head.weight)
        self.num_classes = num_classes

    def set_image_size(self, image_size: int, mode: str = "bilinear") -> None:
        """Convolutions take any size: only recorded (`mode` is ViT's, unused here)."""
        self.image_size = image_size


def build_resnet(spec: ModelSpec, num_classes: int, image_size: int) -> ResNet:
    return ResNet(spec, num_classes, image_size)
