"""vitrun ⇄ timm: the same network, the same weights, the same logits.

Families (timm 1.0): `VisionTransformer` (`vit_*`; class token or GAP, with or without
`fc_norm`), `ResNetV2` as BiT (`resnetv2_*_bit`) and the hybrids (`vit_*_r50_*`: a
`VisionTransformer` whose `HybridEmbed` wraps a post-activation `ResNetV2`), as in timm's
`vision_transformer.py`, `resnetv2.py` and `vision_transformer_hybrid.py`.

Parameter names: ours already are timm's for the Transformer (see `models/vit.py`); the ResNet
parts use the official checkpoint names (`conv_root`, `gn1`, `conv_proj` …), mapped here.

Numerics: timm standardises conv kernels as (w − μ)/sqrt(σ² + 1e-8) with GroupNorm eps 1e-5 in
the hybrid; the official code (and vitrun by default) as (w − μ)/(σ + 1e-5) with eps 1e-6.
`from_timm` therefore builds with `eps_convention="timm"`; `to_timm` keeps the model's own
numerics: an "official" model becomes a timm module whose convolutions are `OfficialStdConv2d`
(timm's class, official formula), so the logits agree in both directions.

This module imports timm (an optional dependency); `vitrun.interop` imports it only when used.
"""

from __future__ import annotations

import math
import re
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

try:
    from timm.layers import GroupNormAct, HybridEmbed, PatchEmbed, StdConv2d, StdConv2dSame
    from timm.layers.attention import Attention
    from timm.layers.mlp import Mlp
    from timm.layers.padding import pad_same
    from timm.layers.pool2d_same import MaxPool2dSame
    from timm.models.resnetv2 import Bottleneck, DownsampleConv, PreActBottleneck, ResNetV2
    from timm.models.vision_transformer import Block, VisionTransformer
except ImportError as err:  # pragma: no cover - exercised only where timm is absent
    raise ImportError("vitrun.interop's timm conversion needs timm: pip install timm") from err

from vitrun.models.registry import ModelSpec
from vitrun.models.resnet import EPS, standardize
from vitrun.models.vit import LN_EPS

from . import specs
from .transfer import FeatureHead, build_loaded


class OfficialStdConv2d(StdConv2d):
    """timm's StdConv2d with the official standardisation (w − μ)/(σ + 1e-5) (vit_jax `StdConv`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, H', W')"""
        return F.conv2d(x, standardize(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)


class OfficialStdConv2dSame(StdConv2dSame):
    """timm's StdConv2dSame ("SAME" padding, the hybrid's) with the official standardisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, ceil(H/s), ceil(W/s))"""
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, standardize(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)


def _unsupported(feature: str) -> ValueError:
    return ValueError(f"from_timm: {feature} has no vitrun equivalent")


# -- timm → vitrun -------------------------------------------------------------------------

def from_timm(timm_model: nn.Module) -> nn.Module:
    """The vitrun model equal to `timm_model` (same weights, same logits; train/eval mode kept).

    A timm `num_classes=0` model gives a vitrun model whose head is a `FeatureHead` (forward
    returns the pooled features, as timm's). Raises ValueError naming the first timm feature
    vitrun's models lack (layer scale, register tokens, qk-norm, MAP pooling, ...).
    """
    spec, state, image_size = timm_state(timm_model)
    model = build_loaded(spec, state, timm_model.num_classes, image_size, keep_head=True)
    return model.train(timm_model.training)


def timm_state(timm_model: nn.Module) -> tuple[ModelSpec, dict[str, torch.Tensor], int]:
    """(spec, state dict in vitrun's names, image size) of a timm module, checked as `from_timm`.

    The tensors are timm's own (not copied), so a caller can build its model once.
    """
    if type(timm_model) is VisionTransformer:
        return _from_timm_vit(timm_model)
    if type(timm_model) is ResNetV2:
        spec, state = _from_timm_bit(timm_model)
        return spec, state, 224  # convolutions take any size; only recorded (BiT's pre-training size)
    raise _unsupported(f"timm model class {type(timm_model).__name__} (supported: VisionTransformer, its hybrids, ResNetV2)")


def _from_timm_vit(m: VisionTransformer) -> tuple[ModelSpec, dict[str, torch.Tensor], int]:
    pe = m.patch_embed
    hybrid = type(pe) is HybridEmbed
    if type(pe) not in (PatchEmbed, HybridEmbed):
        raise _unsupported(f"patch embedding {type(pe).__name__}")
    img, patch = tuple(pe.img_size), tuple(pe.patch_size)
    if img[0] != img[1] or patch[0] != patch[1]:
        raise _unsupported(f"non-square image or patch size ({img}, patch {patch})")
    for ok, feature in [
        (m.in_chans == 3, f"in_chans={m.in_chans}"),
        (not m.dynamic_img_size and not pe.dynamic_img_pad, "dynamic_img_size / dynamic_img_pad"),
        (m.reg_token is None, "register tokens (reg_tokens)"),
        (not (m.no_embed_class and m.cls_token is not None), "no_embed_class (class token without a position)"),
        (m.attn_pool is None, f"global_pool={m.global_pool!r} (attention pooling)"),
        (m.global_pool in ("token", "avg"), f"global_pool={m.global_pool!r}"),
        (not m.pool_include_prefix, "pool_include_prefix"),
        (isinstance(m.norm_pre, nn.Identity), "pre_norm"),
        (isinstance(m.patch_drop, nn.Identity), "patch_drop_rate"),
        (isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity), "a norm inside the patch embedding"),
        (isinstance(pe.proj, nn.Conv2d) and pe.proj.bias is not None, "a patch embedding without projection or bias"),
        (m.head_drop.p == 0, f"head dropout drop_rate={m.head_drop.p}"),
        (isinstance(m.head, (nn.Linear, nn.Identity)), f"head {type(m.head).__name__}"),
    ]:
        if not ok:
            raise _unsupported(feature)
    fc_norm = not isinstance(m.fc_norm, nn.Identity)
    if isinstance(m.norm, nn.Identity) == isinstance(m.fc_norm, nn.Identity):
        raise _unsupported("final_norm=False")
    _check_layer_norm(m.fc_norm if fc_norm else m.norm, "final norm")
    dropout = _check_blocks(m)

    block = m.blocks[0]
    transformer = {"width": m.embed_dim, "depth": len(m.blocks), "heads": block.attn.num_heads,
                   "mlp": block.mlp.fc1.out_features, "patch": patch[0]}
    options = {
        "classifier": "token" if m.global_pool == "token" else "gap",
        "pos_embed": "1d" if m.pos_embed is not None else "none",
        "pre_logits": False,  # timm's ViT has none
        "dropout": dropout,
        "fc_norm": fc_norm,
        "class_token": m.cls_token is not None,
    }
    state = dict(m.state_dict())
    if hybrid:
        backbone = pe.backbone
        if type(backbone) is not ResNetV2:
            raise _unsupported(f"a hybrid backbone {type(backbone).__name__} (vitrun: timm's ResNetV2)")
        blocks, width_factor, convention = _check_resnet(backbone, preact=False)
        if backbone.num_classes or not isinstance(backbone.head.fc, nn.Identity) or backbone.head.global_pool.pool_type:
            raise _unsupported("a hybrid backbone with its own pooling or head")
        options["eps_convention"] = convention
        spec = specs.hybrid_spec(blocks, width_factor, transformer, options)
        state = {(f"patch_embed.backbone.{_resnet_to_ours(k.removeprefix('patch_embed.backbone.'))}"
                  if k.startswith("patch_embed.backbone.") else k): v for k, v in state.items()}
    else:
        spec = specs.vit_spec(transformer, options)
    return spec, state, img[0]


def _check_blocks(m: VisionTransformer) -> float:
    """Every block is the paper's pre-norm block; returns the (single) dropout rate."""
    rates = {m.pos_drop.p} if m.pos_embed is not None else set()
    for i, block in enumerate(m.blocks):
        attn, mlp = block.attn, block.mlp
        for ok, feature in [
            (type(block) is Block and type(attn) is Attention and type(mlp) is Mlp, f"block {i}: {type(block).__name__}/{type(attn).__name__}/{type(mlp).__name__}"),
            (isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity), "layer scale (init_values)"),
            (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity), "qk_norm"),
            (isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity), "scale_attn_norm"),
            (isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity), "scale_mlp_norm"),
            (attn.qkv.bias is not None, "qkv_bias=False"),
            (attn.proj.bias is not None and mlp.fc1.bias is not None, "proj_bias=False"),
            (attn.num_heads * attn.head_dim == m.embed_dim, "attention width other than embed_dim"),
            (math.isclose(attn.scale, attn.head_dim ** -0.5), "attention scale other than head_dim**-0.5"),
            (type(mlp.act) is nn.GELU and mlp.act.approximate == "none", f"activation {mlp.act!r} (vitrun: exact GELU)"),
            (attn.attn_drop.p == 0, "attention dropout (attn_drop_rate)"),
            (mlp.fc1.out_features == m.blocks[0].mlp.fc1.out_features, "blocks of different MLP sizes"),
        ]:
            if not ok:
                raise _unsupported(feature)
        _check_layer_norm(block.norm1, f"block {i} norm1")
        _check_layer_norm(block.norm2, f"block {i} norm2")
        rates |= {attn.proj_drop.p, mlp.drop1.p, mlp.drop2.p}
    # Stochastic depth (drop_path) is a training regulariser vitrun does not have; eval is unaffected.
    if len(rates) > 1:
        raise _unsupported(f"different dropout rates {sorted(rates)} (vitrun: one rate after every dense and the positions)")
    return rates.pop() if rates else 0.0


def _check_layer_norm(norm: nn.Module, where: str) -> None:
    if not (isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None):
        raise _unsupported(f"{where} {type(norm).__name__} (vitrun: LayerNorm with bias)")
    if norm.eps != LN_EPS:
        raise _unsupported(f"{where} LayerNorm eps {norm.eps:g} (vitrun: {LN_EPS:g}, as official)")


def _from_timm_bit(m: ResNetV2) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    if m.in_chans != 3:
        raise _unsupported(f"in_chans={m.in_chans}")
    blocks, width_factor, convention = _check_resnet(m, preact=True)
    head = m.head
    if head.global_pool.pool_type != "avg" or head.drop.p != 0:
        raise _unsupported(f"BiT head with pooling {head.global_pool.pool_type!r} / dropout {head.drop.p}")
    _check_group_norm(m.norm, 1e-5, act=True, where="final norm")
    spec = specs.resnet_spec(blocks, width_factor, {"eps_convention": convention})
    state = {}
    for key, value in m.state_dict().items():
        if key.startswith("head.fc."):  # a 1x1 conv in timm, a Linear here: (n, C, 1, 1) -> (n, C)
            state[key.replace("head.fc.", "head.")] = value.flatten(1) if value.ndim == 4 else value
        elif key.startswith("norm."):
            state[key] = value
        else:
            state[f"trunk.{_resnet_to_ours(key)}"] = value
    return spec, state


def _check_resnet(m: ResNetV2, preact: bool) -> tuple[tuple[int, ...], float, str]:
    """BiT (preact) or the hybrid stem: returns (blocks per stage, width factor, eps convention)."""
    unit = PreActBottleneck if preact else Bottleneck
    stem = m.stem
    conv_type = StdConv2d if preact else StdConv2dSame
    # BiT: zero pad 1 + unpadded 3x3/2 pool (stem_type "fixed"); hybrid: "SAME" everywhere.
    layout = ["conv", "pad", "pool"] if preact else ["conv", "norm", "pool"]
    if [name for name, _ in stem.named_children()] != layout:
        raise _unsupported(f"ResNetV2 stem {[n for n, _ in stem.named_children()]} (vitrun: {layout}, stem_type={'fixed' if preact else 'same'!r})")
    if preact and not (isinstance(stem.pad, nn.ConstantPad2d) and stem.pad.value == 0 and type(stem.pool) is nn.MaxPool2d and stem.pool.padding == 0):
        raise _unsupported("a BiT stem other than stem_type='fixed'")
    if not preact and type(stem.pool) is not MaxPool2dSame:
        raise _unsupported("a hybrid stem other than stem_type='same'")
    convs = [mod for part in (m.stem, m.stages) for mod in part.modules() if isinstance(mod, nn.Conv2d)]  # head aside
    if any(not isinstance(c, conv_type) or c.groups != 1 or c.dilation != (1, 1) or c.bias is not None for c in convs):
        raise _unsupported(f"convolutions other than {conv_type.__name__} (no bias, groups or dilation; output_stride 32)")
    official = [isinstance(c, (OfficialStdConv2d, OfficialStdConv2dSame)) for c in convs]
    if all(official):
        convention = "official"
    elif not any(official) and all(c.eps == EPS["timm"][0] for c in convs):
        convention = "timm"
    else:
        raise _unsupported(f"weight-standardisation eps {sorted({c.eps for c in convs})} (timm's BiT and hybrids use 1e-8)")
    gn_eps = 1e-5 if preact else EPS[convention][1]
    if not preact:
        _check_group_norm(stem.norm, gn_eps, act=True, where="stem norm")
    blocks = []
    for i, stage in enumerate(m.stages):
        blocks.append(len(stage.blocks))
        for j, block in enumerate(stage.blocks):
            where = f"stage {i} block {j}"
            if type(block) is not unit:  # (its drop_path, training-only, is left behind as in ViT blocks)
                raise _unsupported(f"{where}: {type(block).__name__} (vitrun: {unit.__name__})")
            if block.downsample is not None and type(block.downsample) is not DownsampleConv:
                raise _unsupported(f"{where}: downsample {type(block.downsample).__name__} (avg_down)")
            for r in (1, 2, 3):
                # Pre-activation: every norm is GN + ReLU; post-activation: the third has no ReLU.
                _check_group_norm(getattr(block, f"norm{r}"), gn_eps, act=preact or r < 3, where=f"{where} norm{r}")
            if not preact and block.downsample is not None:
                _check_group_norm(block.downsample.norm, gn_eps, act=False, where=f"{where} downsample")
    if not blocks:
        raise _unsupported("a ResNet stem without stages (e.g. vit_tiny_r_s16_p8)")
    return tuple(blocks), stem.conv.out_channels / 64, convention


def _check_group_norm(norm: nn.Module, eps: float, act: bool, where: str) -> None:
    if type(norm) is not GroupNormAct:
        raise _unsupported(f"{where}: {type(norm).__name__} (vitrun: GroupNorm)")
    if norm.num_groups != math.gcd(32, norm.num_channels):
        raise _unsupported(f"{where}: {norm.num_groups} groups for {norm.num_channels} channels (vitrun: gcd(32, C))")
    if not math.isclose(norm.eps, eps):
        raise _unsupported(f"{where}: GroupNorm eps {norm.eps:g} (expected {eps:g} with these convolutions)")
    if type(norm.act) is not (nn.ReLU if act else nn.Identity) or not isinstance(norm.drop, nn.Identity):
        raise _unsupported(f"{where}: activation {type(norm.act).__name__} (vitrun: {'ReLU' if act else 'none'})")


# -- vitrun → timm -------------------------------------------------------------------------

def to_timm(model: nn.Module) -> nn.Module:
    """The timm module equal to vitrun `model` (same weights and logits; train/eval mode kept).

    Raises ValueError for what timm cannot express: a pre-logits layer (timm's ViT has none:
    `model.reset_head(n)` drops it, as fine-tuning does; `to_npz` keeps it), position
    embeddings other than learned 1-D ones added at the stem, and ResNet widths whose
    GroupNorms would not have 32 groups.
    """
    spec = model.spec
    num_classes = model.num_classes
    if spec.family == "resnet":
        timm_model = _resnet_v2(spec, preact=True, num_classes=num_classes)
        state = {}
        for key, value in model.state_dict().items():
            if key.startswith("head."):
                state[key.replace("head.", "head.fc.")] = value[:, :, None, None] if value.ndim == 2 else value
            elif key.startswith("trunk."):
                state[_resnet_to_timm(key.removeprefix("trunk."))] = value
            else:
                state[key] = value
    else:
        _check_timm_can_express(model)
        embed = None
        if spec.family == "hybrid":
            backbone = _resnet_v2(spec, preact=False, num_classes=0)
            embed = partial(HybridEmbed, backbone=backbone)
        timm_model = VisionTransformer(
            img_size=model.image_size, patch_size=spec.patch, in_chans=3, num_classes=num_classes,
            global_pool="token" if spec.classifier == "token" else "avg", class_token=spec.class_token,
            embed_dim=spec.width, depth=spec.depth, num_heads=spec.heads,
            # timm sizes the MLP as int(width * ratio); +0.5 keeps that from rounding down
            mlp_ratio=(spec.mlp + 0.5) / spec.width, qkv_bias=True,
            pos_embed="learn" if spec.pos_embed == "1d" else "none", fc_norm=spec.fc_norm,
            pos_drop_rate=spec.dropout, proj_drop_rate=spec.dropout,
            weight_init="skip",  # every tensor is overwritten below
            **({"embed_layer": embed} if embed else {}),
        )
        state = {(f"patch_embed.backbone.{_resnet_to_timm(k.removeprefix('patch_embed.backbone.'))}"
                  if k.startswith("patch_embed.backbone.") else k): v for k, v in model.state_dict().items()}
    own = timm_model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} ≠ timm {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong or set(own) != set(state):
        raise ValueError(f"to_timm: {spec.name} does not map onto timm's module: "
                         + "; ".join(wrong[:3] + sorted(set(own) ^ set(state))[:3]))
    timm_model.load_state_dict(state)
    return timm_model.train(model.training)


def _check_timm_can_express(model: nn.Module) -> None:
    spec = model.spec
    if not isinstance(model.pre_logits, nn.Identity):
        raise ValueError(f"to_timm: {spec.name} has a pre-logits layer, which timm's VisionTransformer lacks; "
                         "call model.reset_head(num_classes) to drop it (as fine-tuning does) or export it with to_npz")
    if spec.pos_embed not in ("1d", "none"):
        raise ValueError(f"to_timm: pos_embed={spec.pos_embed!r} has no timm equivalent (timm: learned 1-D or none)")
    # Added by Appendix D.4's variants: timm adds position embeddings once, at the stem.
    if spec.pos_embed_at != "stem":
        raise ValueError(f"to_timm: pos_embed_at={spec.pos_embed_at!r} has no timm equivalent (timm: once, at the stem)")
    if not isinstance(model.head, (nn.Linear, FeatureHead)):
        raise ValueError(f"to_timm: head {type(model.head).__name__} has no timm equivalent")


def _resnet_v2(spec: ModelSpec, preact: bool, num_classes: int) -> ResNetV2:
    """timm's ResNetV2 with our channel plan and our numerics (see the module docstring)."""
    base = int(round(64 * spec.width_factor))
    chans = [4 * base * 2**i for i in range(len(spec.blocks))]
    bad = [c for c in [base] + chans if c % 32]
    if bad:
        raise ValueError(f"to_timm: timm's ResNetV2 GroupNorms have 32 groups, but {spec.name} has layers of {bad[0]} channels "
                         "(width_factor must be a multiple of 0.5)")
    official = spec.eps_convention == "official"
    if preact:
        conv = OfficialStdConv2d if official else partial(StdConv2d, eps=EPS["timm"][0])
        norm = partial(GroupNormAct, num_groups=32, eps=1e-5)
    else:
        conv = OfficialStdConv2dSame if official else partial(StdConv2dSame, eps=EPS["timm"][0])
        norm = partial(GroupNormAct, num_groups=32, eps=EPS[spec.eps_convention][1])
    return ResNetV2(
        layers=list(spec.blocks), channels=tuple(chans), stem_chs=base, width_factor=1, num_classes=num_classes,
        global_pool="avg" if preact else "", preact=preact, stem_type="fixed" if preact else "same",
        conv_layer=conv, norm_layer=norm,
    )


# -- parameter names -------------------------------------------------------------------------
# timm's ResNetV2 (stem.conv, stages.i.blocks.j.norm1, downsample.conv) ⇄ the official names
# that vitrun's ResNet uses (conv_root, stages.i.j.gn1, conv_proj); keys relative to the trunk.

_TO_OURS = [
    (r"^stem\.conv\.", "conv_root."), (r"^stem\.norm\.", "gn_root."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"\.downsample\.conv\.", ".conv_proj."), (r"\.downsample\.norm\.", ".gn_proj."),
    (r"\.norm([123])\.", r".gn\1."),
]
_TO_TIMM = [
    (r"^conv_root\.", "stem.conv."), (r"^gn_root\.", "stem.norm."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.conv_proj\.", ".downsample.conv."), (r"\.gn_proj\.", ".downsample.norm."),
    (r"\.gn([123])\.", r".norm\1."),
]


def _resnet_to_ours(key: str) -> str:
    for pattern, repl in _TO_OURS:
        key = re.sub(pattern, repl, key)
    return key


def _resnet_to_timm(key: str) -> str:
    for pattern, repl in _TO_TIMM:
        key = re.sub(pattern, repl, key)
    return key
