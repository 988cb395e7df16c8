"""§4.5 analyses on constructed models and tensors whose answers are known by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vitrun import models
from vitrun.evals import analysis


def brute_force_mean_distance(gh: int, gw: int, cell: float) -> float:
    """The grid's mean distance between patch centres over all ordered pairs (self included)."""
    centres = [(r * cell, c * cell) for r in range(gh) for c in range(gw)]
    total = sum(math.dist(a, b) for a, b in itertools.product(centres, centres))
    return total / len(centres) ** 2


def test_self_attending_heads_have_distance_zero():
    grid, prefix = (3, 4), 1
    N = prefix + 12
    attention = torch.eye(N).expand(2, 5, N, N)  # every head of every image attends to itself only
    assert torch.equal(analysis.mean_attention_distance(attention, grid, 16.0, prefix), torch.zeros(5))


def test_uniform_attention_is_the_grids_mean_pairwise_distance():
    grid, cell = (3, 4), 8.0
    N = 1 + 12
    uniform = torch.full((2, 3, N, N), 1.0 / N)  # class token included: its share is dropped, the rest renormalised
    expected = brute_force_mean_distance(*grid, cell)
    assert analysis.mean_attention_distance(uniform, grid, cell, 1) == pytest.approx(torch.full((3,), expected), rel=1e-6)


def test_one_head_looking_one_cell_right():
    """Each query reads the patch to its right (or itself on the last column): hand count."""
    gh, gw, cell = 2, 3, 10.0
    n = gh * gw
    a = torch.zeros(n, n)
    for q in range(n):
        a[q, q + 1 if q % gw < gw - 1 else q] = 1.0
    got = analysis.mean_attention_distance(a[None, None], (gh, gw), cell, 0)
    assert got.item() == pytest.approx(cell * 4 / 6)  # 4 of 6 queries move one cell


def test_constructed_model_attends_uniformly_and_matches_hand_computation():
    """Zero query/key weights make every logit 0: uniform attention in every head and layer."""
    torch.manual_seed(0)
    model = models.create("ViT-Mu/4", num_classes=3, image_size=16)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * 64].zero_()  # rows of q and k
            block.attn.qkv.bias[: 2 * 64].zero_()
    maps = analysis.attention_maps(model, torch.randn(3, 3, 16, 16))
    assert maps.shape == (4, 3, 4, 17, 17)
    torch.testing.assert_close(maps, torch.full_like(maps, 1 / 17))
    distance = torch.stack([analysis.mean_attention_distance(a, model.grid, 4.0, 1) for a in maps])
    torch.testing.assert_close(distance, torch.full((4, 4), brute_force_mean_distance(4, 4, 4.0)))
    # Recording is opt-in and switched off again afterwards: the model is back on the fused path.
    assert all(not b.attn.keep_attention and b.attn.attention is None for b in model.blocks)


def test_recorded_attention_gives_the_fused_paths_output():
    torch.manual_seed(0)
    model = models.create("ViT-Mu/4", num_classes=3, image_size=16, pos_embed="relative").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fused = model(x)
        with analysis.keeping_attention(model) as modules:
            recorded = model(x)
            assert modules[0].attention.shape == (2, 4, 17, 17)
            torch.testing.assert_close(modules[0].attention.sum(-1), torch.ones(2, 4, 17))
    torch.testing.assert_close(recorded, fused, rtol=1e-5, atol=1e-6)


def test_hand_built_position_table_similarity():
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0]])
    expected = torch.tensor([
        [1, 0, 1 / math.sqrt(2), -1],
        [0, 1, 1 / math.sqrt(2), 0],
        [1 / math.sqrt(2), 1 / math.sqrt(2), 1, -1 / math.sqrt(2)],
        [-1, 0, -1 / math.sqrt(2), 1],
    ])
    torch.testing.assert_close(analysis.cosine_similarity(table), expected)


def test_2d_position_table_of_orthonormal_axes():
    """concat(X[x], Y[y]) with orthonormal X and Y rows: cos = (same column + same row) / 2."""
    model = models.create("ViT-Mu/4", num_classes=3, image_size=12, pos_embed="2d")  # 3x3 grid, D = 64
    with torch.no_grad():
        model.pos_embed_x.copy_(torch.eye(32)[None, :3])
        model.pos_embed_y.copy_(torch.eye(32)[None, 3:6])
    sim = analysis.cosine_similarity(model.position_embeddings()[0, 1:])
    expected = torch.tensor([[((p % 3 == q % 3) + (p // 3 == q // 3)) / 2 for q in range(9)] for p in range(9)])
    torch.testing.assert_close(sim, expected)


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5).expand(3, 2, 4, 5, 5)  # (L, B, h, N, N)
    for add_identity in (True, False):
        torch.testing.assert_close(analysis.attention_rollout(eye, add_identity), torch.eye(5).expand(2, 5, 5))
    maps = analysis.rollout_map(analysis.attention_rollout(eye), (2, 2), 1, "gap")
    torch.testing.assert_close(maps, torch.full((2, 2, 2), 0.25))  # each patch keeps itself; the mean spreads evenly
    assert analysis.rollout_map(analysis.attention_rollout(eye), (2, 2), 1, "token").abs().sum() == 0


def test_rollout_adds_the_identity_and_multiplies_layers():
    N = 3
    uniform = torch.full((2, 1, 1, N, N), 1 / N)
    half = 0.5 * torch.full((N, N), 1 / N) + 0.5 * torch.eye(N)
    torch.testing.assert_close(analysis.attention_rollout(uniform)[0], half @ half)
    torch.testing.assert_close(analysis.attention_rollout(uniform, add_identity=False)[0], torch.full((N, N), 1 / N))
    shift = torch.roll(torch.eye(N), 1, dims=1)  # token i reads token i+1
    two = torch.stack([torch.eye(N), shift])[:, None, None]  # layer 1 identity, layer 2 shift
    torch.testing.assert_close(analysis.attention_rollout(two, add_identity=False)[0], shift)


def test_filters_of_a_known_embedding():
    """Filters = mean + 2a·u1 + b·u2 (a, b centred, unit variance): components u1 then u2."""
    generator = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(48, 2, generator=generator, dtype=torch.float64))[0].t()  # (2, 48) orthonormal
    u = u * torch.where(u.gather(1, u.abs().argmax(1, keepdim=True)) < 0, -1.0, 1.0)  # the sign convention
    ab = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    ab = torch.linalg.qr(ab - ab.mean(0))[0] * 8.0  # centred, orthogonal columns of equal norm
    weight = (torch.randn(48, dtype=torch.float64) + 2 * ab[:, :1] * u[0] + ab[:, 1:] * u[1]).reshape(64, 3, 4, 4)
    components, ratios = analysis.filter_components(weight, count=28)
    assert components.shape == (28, 3, 4, 4) and ratios.shape == (28,)
    torch.testing.assert_close(components[:2].reshape(2, 48).double(), u, atol=1e-6, rtol=0)
    torch.testing.assert_close(ratios[:2].double(), torch.tensor([0.8, 0.2], dtype=torch.float64), atol=1e-6, rtol=0)
    assert ratios[2:].abs().max() < 1e-9  # rank 2 after centring: the rest explain nothing
