"""Tests for vitrun.interop: timm modules and official .npz checkpoints in and out, recipe inits.

Equivalence is checked on logits (fp32, eval mode, max |diff| ≤ 1e-4) with every weight drawn at
random (timm and vitrun heads start at zero, which would make any two models "agree"), at two
resolutions. timm is the oracle: its own modules, and its own `.npz` loaders for `to_npz`.
"""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from vitrun import interop, models
from vitrun.interop import specs

timm = pytest.importorskip("timm")
from timm.layers import HybridEmbed, StdConv2d, StdConv2dSame  # noqa: E402
from timm.models import resnetv2 as timm_resnetv2  # noqa: E402
from timm.models import vision_transformer as timm_vit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
SIZES = (32, 48)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is as fast, and does not stall when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1


def _randomise(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)
    return model.eval()


def _logits(model: torch.nn.Module, size: int) -> torch.Tensor:
    with torch.no_grad():
        y = model(_images(size))
    assert y.abs().max() > 0.05, "logits near zero would hide a wrong conversion"
    return y


def _max_diff(model: torch.nn.Module, expected: torch.Tensor, size: int) -> float:
    """max |model's logits - expected| on the test images of `size` px."""
    y = _logits(model, size)
    assert y.shape == expected.shape
    return (y - expected).abs().max().item()


# timm modules, built directly: tiny members of each family.
def _timm_vit(size: int, **kw) -> torch.nn.Module:
    return timm_vit.VisionTransformer(**{"img_size": size, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10, **kw})


def _timm_bit(eps: float = 1e-8) -> torch.nn.Module:
    # 3 stages at width 0.5: every GroupNorm has 32 groups, as timm requires.
    return timm_resnetv2.ResNetV2(layers=(1, 1, 1), width_factor=0.5, num_classes=10, stem_type="fixed",
                                  conv_layer=partial(StdConv2d, eps=eps))


def _timm_hybrid(size: int) -> torch.nn.Module:
    backbone = timm_resnetv2.ResNetV2(layers=(1, 2), width_factor=0.5, num_classes=0, global_pool="", preact=False,
                                      stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8))
    return timm_vit.VisionTransformer(img_size=size, patch_size=1, embed_dim=64, depth=2, num_heads=4, num_classes=10,
                                      embed_layer=partial(HybridEmbed, backbone=backbone))


# -- timm → vitrun → timm ----------------------------------------------------------------------

VIT_VARIANTS = {
    "token": {},
    "gap-fc_norm": {"class_token": False, "global_pool": "avg", "fc_norm": True},
    "gap-norm": {"class_token": False, "global_pool": "avg", "fc_norm": False},
    # timm's global_pool="avg" on a model that keeps its class token: the patches are averaged
    "gap-with-class-token": {"global_pool": "avg"},
}


@pytest.mark.parametrize("variant", VIT_VARIANTS)
def test_vit_from_timm_and_back(variant):
    for size in SIZES:
        reference = _randomise(_timm_vit(size, **VIT_VARIANTS[variant]))
        ours = interop.from_timm(reference)
        kw = VIT_VARIANTS[variant]
        assert ours.spec == models.spec("ViT-Mu/4", depth=2, pre_logits=False, classifier="token" if variant == "token" else "gap",
                                        fc_norm=kw.get("fc_norm", kw.get("global_pool") == "avg"), class_token=kw.get("class_token", True))
        assert not ours.training and ours.image_size == size
        expected = _logits(reference, size)
        assert _max_diff(ours, expected, size) <= TOL
        back = interop.to_timm(ours)
        assert type(back) is timm_vit.VisionTransformer
        assert _max_diff(back, expected, size) <= TOL
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in back.state_dict().items())


def test_vit_from_registered_timm_model_gets_the_paper_name():
    reference = _randomise(timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=7))
    ours = interop.from_timm(reference)
    assert ours.spec.name == "ViT-Ti/16" and ours.num_classes == 7
    assert _max_diff(ours, _logits(reference, 32), 32) <= TOL


def test_bit_from_timm_and_back():
    reference = _randomise(_timm_bit())
    ours = interop.from_timm(reference)
    assert ours.spec == models.spec("R50x0.5", blocks=(1, 1, 1), eps_convention="timm")
    back = interop.to_timm(ours)
    for size in SIZES:
        expected = _logits(reference, size)
        assert _max_diff(ours, expected, size) <= TOL
        assert _max_diff(back, expected, size) <= TOL


def test_hybrid_from_timm_and_back():
    for size in SIZES:
        reference = _randomise(_timm_hybrid(size))
        ours = interop.from_timm(reference)
        assert ours.spec == models.spec("R50x0.5+ViT-Mu/8", blocks=(1, 2), depth=2, pre_logits=False, eps_convention="timm")
        expected = _logits(reference, size)
        assert _max_diff(ours, expected, size) <= TOL
        assert _max_diff(interop.to_timm(ours), expected, size) <= TOL


@pytest.mark.parametrize("name,options", [
    ("R50x0.5", {"blocks": (1, 1, 1)}),
    ("R50x0.5+ViT-Mu/8", {"blocks": (1, 2), "depth": 2, "pre_logits": False}),
], ids=["bit", "hybrid"])
def test_official_numerics_survive_to_timm_and_back(name, options):
    """An "official" model becomes a timm module with official standardisation, and returns."""
    for size in SIZES:
        ours = _randomise(models.create(name, num_classes=10, image_size=size, **options))
        assert ours.spec.eps_convention == "official"
        expected = _logits(ours, size)
        exported = interop.to_timm(ours)
        assert _max_diff(exported, expected, size) <= TOL
        back = interop.from_timm(exported)
        assert back.spec == ours.spec
        assert _max_diff(back, expected, size) <= TOL


@pytest.mark.parametrize("make,name,options", [
    (_timm_bit, "R50x0.5", {"blocks": (1, 1, 1)}),
    (lambda: _timm_hybrid(32), "R50x0.5+ViT-Mu/8", {"blocks": (1, 2), "depth": 2, "pre_logits": False}),
], ids=["bit", "hybrid"])
def test_eps_convention_is_what_makes_timm_match(make, name, options):
    """The two conventions really differ once kernels have unequal scales, as trained ones do."""
    reference = _randomise(make())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():
            if p.ndim == 4:  # conv kernels
                p.mul_(torch.empty(p.shape[0], 1, 1, 1).uniform_(-7, -2.3, generator=g).exp() / 0.2)  # std 1e-3..1e-1 per filter
    ours = interop.from_timm(reference)
    official = models.build(models.spec(name, **options), 10, 32).eval()
    official.load_state_dict(ours.state_dict())
    expected = _logits(reference, 32)
    assert _max_diff(ours, expected, 32) <= 1e-5
    assert _max_diff(official, expected, 32) > TOL, "official numerics would break the tolerance"
    with pytest.raises(ValueError, match="eps_convention"):
        models.spec("R50x1", eps_convention="jax")


def test_timm_without_head_gives_features():
    reference = _randomise(_timm_vit(32, num_classes=0))
    ours = interop.from_timm(reference)
    assert ours.num_classes == 0
    x = _images(32)
    with torch.no_grad():
        assert ours(x).shape == (2, 64)
        assert torch.allclose(ours(x), reference(x), atol=TOL)
    assert interop.to_timm(ours).num_classes == 0
    ours.reset_head(3)
    assert ours(x).shape == (2, 3)


@pytest.mark.parametrize("kwargs,feature", [
    ({"init_values": 1e-5}, "layer scale"),
    ({"reg_tokens": 2}, "register tokens"),
    ({"qk_norm": True}, "qk_norm"),
    ({"global_pool": "map"}, "global_pool='map'"),
    ({"pre_norm": True}, "pre_norm"),
    ({"dynamic_img_size": True}, "dynamic_img_size"),
    ({"qkv_bias": False}, "qkv_bias=False"),
    ({"no_embed_class": True}, "no_embed_class"),
    ({"act_layer": "gelu_tanh"}, "exact GELU"),
    ({"norm_layer": partial(torch.nn.LayerNorm, eps=1e-5)}, "eps 1e-05"),
])
def test_from_timm_names_unsupported_features(kwargs, feature):
    with pytest.raises(ValueError, match="from_timm: .*has no vitrun equivalent") as err:
        interop.from_timm(_timm_vit(32, **kwargs))
    assert feature in str(err.value)


def test_from_timm_refuses_other_resnets():
    with pytest.raises(ValueError, match=r"weight-standardisation eps \[1e-06\]"):
        interop.from_timm(_timm_bit(eps=1e-6))  # timm's StdConv2d default, not its BiT models'
    plain_stem = timm_resnetv2.ResNetV2(layers=(1,), width_factor=0.5, conv_layer=partial(StdConv2d, eps=1e-8))
    with pytest.raises(ValueError, match="stem"):
        interop.from_timm(plain_stem)
    with pytest.raises(ValueError, match="timm model class"):
        interop.from_timm(torch.nn.Linear(2, 2))


def test_to_timm_says_what_to_do():
    ours = models.create("ViT-Mu/4", num_classes=10, image_size=32)  # pre_logits=True: the paper's pre-training head
    with pytest.raises(ValueError, match=r"pre-logits.*reset_head"):
        interop.to_timm(ours)
    ours.reset_head(10)
    assert type(interop.to_timm(ours)) is timm_vit.VisionTransformer
    with pytest.raises(ValueError, match="32 groups"):
        interop.to_timm(models.create("R14x0.25", num_classes=10, image_size=32))


def test_spec_names():
    vit = {"width": 768, "depth": 12, "heads": 12, "mlp": 3072, "patch": 16}
    assert specs.vit_spec(vit, {}).name == "ViT-B/16"
    odd = specs.vit_spec({**vit, "depth": 6}, {})
    assert odd.name == "ViT-B/16" and odd.depth == 6
    assert specs.resnet_spec((3, 4, 6, 3), 1.0, {}).name == "R50x1"
    assert specs.resnet_spec((3, 8, 36, 3), 2.0, {}).name == "R152x2"
    assert specs.hybrid_spec((3, 4, 9), 1.0, {**vit, "patch": 1}, {}) == models.spec("R50+ViT-B/16")
    assert specs.hybrid_spec((3, 4, 6, 3), 1.0, {**vit, "patch": 1}, {}).name == "R50+ViT-B/32"
    assert specs.differences(models.spec("ViT-B/16"), models.spec("ViT-B/16", pre_logits=False, dropout=0.1, drop_path=0.1)) == []
    assert specs.differences(models.spec("ViT-B/16"), models.spec("ViT-S/16")) == ["width 768 ≠ 384", "heads 12 ≠ 6", "mlp 3072 ≠ 1536"]


# -- official .npz checkpoints -------------------------------------------------------------------

NPZ_MODELS = {
    "vit-token": ("ViT-Mu/4", {"depth": 2, "pre_logits": False}),
    "vit-gap": ("ViT-Mu/4", {"depth": 2, "pre_logits": False, "classifier": "gap"}),
    "bit": ("R50x0.5", {"blocks": (1, 1, 1), "eps_convention": "timm"}),
    "hybrid": ("R50x0.5+ViT-Mu/8", {"blocks": (1, 2), "depth": 2, "pre_logits": False, "eps_convention": "timm"}),
}


@pytest.mark.parametrize("key", NPZ_MODELS)
def test_to_npz_read_by_timm_and_back(key, tmp_path):
    name, options = NPZ_MODELS[key]
    path = tmp_path / "model.npz"
    ours = _randomise(models.create(name, num_classes=10, image_size=32, **options))
    expected = _logits(ours, 32)
    interop.to_npz(ours, path)
    # timm's own loader is the oracle for the layout.
    reference = interop.to_timm(ours)
    for p in reference.parameters():
        torch.nn.init.zeros_(p)
    loader = timm_resnetv2._load_weights if ours.spec.family == "resnet" else timm_vit._load_weights
    loader(reference, str(path))
    assert _max_diff(reference, expected, 32) <= TOL
    back = interop.from_npz(path, spec=ours.spec)
    assert back.spec == ours.spec and back.num_classes == 10
    assert _max_diff(back.eval(), expected, 32) <= TOL
    inferred = interop.from_npz(path)  # the architecture from the arrays alone
    assert specs.differences(inferred.spec, ours.spec) == []
    assert inferred.spec.eps_convention in (None, "official"), "an official checkpoint: official numerics"
    assert ours.spec.family == "resnet" or inferred.image_size == 32


def test_npz_pre_logits_round_trip_and_resolution(tmp_path):
    ours = _randomise(models.create("ViT-Mu/4", num_classes=10, image_size=32, depth=2))
    path = tmp_path / "ViT-Mu_4.npz"
    interop.to_npz(ours, path)
    with np.load(path) as npz:
        assert npz["pre_logits/kernel"].shape == (64, 64)
        assert npz["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape == (64, 4, 16)
        assert npz["Transformer/posembed_input/pos_embedding"].shape == (1, 1 + 64, 64)
    back = interop.from_npz(path)
    assert back.spec == ours.spec
    assert _max_diff(back.eval(), _logits(ours, 32), 32) <= TOL
    # A checkpoint of one grid loaded at another resolution: the official 2-D resampling.
    at48 = interop.from_npz(path, image_size=48).eval()
    ours.set_image_size(48)
    assert torch.equal(at48.pos_embed, ours.pos_embed)
    assert _max_diff(at48, _logits(ours, 48), 48) <= TOL


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_npz_big_vision_layout(classifier, tmp_path):
    """big_vision: `params/` prefix, other module indices, scanned blocks, pos_embedding without cls."""
    ours = _randomise(models.create("ViT-Mu/4", num_classes=10, image_size=32, depth=2, pre_logits=False, classifier=classifier))
    if classifier == "token":
        with torch.no_grad():
            ours.pos_embed[:, 0] = 0  # big_vision gives the class token no position
    expected = _logits(ours, 32)
    interop.to_npz(ours, tmp_path / "vit_jax.npz")
    with np.load(tmp_path / "vit_jax.npz") as npz:
        arrays = dict(npz)
    renamed = {}
    for key, value in arrays.items():
        if key == "Transformer/posembed_input/pos_embedding":
            renamed["params/pos_embedding"] = value[:, 1:] if classifier == "token" else value
        elif key.startswith("Transformer/encoderblock_"):
            rest = key.split("/", 2)[2]
            rest = (rest.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
                        .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"))
            renamed.setdefault(f"params/Transformer/encoderblock/{rest}", []).append(value)
        else:
            renamed[f"params/{key}"] = value
    path = tmp_path / "big_vision.npz"
    np.savez(path, **{k: np.stack(v) if isinstance(v, list) else v for k, v in renamed.items()})
    back = interop.from_npz(path).eval()
    assert back.spec == ours.spec
    assert _max_diff(back, expected, 32) <= TOL
    if classifier == "gap":  # timm reads a big_vision class-token model only with no_embed_class
        reference = interop.to_timm(ours)
        timm_vit._load_weights(reference, str(path))
        assert _max_diff(reference, expected, 32) <= TOL


def test_npz_errors(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        interop.from_npz(missing)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not an official"):
        interop.from_npz(tmp_path / "other.npz")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable"):
        interop.from_npz(tmp_path / "pickled.npy")  # allow_pickle=False: never unpickled
    gap = models.create("ViT-Mu/4", num_classes=10, image_size=32, classifier="gap", fc_norm=True)
    with pytest.raises(ValueError, match="fc_norm"):
        interop.to_npz(gap, tmp_path / "gap.npz")
    ours = models.create("ViT-Mu/4", num_classes=10, image_size=32, depth=2)
    interop.to_npz(ours, tmp_path / "vit.npz")
    with pytest.raises(ValueError, match="depth 2 ≠ 4"):
        interop.from_npz(tmp_path / "vit.npz", spec=models.spec("ViT-Mu/4"))
    # No position embedding: the arrays cannot tell "none" from a fixed sincos one; the spec can.
    plain = _randomise(models.create("ViT-Mu/4", num_classes=10, image_size=32, depth=1, classifier="gap", pos_embed="none"))
    interop.to_npz(plain, tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="no position embedding"):
        interop.from_npz(tmp_path / "plain.npz")
    assert _max_diff(interop.from_npz(tmp_path / "plain.npz", spec=plain.spec).eval(), _logits(plain, 32), 32) <= TOL


# -- recipe inits ----------------------------------------------------------------------------------

def test_check_init(tmp_path):
    ours = models.create("ViT-Mu/4", num_classes=10, image_size=32, depth=1)
    interop.to_npz(ours, tmp_path / "ok.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    interop.check_init(f"npz:{tmp_path / 'ok.npz'}")
    interop.check_init("timm:vit_base_patch16_224.augreg_in21k")
    for init, message in [
        ("vit_base_patch16_224", "expected 'timm:NAME'"),
        ("hub:vit", "expected 'timm:NAME'"),
        ("timm:", "not a timm model name"),
        ("timm:vit base", "not a timm model name"),
        (f"npz:{tmp_path / 'missing.npz'}", "no checkpoint file at"),
        (f"npz:{tmp_path / 'text.npz'}", "not an .npz archive"),
        (f"npz:{tmp_path / 'other.npz'}", "no official ViT, hybrid or BiT layout"),
        (3, "must be a string"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            interop.check_init(init)
        assert "\n" not in str(err.value)


def test_interop_and_check_init_import_neither_torch_nor_timm(tmp_path):
    code = (
        "import sys, vitrun.interop as i; i.check_init('timm:vit_base_patch16_224'); "
        "bad = [m for m in ('torch', 'timm') if m in sys.modules]; assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_timm_the_error_says_pip_install_timm(monkeypatch):
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "vitrun.interop.timm_models", raising=False)
    with pytest.raises(ImportError, match="pip install timm"):
        interop.to_timm(models.create("ViT-Mu/4", num_classes=10, image_size=32, depth=1, pre_logits=False))
    with pytest.raises(ValueError, match=r"timm is not installed \(pip install timm\), or use npz:PATH"):
        interop.check_init("timm:vit_base_patch16_224.augreg_in21k")


def test_load_init_npz_adapts_like_official_fine_tuning(tmp_path):
    source = _randomise(models.create("ViT-Mu/4", num_classes=10, image_size=32, depth=2))  # with pre-logits
    interop.to_npz(source, tmp_path / "ckpt.npz")
    spec = models.spec("ViT-Mu/4", depth=2, pre_logits=False, dropout=0.1)
    model = interop.load_init(f"npz:{tmp_path / 'ckpt.npz'}", spec, num_classes=5, image_size=48)
    assert model.spec == spec and model.num_classes == 5 and model.image_size == 48
    assert torch.all(model.head.weight == 0) and torch.all(model.head.bias == 0), "a new zero head"
    assert isinstance(model.pre_logits, torch.nn.Identity)
    assert torch.equal(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    source.set_image_size(48)
    assert torch.equal(model.pos_embed, source.pos_embed)

    with pytest.raises(ValueError) as err:
        interop.load_init(f"npz:{tmp_path / 'ckpt.npz'}", models.spec("ViT-Mu/4", classifier="gap"), 5, 32)
    assert "not the recipe's ViT-Mu/4: depth 2 ≠ 4, classifier token ≠ gap" in str(err.value)
    with pytest.raises(ValueError, match=r"no checkpoint file at .*gone\.npz$"):
        interop.load_init(f"npz:{tmp_path / 'gone.npz'}", spec, 5, 32)


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """The hub's cache, pointed at an empty folder (as on a machine that never downloaded)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return constants


def test_load_init_timm_offline_mode_is_one_line(empty_hub_cache, monkeypatch):
    # What HF_HUB_OFFLINE=1 sets when the hub is imported (the env is read once, at import).
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as err:
        interop.load_init("timm:test_vit.r160_in1k", models.spec("ViT-Ti/16"), 10, 224)
    assert str(err.value) == ("timm:test_vit.r160_in1k: cannot download the weights here (HF_HUB_OFFLINE is set); "
                              "set HF_HOME to a cache that has them or use npz:PATH")


def test_load_init_timm_unreachable_hub_fails_fast(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(empty_hub_cache, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: as without network
    with pytest.raises(ValueError) as err:
        interop.load_init("timm:test_vit.r160_in1k", models.spec("ViT-Ti/16"), 10, 224)
    assert str(err.value) == ("timm:test_vit.r160_in1k: cannot download the weights here (no network); "
                              "set HF_HOME to a cache that has them or use npz:PATH")
    assert empty_hub_cache.HF_HUB_OFFLINE is False, "the hub's offline switch is restored"
    with pytest.raises(ValueError, match=r"timm has no model 'vit_tiny_patch16_2244' \(did you mean 'vit_tiny_patch16_224'\?\)"):
        interop.load_init("timm:vit_tiny_patch16_2244", models.spec("ViT-Ti/16"), 10, 224)
    with pytest.raises(ValueError, match=r"timm cannot load it: Invalid pretrained tag \(nope\)"):
        interop.load_init("timm:test_vit.nope", models.spec("ViT-Ti/16"), 10, 224)


def test_load_init_timm_from_the_cache_without_network(empty_hub_cache, monkeypatch):
    """"set HF_HOME to a cache that has them": cached weights load at once, no hub retries."""
    import json

    from safetensors.torch import save_file

    monkeypatch.setattr(empty_hub_cache, "ENDPOINT", "http://127.0.0.1:9")
    repo = Path(empty_hub_cache.HF_HUB_CACHE) / "models--vitrun--tiny-vit"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    args = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4}
    (snapshot / "config.json").write_text(json.dumps(
        {"architecture": "vit_tiny_patch16_224", "num_classes": 10, "model_args": args, "pretrained_cfg": {}}))
    source = _randomise(timm.create_model("vit_tiny_patch16_224", num_classes=10, **args))
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))

    model = interop.load_init("timm:hf-hub:vitrun/tiny-vit", models.spec("ViT-Mu/4", depth=2, pre_logits=False), 5, 48)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert model.grid == (12, 12) and model.num_classes == 5
    with pytest.raises(ValueError, match=r"not the recipe's ViT-Mu/4: depth 2 ≠ 4$"):
        interop.load_init("timm:hf-hub:vitrun/tiny-vit", models.spec("ViT-Mu/4", pre_logits=False), 5, 48)


@pytest.mark.slow
def test_load_init_timm_offline_from_the_environment(tmp_path):
    """End to end in a fresh process: HF_HUB_OFFLINE=1 and an empty HF_HOME, as a user would set them."""
    import os

    code = (
        "from vitrun import interop, models\n"
        "try:\n"
        "    interop.load_init('timm:vit_tiny_patch16_224.augreg_in21k', models.spec('ViT-Ti/16'), 10, 224)\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "timm:vit_tiny_patch16_224.augreg_in21k: cannot download the weights here (HF_HUB_OFFLINE is set); "
        "set HF_HOME to a cache that has them or use npz:PATH"
    )
