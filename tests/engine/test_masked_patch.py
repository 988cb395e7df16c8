"""Masked patch prediction (§4.6): the corruption plan, the colour targets, the model and its loss."""

from __future__ import annotations

import math

import pytest
import torch

from vitrun import models
from vitrun.engine.masked_patch import (
    KEEP,
    MASK,
    RANDOM,
    TARGETS,
    MaskedPatchModel,
    color_classes,
    corrupt,
    corruption_plan,
    evaluate,
    objective,
    patch_targets,
    plan_for_step,
)


def _vit(image_size: int = 16, **options):
    torch.manual_seed(0)
    return models.build(models.spec("ViT-Mu/4", **options), 10, image_size)


def _images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- the corruption plan --------------------------------------------------------------------

def test_plan_statistics_on_a_large_batch():
    B, N = 4096, 196
    plan = corruption_plan(B, N, 0.5, torch.Generator().manual_seed(0))
    assert plan.shape == (B, 98, 3) and plan.dtype == torch.int64
    positions, kinds, sources = plan.unbind(-1)
    assert positions.min() >= 0 and positions.max() < N
    assert all(len(set(row)) == 98 for row in positions.tolist()), "positions are distinct per image"
    shares = torch.bincount(kinds.flatten(), minlength=3).double() / kinds.numel()
    assert shares.tolist() == pytest.approx([0.8, 0.1, 0.1], abs=0.005)
    own = torch.arange(B)[:, None] * N + positions
    assert (sources != own).all() and sources.min() >= 0 and sources.max() < B * N
    assert (sources // N != torch.arange(B)[:, None]).float().mean() > 0.99, "sources come from the whole batch"
    # Each position is picked by about half the images (binomial sd 32 around 2048).
    per_position = torch.bincount(positions.flatten(), minlength=N)
    assert (per_position - B // 2).abs().max() < 200


@pytest.mark.parametrize("N,rate,M", [(196, 0.15, 29), (16, 0.5, 8), (16, 0.01, 1), (16, 1.0, 16)])
def test_plan_size(N, rate, M):
    assert M == max(1, min(N, round(rate * N)))
    assert corruption_plan(3, N, rate, torch.Generator().manual_seed(1)).shape == (3, M, 3)


def test_plan_rejects_bad_rates():
    for rate in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            corruption_plan(2, 16, rate, torch.Generator())


def test_plan_for_step_is_a_function_of_seed_and_step():
    assert torch.equal(plan_for_step(8, 16, 0.5, seed=3, step=7), plan_for_step(8, 16, 0.5, seed=3, step=7))
    assert not torch.equal(plan_for_step(8, 16, 0.5, seed=3, step=7), plan_for_step(8, 16, 0.5, seed=3, step=8))
    assert not torch.equal(plan_for_step(8, 16, 0.5, seed=3, step=7), plan_for_step(8, 16, 0.5, seed=4, step=7))


# -- corrupting the patch embeddings --------------------------------------------------------

def test_corrupt_replaces_as_planned():
    B, N, D = 6, 16, 5
    tokens = torch.randn(B, N, D)
    mask_token = torch.randn(D, requires_grad=True)
    plan = plan_for_step(B, N, 0.5, seed=0, step=0)
    out = corrupt(tokens, plan, mask_token)
    assert out.shape == tokens.shape
    flat = tokens.reshape(B * N, D)
    kinds_seen = set()
    corrupted = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        for position, kind, source in plan[b].tolist():
            corrupted[b, position] = True
            kinds_seen.add(kind)
            expected = {MASK: mask_token, RANDOM: flat[source], KEEP: tokens[b, position]}[kind]
            assert torch.equal(out[b, position], expected)
    assert kinds_seen == {MASK, RANDOM, KEEP}, "the plan exercises every kind"
    assert torch.equal(out[~corrupted], tokens[~corrupted]), "uncorrupted patches are untouched"
    out.sum().backward()
    assert mask_token.grad is not None and mask_token.grad.abs().sum() > 0


def test_random_takes_the_uncorrupted_source():
    # Patch 1 is masked and patch 0 copies patch 1: the copy must be patch 1's original embedding.
    tokens = torch.arange(6.0).reshape(1, 3, 2)  # (B, N, D)
    plan = torch.tensor([[[1, MASK, 0], [0, RANDOM, 1]]])
    out = corrupt(tokens, plan, torch.full((2,), -1.0))
    assert out.tolist() == [[[2.0, 3.0], [-1.0, -1.0], [4.0, 5.0]]]


# -- colour targets ---------------------------------------------------------------------------

def _reference_class(r: float, g: float, b: float) -> int:
    """Independent 3-bit binning: count the bin edges -1 + k/4 (k = 1..7) at or below the value."""
    def bin_of(c: float) -> int:
        return sum(c >= -1 + k / 4 for k in range(1, 8))
    return 64 * bin_of(r) + 8 * bin_of(g) + bin_of(b)


def test_color_classes_known_colours():
    colours = torch.tensor([
        [-1.0, -1.0, -1.0],  # black
        [1.0, 1.0, 1.0],  # white: 1.0 falls in the top bin
        [1.0, -1.0, -1.0],  # red
        [-0.76, 0.1, 0.99],  # bins 0, 4, 7
        [-0.74, -0.5, 0.49],  # bins 1, 2, 5
    ])
    assert color_classes(colours).tolist() == [0, 511, 7 * 64, 4 * 8 + 7, 64 + 2 * 8 + 5]
    # Every 8-bit level in every channel. Bin edges fall at 255·k/8, between 8-bit levels, so
    # float rounding cannot move a real pixel across one.
    levels = torch.arange(256)
    rgb = torch.stack([levels, 255 - levels, (levels * 37) % 256], dim=-1) / 127.5 - 1  # (256, 3)
    assert color_classes(rgb).tolist() == [_reference_class(*c) for c in rgb.tolist()]
    assert len(set(color_classes(rgb).tolist())) > 30


def _flat_patch_images(colours: torch.Tensor, patch: int) -> torch.Tensor:
    """colours: (B, gh, gw, 3) -> (B, 3, gh·P, gw·P), every patch one flat colour (pixel by pixel)."""
    B, gh, gw, _ = colours.shape
    images = torch.empty(B, 3, gh * patch, gw * patch)
    for b in range(B):
        for y in range(gh * patch):
            for x in range(gw * patch):
                images[b, :, y, x] = colours[b, y // patch, x // patch]
    return images


def test_mean_color_targets_of_flat_patches():
    gen = torch.Generator().manual_seed(0)
    colours = torch.rand(2, 3, 2, 3, generator=gen) * 2 - 1  # (B, gh, gw, 3): 6 patches per image
    colours[0, 0, 0] = -1.0  # black
    colours[0, 0, 1] = 1.0  # white
    images = _flat_patch_images(colours, patch=4)  # (2, 3, 12, 8): grid 3 rows x 2 columns
    positions = torch.tensor([[0, 1, 5], [4, 2, 3]])
    targets = patch_targets(images, 4, positions, "mean-color")
    assert targets.dtype == torch.int64
    expected = [[_reference_class(*colours[b, p // 2, p % 2].tolist()) for p in row] for b, row in enumerate(positions.tolist())]
    assert targets.tolist() == expected
    assert targets[0, :2].tolist() == [0, 511]


def test_mean_color_averages_the_patch():
    images = torch.full((1, 3, 4, 4), -1.0)
    images[0, 0, :2] = 1.0  # red channel: half the pixels at 1, half at -1 -> mean 0 -> bin 4
    assert patch_targets(images, 4, torch.tensor([[0]]), "mean-color").tolist() == [[4 * 64]]


def test_4x4_color_cells_in_row_major_order():
    P = 8  # 2x2 pixels per cell
    cells = torch.rand(1, 4, 4, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (1, 4, 4, 3)
    patch = _flat_patch_images(cells, patch=2)  # (1, 3, 8, 8): one 8x8 patch with 16 flat cells
    images = torch.cat([torch.zeros(1, 3, 8, 8), patch], dim=3)  # patch 1 is the interesting one
    targets = patch_targets(images, P, torch.tensor([[1]]), "4x4-color")
    assert targets.shape == (1, 1, 16) and targets.dtype == torch.int64
    assert targets[0, 0].tolist() == [_reference_class(*cells[0, i // 4, i % 4].tolist()) for i in range(16)]
    assert len(set(targets[0, 0].tolist())) > 8, "cells are distinguished"


def test_4x4_color_needs_a_patch_divisible_by_4():
    with pytest.raises(ValueError, match="patch size 6"):
        patch_targets(torch.zeros(1, 3, 12, 12), 6, torch.tensor([[0]]), "4x4-color")
    with pytest.raises(ValueError, match="patch size 6"):
        MaskedPatchModel(models.build(models.spec("ViT-Mu/6"), 10, 12), "4x4-color")


def test_l2_target_is_the_patch_pixels():
    images = _images(2, size=8)
    targets = patch_targets(images, 4, torch.tensor([[3, 0], [1, 2]]), "l2-pixels")
    assert targets.shape == (2, 2, 48)
    # Patch 3 of image 0 is rows 4..7, columns 4..7; patch 1 of image 1 is rows 0..3, columns 4..7.
    assert torch.equal(targets[0, 0], images[0, :, 4:8, 4:8].flatten())
    assert torch.equal(targets[1, 0], images[1, :, 0:4, 4:8].flatten())


def test_unknown_target():
    with pytest.raises(ValueError, match="target"):
        patch_targets(torch.zeros(1, 3, 4, 4), 4, torch.tensor([[0]]), "mean-colour")


# -- the ViT hook -------------------------------------------------------------------------------

def test_vit_forward_unchanged_without_corruption():
    vit = _vit().eval()
    x = _images()
    seen = []

    def identity(tokens):
        seen.append(tokens)
        return tokens

    with torch.no_grad():
        plain = vit.forward_features(x)
        hooked = vit.forward_features(x, corrupt=identity)
        assert torch.equal(plain, hooked)
        assert torch.equal(seen[0], vit.patch_embed(x).flatten(2).transpose(1, 2)), "the hook sees the patch embeddings"
        assert seen[0].shape == (2, 16, 64)
        assert not torch.equal(plain, vit.forward_features(x, corrupt=lambda t: t.flip(1)))


# -- the model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target,tail", [("mean-color", (512,)), ("4x4-color", (16, 512)), ("l2-pixels", (48,))])
def test_forward_shapes(target, tail):
    model = MaskedPatchModel(_vit(), target)
    plan = plan_for_step(3, 16, 0.5, seed=0, step=0)
    out = model(_images(3), plan)
    assert out.shape == (3, 8) + tail
    assert torch.all(out == 0), "the head starts at zero"
    assert model.mask_token.shape == (64,) and 0.01 < model.mask_token.std() < 0.03


@pytest.mark.parametrize("options", [{}, {"class_token": False, "classifier": "gap"}, {"classifier": "gap", "fc_norm": True}],
                         ids=["token", "no-class-token", "fc-norm"])
def test_predictions_read_the_corrupted_positions(options):
    model = MaskedPatchModel(_vit(**options), "mean-color").eval()
    torch.nn.init.normal_(model.head.weight)
    x, plan = _images(2), plan_for_step(2, 16, 0.5, seed=0, step=1)
    with torch.no_grad():
        tokens = model.vit.forward_features(x, corrupt=lambda t: corrupt(t, plan, model.mask_token))
        if options.get("fc_norm"):  # the final LayerNorm sits after pooling: applied per token here
            tokens = model.vit.fc_norm(tokens)
        patches = tokens[:, model.vit.num_prefix_tokens:]  # (B, N, D): drop the class token if any
        predictions = model(x, plan)  # (B, M, 512)
        for b in range(2):
            for m, position in enumerate(plan[b, :, 0].tolist()):
                torch.testing.assert_close(predictions[b, m], model.head(patches[b, position]))


@pytest.mark.parametrize("name,family", [("R14x0.25", "resnet"), ("R14x0.25+ViT-Mu/8", "hybrid")])
def test_only_plain_vits(name, family):
    model = models.build(models.spec(name), 10, 32)
    with pytest.raises(ValueError, match=f"needs a ViT; .* is a {family} model"):
        MaskedPatchModel(model)


def _palette_batch(step: int, palette: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Images of one flat colour from the palette: a masked patch's colour is its neighbours'."""
    gen = torch.Generator().manual_seed(1000 + step)
    colours = palette[torch.randint(0, len(palette), (batch,), generator=gen)]  # (B, 3)
    return colours[:, :, None, None].expand(batch, 3, 16, 16).contiguous()  # (B, 3, 16, 16)


def test_objective_learns_from_the_neighbours():
    model = MaskedPatchModel(_vit(), "mean-color")
    palette = torch.rand(8, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss = objective(model, _palette_batch(step, palette), plan_for_step(32, 16, 0.5, seed=0, step=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(512)), "a zero head predicts uniformly"
    # Knowing only the palette gives log 8 ≈ 2.08; reading the visible patches does far better.
    assert losses[-1] < 1.0
    held_out = [(_palette_batch(100 + i, palette), None) for i in range(2)]
    metrics = evaluate(model, held_out, rate=0.5)
    assert not model.training
    assert metrics["masked_patch_loss"] < 1.0 and metrics["masked_patch_accuracy"] > 0.5


def test_objective_and_evaluate_see_through_a_compile_wrapper():
    class Compiled(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, images, plan):
            return self._orig_mod(images, plan)

    model = MaskedPatchModel(_vit(), "l2-pixels")
    x, plan = _images(2), plan_for_step(2, 16, 0.5, seed=0, step=0)
    assert objective(Compiled(model), x, plan).item() == pytest.approx(objective(model, x, plan).item())
    assert evaluate(Compiled(model), [(x, None)], rate=0.5) == evaluate(model, [(x, None)], rate=0.5)


@pytest.mark.parametrize("target", TARGETS)
def test_evaluate(target):
    model = MaskedPatchModel(_vit(), target)
    batches = [(_images(4, seed=i), torch.zeros(4)) for i in range(2)]
    metrics = evaluate(model, batches, rate=0.5)
    assert set(metrics) == {"masked_patch_loss", "masked_patch_accuracy"}
    if target == "l2-pixels":
        assert metrics["masked_patch_accuracy"] is None
        plans = [plan_for_step(4, 16, 0.5, 0, i) for i in range(2)]
        expected = torch.cat([patch_targets(x, 4, plan[..., 0], target) for (x, _), plan in zip(batches, plans)])
        assert metrics["masked_patch_loss"] == pytest.approx(expected.pow(2).mean().item(), rel=1e-5), "zero predictions"
    else:
        assert 0 <= metrics["masked_patch_accuracy"] <= 1
        assert metrics["masked_patch_loss"] == pytest.approx(math.log(512), rel=1e-5)
    # The objective on one batch is the mean that evaluate reports over it.
    first = objective(model, batches[0][0], plan_for_step(4, 16, 0.5, 0, 0)).item()
    assert evaluate(model, batches[:1], rate=0.5)["masked_patch_loss"] == pytest.approx(first, rel=1e-5)


def test_slices_with_their_sources_give_the_whole_batch_gradient():
    """Data parallel / accumulated masked-patch training: each slice carries the pixels of the
    RANDOM sources it takes from other slices, and the slices' weighted losses add up to the
    whole batch's loss and gradient."""
    from vitrun.engine.masked_patch import MaskedPatchModel, objective, plan_for_step, slice_with_sources

    model = MaskedPatchModel(_vit())
    with torch.no_grad():
        model.head.weight.normal_(std=0.02)  # zero-initialised: give the trunk a gradient too
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    plan = plan_for_step(8, model.vit.grid[0] * model.vit.grid[1], 0.5, seed=0, step=3)
    assert (plan[..., 2] // (model.vit.grid[0] * model.vit.grid[1]) != torch.arange(8)[:, None]).any()  # some sources cross images
    whole = objective(model, x, plan)
    whole.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0.0
    for a, b in ((0, 4), (4, 8)):
        images, labels = slice_with_sources(x, plan, model.patch, a, b)
        loss = objective(model, images, labels) * 0.5
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(whole.item(), abs=1e-5)
    for name, grad in expected.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-5), name
