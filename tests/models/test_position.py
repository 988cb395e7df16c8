"""Position information (App. D.4) and resolution change: every variant at tiny sizes, 32 px."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.models.reference import relative_attention, zoom_bilinear
from vitrun import models
from vitrun.models.position import relative_index, resample_relative

# Every valid (pos_embed, pos_embed_at): Table 8's grid, "every layer" only for 1d and 2d.
POSITIONS = [
    ("none", "stem"), ("relative", "stem"),
    *((kind, at) for kind in ("1d", "2d") for at in ("stem", "every-layer", "every-layer-shared")),
]
VARIANTS = [
    ("ViT-Mu/4", {"pos_embed": kind, "pos_embed_at": at, "classifier": classifier})
    for kind, at in POSITIONS for classifier in ("token", "gap")
] + [
    ("ViT-Mu/4", {"drop_path": 0.3}),
    ("ViT-Mu/4", {"drop_path": 0.3, "pos_embed": "relative", "dropout": 0.1}),
    ("R14x0.25+ViT-Mu/8", {"pos_embed": "2d"}),
    ("R14x0.25+ViT-Mu/8", {"pos_embed": "relative", "classifier": "gap"}),
]
VARIANT_IDS = ["-".join(f"{v}" for v in (name.split("/")[0].split("+")[0], *options.values())) for name, options in VARIANTS]


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _position_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p for k, p in model.named_parameters() if "pos_embed" in k or "relative_pos" in k}


# -- every variant trains ------------------------------------------------------------------

@pytest.mark.parametrize("name,options", VARIANTS, ids=VARIANT_IDS)
def test_forward_backward_every_variant(name, options):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, image_size=32, **options)
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a zero head would stop every gradient
    loss = F.cross_entropy(model(_images()), torch.tensor([1, 7]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    positions = _position_params(model)
    assert bool(positions) == (options.get("pos_embed", "1d") != "none")
    for pname, p in positions.items():
        if options.get("drop_path"):
            break  # a dropped branch rightly gives its table no gradient
        per_table = p.grad.flatten(1).abs().sum(1) if p.ndim == 3 else p.grad.abs().sum()[None]
        assert (per_table > 0).all(), f"{pname}: a table that never reaches the loss"


def test_every_layer_adds_at_each_block_input():
    """Block i sees tokens + positions: once (stem), its own table (every-layer), or the same one."""

    class Recorder(torch.nn.Module):
        def forward(self, x, relative_index=None):
            inputs.append(x.detach().clone())
            return x

    for at in ("stem", "every-layer", "every-layer-shared"):
        model = models.create("ViT-Mu/4", num_classes=10, image_size=32, pos_embed="2d", pos_embed_at=at).eval()
        model.blocks = torch.nn.Sequential(*[Recorder() for _ in range(4)])
        inputs = []
        model.forward_features(_images())
        pos = model.position_embeddings().detach()  # (L, 65, 64)
        assert pos.shape == ((4 if at == "every-layer" else 1), 65, 64)
        steps = [b - a for a, b in zip(inputs, inputs[1:])]  # what was added before blocks 1, 2, 3
        for i, step in enumerate(steps, start=1):
            expected = torch.zeros_like(pos[0]) if at == "stem" else pos[i if at == "every-layer" else 0]
            torch.testing.assert_close(step, expected.expand_as(step), atol=1e-5, rtol=0)


def test_2d_layout_concatenates_x_and_y():
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32, pos_embed="2d")
    assert model.pos_embed is None and model.pos_embed_x.shape == (1, 8, 32) and model.pos_embed_y.shape == (1, 8, 32)
    pos = model.position_embeddings()[0]  # (1 + 64, 64)
    X, Y = model.pos_embed_x[0], model.pos_embed_y[0]
    for y, x in [(0, 0), (0, 7), (3, 5), (7, 2)]:
        assert torch.equal(pos[1 + y * 8 + x], torch.cat([X[x], Y[y]]))
    assert torch.equal(pos[0], model.pos_embed_cls[0, 0]), "the class token has its own D-wide embedding"
    gap = models.create("ViT-Mu/4", num_classes=10, image_size=32, pos_embed="2d", classifier="gap")
    assert gap.pos_embed_cls is None and gap.position_embeddings().shape == (1, 64, 64)


# -- relative attention ----------------------------------------------------------------------

def test_relative_index_layout():
    index = relative_index((2, 2), 1)  # 4 patches: offsets −3…3 at rows 0…6, then buckets 7, 8, 9
    expected = torch.tensor([
        [9, 7, 7, 7, 7],
        [8, 3, 2, 1, 0],
        [8, 4, 3, 2, 1],
        [8, 5, 4, 3, 2],
        [8, 6, 5, 4, 3],
    ])
    assert torch.equal(index, expected)
    assert torch.equal(relative_index((2, 2), 0), expected[1:, 1:])


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_relative_attention_matches_the_papers_description(classifier, monkeypatch):
    torch.manual_seed(0)
    model = models.create("ViT-Mu/4", num_classes=10, image_size=12, pos_embed="relative", classifier=classifier).eval()
    attn, cls = model.blocks[0].attn, classifier == "token"
    assert attn.relative_pos.shape == (2 * 9 - 1 + 3 * cls, 16), "one table per block, head width, shared by heads"
    torch.nn.init.normal_(attn.relative_pos, std=1.0)  # large enough to matter
    x = torch.randn(2, cls + 9, 64)

    masks = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        masks.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        ours = attn(x, relative_index(model.grid, model.num_prefix_tokens))
        q, k, v = attn.qkv(x).reshape(2, cls + 9, 3, 4, 16).permute(2, 0, 3, 1, 4)
        reference = relative_attention(q, k, v, attn.relative_pos, patches=9, cls=cls)
        reference = attn.proj(reference.transpose(1, 2).reshape(2, cls + 9, 64))
    assert len(masks) == 1 and masks[0].shape == (2, 4, cls + 9, cls + 9) and masks[0].dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_absolute_variants_pass_no_mask(monkeypatch):
    masks = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, attn_mask=None, **kw: masks.append(attn_mask) or sdpa(q, k, v, **kw))
    models.create("ViT-Mu/4", num_classes=10, image_size=32, pos_embed="2d")(_images())
    assert masks == [None] * 4


def test_resample_relative():
    torch.manual_seed(0)
    table = torch.randn(2 * 16 - 1 + 3, 8)  # grid 4x4 with a class token
    assert torch.allclose(resample_relative(table, (4, 4), (4, 4), 1), table, atol=1e-6), "same grid: same table"
    big = resample_relative(table, (7, 7), (4, 4), 1)  # corners to corners: scale (7 − 1)/(4 − 1) = 2
    assert big.shape == (2 * 49 - 1 + 3, 8)
    assert torch.equal(big[-3:], table[-3:]), "class-token buckets kept"
    # A new displacement (2a, 2b) lands exactly on the old (a, b), read as 1-D offset 4a + b.
    # Checked where (2a, 2b) is the displacement most pairs with its 1-D offset 7·2a + 2b have.
    for a in range(-3, 4):
        for b in (-1, 0, 1):
            assert torch.allclose(big[7 * 2 * a + 2 * b + 48], table[4 * a + b + 15], atol=1e-5), (a, b)
    constant = torch.ones(2 * 16 - 1, 8)
    for mode in ("bilinear", "bicubic", "nearest"):
        assert torch.allclose(resample_relative(constant, (6, 3), (4, 4), 0, mode), torch.ones(2 * 18 - 1, 8), atol=1e-5)
    assert resample_relative(table, (1, 1), (4, 4), 1).shape == (1 + 3, 8)
    with pytest.raises(ValueError, match="rows"):
        resample_relative(table, (5, 5), (4, 4), 0)


# -- resolution change ------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", VARIANTS, ids=VARIANT_IDS)
def test_set_image_size_then_forward(name, options):
    model = models.create(name, num_classes=10, image_size=32, **options).eval()
    before = {k: p.detach().clone() for k, p in _position_params(model).items()}
    model.set_image_size(48, mode="bicubic" if options.get("classifier") == "gap" else "bilinear")
    assert model.image_size == 48
    assert model(_images(size=48)).shape == (2, 10)
    for key, p in _position_params(model).items():
        assert p.requires_grad and p.shape != before[key].shape or key == "pos_embed_cls"
    if "pos_embed_cls" in before:
        assert torch.equal(model.pos_embed_cls, before["pos_embed_cls"])
    if options.get("pos_embed", "1d") != "none":
        with pytest.raises(ValueError, match="set_image_size"):
            model(_images(size=32))


@pytest.mark.parametrize("at", ["stem", "every-layer"])
def test_1d_resampling_matches_2d_reference(at):
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32, pos_embed_at=at)
    old = model.pos_embed.detach().clone()  # (L, 1 + 8*8, 64)
    model.set_image_size(48)
    new = model.pos_embed.detach()  # (L, 1 + 12*12, 64)
    assert new.shape == (old.shape[0], 1 + 144, 64)
    for layer in range(old.shape[0]):
        reference = zoom_bilinear(old[layer, 1:].reshape(8, 8, 64).double().numpy(), (12, 12))
        np.testing.assert_allclose(new[layer, 1:].reshape(12, 12, 64).numpy(), reference, atol=1e-6)
        assert torch.equal(new[layer, 0], old[layer, 0]), "class-token embedding kept"


@pytest.mark.parametrize("at", ["stem", "every-layer"])
def test_2d_resampling_matches_2d_reference(at):
    """Resampling the X and Y tables equals resampling the assembled grid (bilinear is separable)."""
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32, pos_embed="2d", pos_embed_at=at)
    old = model.position_embeddings().detach().clone()  # (L, 1 + 64, 64)
    model.set_image_size(48)
    new = model.position_embeddings().detach()  # (L, 1 + 144, 64)
    assert model.pos_embed_x.shape[1] == model.pos_embed_y.shape[1] == 12
    for layer in range(old.shape[0]):
        reference = zoom_bilinear(old[layer, 1:].reshape(8, 8, 64).double().numpy(), (12, 12))
        np.testing.assert_allclose(new[layer, 1:].reshape(12, 12, 64).numpy(), reference, atol=1e-6)
        assert torch.equal(new[layer, 0], old[layer, 0])


def test_set_image_size_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        models.create("ViT-Mu/4", num_classes=10, image_size=32).set_image_size(48, mode="area")


# -- loading a checkpoint of another resolution -------------------------------------------------

@pytest.mark.parametrize("name,options", [v for v in VARIANTS if "drop_path" not in v[1]],
                         ids=[i for i, v in zip(VARIANT_IDS, VARIANTS) if "drop_path" not in v[1]])
def test_load_resampled_equals_set_image_size(name, options):
    torch.manual_seed(0)
    trained = models.create(name, num_classes=10, image_size=32, **options)
    target = models.create(name, num_classes=10, image_size=48, **options)
    keys = models.load_resampled(target, trained.state_dict())
    assert sorted(keys) == sorted(_position_params(trained).keys() - {"pos_embed_cls"})
    expected = copy.deepcopy(trained)
    expected.set_image_size(48)
    for key, value in expected.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert target(_images(size=48)).shape == (2, 10)


def test_load_resampled_errors():
    small = models.create("ViT-Mu/4", num_classes=10, image_size=32)
    with pytest.raises(ValueError, match=r"cls_token: checkpoint shape \(1, 1, 96\) does not fit the model's \(1, 1, 64\)"):
        models.load_resampled(small, models.create("ViT-Mu/4", num_classes=10, image_size=32, width=96, heads=4).state_dict())
    with pytest.raises(RuntimeError, match="pos_embed_x"):  # another kind of position: missing keys
        models.load_resampled(small, models.create("ViT-Mu/4", num_classes=10, image_size=32, pos_embed="2d").state_dict())
    state = small.state_dict()
    state["pos_embed"] = state["pos_embed"][:, :-1]  # 63 patches: no square grid
    with pytest.raises(ValueError, match="not a square grid"):
        models.load_resampled(models.create("ViT-Mu/4", num_classes=10, image_size=48), state)
    resnet = models.create("R14x0.25", num_classes=10, image_size=32)
    assert models.load_resampled(resnet, models.create("R14x0.25", num_classes=10, image_size=64).state_dict()) == []


# -- stochastic depth ------------------------------------------------------------------------------

def test_drop_path_linear_over_depth_and_identity_in_eval():
    torch.manual_seed(0)
    model = models.create("ViT-Mu/4", num_classes=10, image_size=32, drop_path=0.3)
    assert [round(b.drop_path.rate, 6) for b in model.blocks] == [0.0, 0.1, 0.2, 0.3]
    torch.nn.init.normal_(model.head.weight, std=0.1)
    plain = models.create("ViT-Mu/4", num_classes=10, image_size=32)
    plain.load_state_dict(model.state_dict())
    x = _images(8)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x)), "identity in eval"
    model.train(), plain.train()
    torch.manual_seed(1)
    assert not torch.allclose(model(x), plain(x)), "drops branches while training"
