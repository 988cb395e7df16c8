"""Tests for vitrun.models: tiny members of each family on 32-px images, sizes on `meta`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitrun import models
from vitrun.models.registry import ModelSpec
from vitrun.models.vit import resample_pos_embed

from tests.models.reference import zoom_bilinear as _zoom_bilinear

REPO = Path(__file__).resolve().parents[2]

# One tiny member of each family (and each classifier), all on 32-px inputs.
TINY = [
    ("ViT-Mu/4", {}),
    ("ViT-Mu/4", {"classifier": "gap"}),
    ("ViT-Mu/4", {"dropout": 0.1, "pre_logits": False}),
    ("R14x0.25", {}),
    ("R14x0.25+ViT-Mu/8", {}),
]
TINY_IDS = ["vit-token", "vit-gap", "vit-dropout", "resnet", "hybrid"]


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _randomise_head(model: torch.nn.Module) -> None:
    # Heads start at zero, which would stop every gradient below them; tests want signal.
    torch.nn.init.normal_(model.head.weight, std=0.1)


# -- forward / backward ----------------------------------------------------------------

@pytest.mark.parametrize("name,options", TINY, ids=TINY_IDS)
def test_forward_backward_finite(name, options):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, image_size=32, **options)
    assert model.spec == models.spec(name, **options)
    assert (model.num_classes, model.image_size) == (10, 32)

    logits = model(_images())
    assert logits.shape == (2, 10)
    assert torch.all(logits == 0), "a zero-initialised head gives zero logits"

    _randomise_head(model)
    loss = F.cross_entropy(model(_images()), torch.tensor([1, 7]))
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    first = next(iter(model.parameters()))  # the stem / patch embedding: gradient reaches the bottom
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("name,options,features", [
    ("ViT-Mu/4", {}, 64),
    ("ViT-Mu/4", {"classifier": "gap", "pre_logits": False}, 64),
    ("R14x0.25", {}, 512),  # base 16 channels, stage 4: 16·8 mid × 4
    ("R14x0.25+ViT-Mu/8", {}, 64),
], ids=["vit-prelogits", "vit-gap", "resnet", "hybrid"])
def test_representation(name, options, features):
    model = models.create(name, num_classes=10, image_size=32, **options).eval()
    x = _images(3)
    with torch.no_grad():
        rep = model.representation(x)
        assert rep.shape == (3, features)
        assert torch.allclose(model.head(rep), model(x))
        if options.get("pre_logits", True) and hasattr(model, "pre_logits"):
            assert rep.abs().max() <= 1, "pre-logits end in tanh"
        if options.get("classifier") == "gap":
            assert torch.allclose(rep, model.forward_features(x).mean(1)), "gap = token mean after the final norm"


def test_vit_token_layout():
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 64)
    assert torch.all(model.cls_token == 0)  # official init
    gap = models.create("ViT-Mu/4", num_classes=10, image_size=32, classifier="gap", pos_embed="none")
    assert gap.cls_token is None and gap.pos_embed is None
    assert gap.forward_features(_images()).shape == (2, 64, 64)


# -- fine-tuning protocol ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["ViT-Mu/4", "R14x0.25", "R14x0.25+ViT-Mu/8"])
def test_reset_head(name):
    model = models.create(name, num_classes=10, image_size=32)
    _randomise_head(model)
    model.reset_head(5)
    assert model.num_classes == 5
    assert torch.all(model.head.weight == 0) and torch.all(model.head.bias == 0)
    assert model(_images()).shape == (2, 5)
    assert torch.all(model(_images()) == 0)
    if model.spec.family != "resnet":
        assert isinstance(model.pre_logits, torch.nn.Identity)
        assert not any(k.startswith("pre_logits") for k in model.state_dict())
        assert model.spec.pre_logits is False
        # the spec still describes the module: it rebuilds a matching state dict
        models.build(model.spec, 5, 32).load_state_dict(model.state_dict())


def test_set_image_size_resamples_pos_embed_in_2d():
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32)
    old = model.pos_embed.detach().clone()  # (1, 1 + 8*8, 64)
    model.set_image_size(48)
    assert model.image_size == 48 and model.grid == (12, 12)
    new = model.pos_embed.detach()
    assert new.shape == (1, 1 + 12 * 12, 64)
    assert torch.equal(new[:, 0], old[:, 0]), "the class-token embedding is kept as is"

    reference = _zoom_bilinear(old[0, 1:].reshape(8, 8, 64).double().numpy(), (12, 12))
    np.testing.assert_allclose(new[0, 1:].reshape(12, 12, 64).numpy(), reference, atol=1e-6)
    try:  # the official code's own call
        from scipy import ndimage
    except ImportError:
        pass
    else:
        official = ndimage.zoom(old[0, 1:].reshape(8, 8, 64).double().numpy(), (12 / 8, 12 / 8, 1), order=1)
        np.testing.assert_allclose(reference, official, atol=1e-6)

    assert model.pos_embed.requires_grad
    assert model(_images(size=48)).shape == (2, 10)
    with pytest.raises(ValueError, match="set_image_size"):
        model(_images(size=32))


def test_set_image_size_hybrid_and_resnet():
    hybrid = models.create("R14x0.25+ViT-Mu/8", num_classes=10, image_size=32)
    assert hybrid.grid == (4, 4)
    hybrid.set_image_size(48)
    assert hybrid.grid == (6, 6) and hybrid.pos_embed.shape == (1, 1 + 36, 64)
    assert hybrid(_images(size=48)).shape == (2, 10)
    resnet = models.create("R14x0.25", num_classes=10, image_size=32)
    resnet.set_image_size(48)
    assert resnet.image_size == 48 and resnet(_images(size=48)).shape == (2, 10)


def test_resample_pos_embed_same_grid_is_identity():
    pos = torch.randn(1, 1 + 4 * 6, 8)
    assert torch.allclose(resample_pos_embed(pos, (4, 6), (4, 6), 1), pos, atol=1e-6)
    out = resample_pos_embed(pos[:, 1:], (8, 3), (4, 6), 0, mode="nearest")
    assert out.shape == (1, 24, 8)


# -- sizes ---------------------------------------------------------------------------------

# Every paper model timm has, plus a few more of its sizes: (our name, options, image size, timm name).
TIMM_TWINS = [
    ("ViT-Ti/16", {}, 224, "vit_tiny_patch16_224"),
    ("ViT-S/16", {}, 224, "vit_small_patch16_224"),
    ("ViT-S/32", {}, 224, "vit_small_patch32_224"),
    ("ViT-B/16", {}, 224, "vit_base_patch16_224"),
    ("ViT-B/32", {}, 224, "vit_base_patch32_224"),
    ("ViT-B/8", {}, 224, "vit_base_patch8_224"),
    ("ViT-B/16", {"classifier": "gap", "fc_norm": True}, 224, "vit_base_patch16_gap_224"),
    ("ViT-L/16", {}, 224, "vit_large_patch16_224"),
    ("ViT-L/32", {}, 224, "vit_large_patch32_224"),
    ("ViT-H/14", {}, 224, "vit_huge_patch14_224"),
    ("R50x1", {}, 224, "resnetv2_50x1_bit"),
    ("R50x3", {}, 224, "resnetv2_50x3_bit"),
    ("R101x1", {}, 224, "resnetv2_101x1_bit"),
    ("R101x3", {}, 224, "resnetv2_101x3_bit"),
    ("R152x2", {}, 224, "resnetv2_152x2_bit"),
    ("R152x4", {}, 224, "resnetv2_152x4_bit"),
    ("R50+ViT-B/16", {}, 224, "vit_base_r50_s16_224"),
    ("R50+ViT-B/16", {}, 384, "vit_base_r50_s16_384"),
    ("R50+ViT-L/32", {}, 224, "vit_large_r50_s32_224"),
    ("R26+ViT-S/32", {}, 224, "vit_small_r26_s32_224"),
    ("R26+ViT-B/32", {}, 224, "vit_base_r26_s32_224"),
]
# PAPER.md's numbers, so that a change in timm cannot move both sides of the comparison.
PARAMS = {"ViT-B/16": 86_567_656, "R50x1": 25_549_352, "R50+ViT-B/16": 98_659_112, "ViT-H/14": 632_045_800}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,options,size,timm_name", TIMM_TWINS, ids=[t[3] for t in TIMM_TWINS])
def test_param_count_matches_timm(name, options, size, timm_name):
    timm = pytest.importorskip("timm")
    if models.spec(name).family != "resnet":
        options = {"pre_logits": False, **options}  # timm's weights ship without the pre-logits
    with torch.device("meta"):  # nothing allocated, even for ViT-H/14 or R152x4
        ours = models.create(name, num_classes=1000, image_size=size, **options)
        # some default to no head (in21k); a count needs shapes only: skip timm's ViT init (its
        # truncated normals run op by op on meta, 0.2-0.4 s a model); ResNetV2 has no such switch
        skip_init = {} if timm_name.startswith("resnetv2") else {"weight_init": "skip"}
        theirs = timm.create_model(timm_name, num_classes=1000, **skip_init)
    assert _count(ours) == _count(theirs)
    if size == 224 and not options.keys() - {"pre_logits"} and name in PARAMS:
        assert _count(ours) == PARAMS[name]


def test_pre_logits_adds_width_squared_plus_width():
    with torch.device("meta"):
        with_pl = models.create("ViT-B/16", num_classes=1000, image_size=224)
    assert _count(with_pl) == PARAMS["ViT-B/16"] + 768 * 768 + 768


def test_forward_flops_vit_b16():
    flops = models.forward_flops(models.spec("ViT-B/16", pre_logits=False), 224)
    # The paper's/timm's 16.85 G multiply-accumulates leave out attention's two matmuls.
    attention = 12 * 2 * 197 * 197 * 768 * 2
    print(f"\nViT-B/16 @224: {flops / 1e9:.2f} GFLOPs = {flops / 2e9:.2f} GMACs "
          f"({(flops - attention) / 2e9:.3f} GMACs without attention matmuls)")
    assert abs(flops / (2 * 16.85e9) - 1) < 0.05
    assert abs((flops - attention) / (2 * 16.85e9) - 1) < 0.002
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32)
    assert models.forward_flops(model, 32) == models.forward_flops(model.spec, 32, num_classes=10)


def test_forward_flops_resnet_and_hybrid():
    r50 = models.forward_flops(models.spec("R50x1"), 224)
    assert abs(r50 / (2 * 4.09e9) - 1) < 0.01
    hybrid = models.forward_flops(models.spec("R50+ViT-B/16", pre_logits=False), 224)
    assert abs(hybrid / (2 * 20.8e9) - 1) < 0.05


# -- registry ------------------------------------------------------------------------------

def test_names_all_resolve_and_serialise():
    for name in models.names():
        s = models.spec(name)
        stored = json.loads(json.dumps(asdict(s)))
        # what vitrun.stages does with a stored spec: lists back to tuples
        assert ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}) == s
        assert ModelSpec(**stored) == s  # lists are normalised too


def test_spec_decoding():
    b16 = models.spec("ViT-B/16")
    assert (b16.family, b16.depth, b16.width, b16.mlp, b16.heads, b16.patch) == ("vit", 12, 768, 3072, 12, 16)
    assert (b16.classifier, b16.pos_embed, b16.pos_embed_at, b16.pre_logits, b16.dropout) == ("token", "1d", "stem", True, 0.0)
    assert (b16.drop_path, b16.fc_norm) == (0.0, False)
    assert b16.blocks is None
    assert models.spec("ViT-L/7").patch == 7
    r = models.spec("R152x2")
    assert (r.family, r.blocks, r.width_factor, r.width) == ("resnet", (3, 8, 36, 3), 2.0, None)
    assert models.spec("R14x0.25").width_factor == 0.25
    h = models.spec("R50+ViT-B/16")
    assert (h.family, h.blocks, h.stride, h.patch, h.width_factor) == ("hybrid", (3, 4, 9), 16, 1, 1.0)
    assert models.spec("R50+ViT-L/32").blocks == (3, 4, 6, 3)
    assert models.spec("R14x0.25+ViT-Mu/8").blocks == (1, 3)
    assert models.spec("R50+ViT-B/4").blocks == (16,)
    assert models.spec("R50+ViT-B/16", stride=8).blocks == (3, 13)
    custom = models.spec("ViT-Mu/4", width=96, heads=6, depth=2, mlp=128)
    assert (custom.width, custom.heads, custom.depth, custom.mlp) == (96, 6, 2, 128)
    assert models.spec("R50x1", blocks=[1, 1], width_factor=2).blocks == (1, 1)


@pytest.mark.parametrize("call,message", [
    (lambda: models.spec("ViT-X/16"), "unknown model 'ViT-X/16' (did you mean"),
    (lambda: models.spec("vit-b/16"), "did you mean 'ViT-B/16'?"),
    (lambda: models.spec("R50x1+ViT-B/16x"), "unknown model"),
    (lambda: models.spec("R18x1"), "ResNet depth 18"),
    (lambda: models.spec("ViT-B/16", widht=10), "unknown option 'widht' for ViT-B/16 (did you mean 'width'?)"),
    (lambda: models.spec("R50x1", patch=4), "unknown option 'patch' for R50x1"),
    (lambda: models.spec("ViT-B/16", width=100), "not divisible by heads"),
    (lambda: models.spec("ViT-B/16", classifier="cls"), "classifier"),
    (lambda: models.spec("ViT-B/16", pos_embed="3d"), "pos_embed must be one of"),
    (lambda: models.spec("ViT-B/16", pos_embed_at="stems"), "pos_embed_at must be one of"),
    (lambda: models.spec("ViT-B/16", pos_embed="none", pos_embed_at="every-layer"), "pos_embed_at='every-layer' needs pos_embed '1d' or '2d'"),
    (lambda: models.spec("ViT-B/16", pos_embed="relative", pos_embed_at="every-layer-shared"), "relative attention already acts in every block"),
    (lambda: models.spec("ViT-B/16", pos_embed="2d", width=63, heads=3), "pos_embed='2d' needs an even width"),
    (lambda: models.spec("ViT-B/16", drop_path=1.0), "drop_path must be in [0, 1)"),
    (lambda: models.spec("ViT-B/16", drop_path="0.1"), "drop_path"),
    (lambda: models.spec("R50x1", drop_path=0.1), "unknown option 'drop_path' for R50x1"),
    (lambda: models.spec("ViT-B/16", dropout=1.5), "dropout"),
    (lambda: models.spec("ViT-B/16", pre_logits="yes"), "pre_logits"),
    (lambda: models.spec("ViT-B/16", depth=0), "depth"),
    (lambda: models.spec("ViT-B/16", width=True), "width"),
    (lambda: models.spec("R50+ViT-B/12"), "stride"),
    (lambda: models.spec("R50+ViT-B/16", blocks=(3, 4, 6, 3)), "keeps 3 ResNet stage"),
    (lambda: models.spec("R50x1", width_factor=0), "width_factor"),
    (lambda: models.spec("R50x1", blocks=()), "blocks"),
    (lambda: ModelSpec(name="x", family="vit", width=64, depth=1, heads=4, mlp=4, patch=4,
                       classifier="token", pos_embed="1d", pre_logits=True, dropout=0.0, stride=8), "do not apply"),
])
def test_spec_errors(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)


def test_build_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of the patch"):
        models.create("ViT-Mu/4", num_classes=10, image_size=30)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("ViT-Mu/4", num_classes=0, image_size=32)


def test_registry_and_package_import_without_torch():
    code = (
        "import sys, vitrun.models.registry, vitrun.models; "
        "vitrun.models.spec('R50+ViT-B/16'); vitrun.models.names(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- equivalence with timm (a test-only dependency) ------------------------------------------

@pytest.mark.parametrize("classifier,fc_norm", [("token", False), ("gap", False), ("gap", True)])
def test_vit_matches_timm(classifier, fc_norm):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    gap = classifier == "gap"
    reference = timm_vit.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0, num_classes=10,
        class_token=not gap, global_pool="avg" if gap else "token", fc_norm=fc_norm,
    ).eval()
    for p in reference.parameters():  # timm's head starts at zero too: make every weight count
        torch.nn.init.normal_(p, std=0.2)
    ours = models.create("ViT-Mu/4", num_classes=10, image_size=32, classifier=classifier, pre_logits=False, fc_norm=fc_norm).eval()
    # Our parameter names are timm's; the mapping is the identity (checked key for key).
    state = reference.state_dict()
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    x = _images(4)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff <= 1e-4, diff


def _timm_resnet_names(name: str) -> str:
    """timm ResNetV2 key → ours (official names: conv_root, gn1..3, conv_proj, gn_proj)."""
    name = name.replace("stem.conv.", "conv_root.").replace("stem.norm.", "gn_root.")
    name = name.replace(".blocks.", ".").replace("downsample.conv.", "conv_proj.").replace("downsample.norm.", "gn_proj.")
    for i in (1, 2, 3):
        name = name.replace(f"norm{i}.", f"gn{i}.")
    return name


def test_bit_resnet_matches_timm():
    resnetv2 = pytest.importorskip("timm.models.resnetv2")
    from functools import partial

    from timm.layers import StdConv2d

    torch.manual_seed(0)
    # R26x0.5 at 32 px: every GroupNorm has 32 groups, as in timm.
    reference = resnetv2.ResNetV2(layers=(2, 2, 2, 2), width_factor=0.5, num_classes=10, stem_type="fixed",
                                  conv_layer=partial(StdConv2d, eps=1e-8)).eval()
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours = models.create("R26x0.5", num_classes=10, image_size=32, eps_convention="timm").eval()
    state = {}
    for key, value in reference.state_dict().items():
        if key.startswith("head.fc."):
            state[key.replace("head.fc.", "head.")] = value.flatten(1) if value.ndim == 4 else value
        elif key.startswith("norm."):
            state[key] = value
        else:
            state["trunk." + _timm_resnet_names(key)] = value
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    x = _images(2)
    with torch.no_grad():
        a, b = ours(x), reference(x)
    # timm's numerics (eps inside the sqrt), so the logits agree to float rounding.
    assert (a - b).abs().max() <= 1e-4, (a - b).abs().max()


def test_hybrid_matches_timm():
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    from functools import partial

    from timm.layers import HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2

    torch.manual_seed(0)
    backbone = ResNetV2(layers=(2, 6), width_factor=0.5, num_classes=0, global_pool="", preact=False,
                        stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8))
    reference = timm_vit.VisionTransformer(
        img_size=32, patch_size=1, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0, num_classes=10,
        embed_layer=partial(HybridEmbed, backbone=backbone),
    ).eval()
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours = models.create("R26x0.5+ViT-Mu/8", num_classes=10, image_size=32, pre_logits=False, eps_convention="timm").eval()
    state = {}
    for key, value in reference.state_dict().items():
        if key.startswith("patch_embed.backbone."):
            key = "patch_embed.backbone." + _timm_resnet_names(key.removeprefix("patch_embed.backbone."))
        state[key] = value
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    x = _images(2)
    with torch.no_grad():
        a, b = ours(x), reference(x)
    # timm's GroupNorm and weight-standardisation eps, so the logits agree to float rounding.
    assert (a - b).abs().max() <= 1e-4, (a - b).abs().max()


def test_class_token_follows_the_classifier_unless_set():
    assert models.spec("ViT-Mu/4").class_token is True
    assert models.spec("ViT-Mu/4", classifier="gap").class_token is False
    with pytest.raises(ValueError, match='classifier "token" needs class_token = true'):
        models.spec("ViT-Mu/4", class_token=False)
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32, classifier="gap", class_token=True, pre_logits=False).eval()
    assert model.num_prefix_tokens == 1 and model.pos_embed.shape[1] == 1 + 8 * 8
    x = _images(2)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert torch.allclose(model.representation(x), tokens[:, 1:].mean(1)), "gap averages the patch tokens, not the class token"


@pytest.mark.parametrize("convention", ["official", "timm"])
def test_standardize_gradient_matches_autograd(convention):
    """StdConv2d's batch-norm-kernel standardisation: the formula's values and autograd's gradient."""
    from vitrun.models.resnet import _Standardize, standardize

    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(w)
    (ref,) = torch.autograd.grad(standardize(w, convention), w, g)
    (ours,) = torch.autograd.grad(_Standardize.apply(w, convention), w, g)
    torch.testing.assert_close(_Standardize.apply(w, convention), standardize(w, convention), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: _Standardize.apply(t, convention), (w,))


@pytest.mark.parametrize("kernel,stride,size", [(1, 1, 9), (3, 1, 9), (3, 2, 8), (3, 2, 9), (1, 2, 8), (7, 2, 10)])
def test_same_padding_conv_equals_explicit_pad(kernel, stride, size):
    """The hybrid's "SAME" conv pads inside the conv when symmetric: the same output as F.pad first."""
    from vitrun.models.resnet import StdConv2d, _same_padding

    torch.manual_seed(0)
    conv = StdConv2d(4, 5, kernel, stride, tf_same=True)
    x = torch.randn(2, 4, size, size)
    ref = F.conv2d(F.pad(x, _same_padding(x.shape[-2:], kernel, stride)), conv.standardized_weight(), None, stride)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
