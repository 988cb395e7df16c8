"""Inside the model (arXiv 2010.11929, §4.5, Figures 6 and 7; Appendix D.7-D.8): pure functions.

* `filter_components`: principal components of the patch-embedding filters (Figure 7 left).
* `cosine_similarity`: of each patch's position embedding with every other (Figure 7 centre).
* `attention_maps` + `mean_attention_distance`: how far each head looks, in pixels (Figure 7 right).
* `attention_rollout` + `rollout_map`: where the output looks in the input (Figure 6).

Conventions where the paper is silent (neither google-research/vision_transformer nor big_vision
ships these analyses; the paper's text is the reference):

* Attention distance: for query patch q, Σ_k a[q, k] · ‖c_q − c_k‖ over key patches k, c the
  patch centres in pixels (one grid cell = image_size / grid side pixels, so a hybrid's cell is
  its stride); averaged over query patches, then over images. The class token is neither a
  query nor a key (it has no place in the image): its column is dropped and each query's
  weights on the patches are renormalised to sum to 1, so the value is the expected distance
  of what the query reads from the image. A query attending only to itself gives 0; uniform
  attention gives the grid's mean pairwise distance.
* Rollout (Abnar & Zuidema 2020): per layer the heads are averaged, the identity is added for
  the residual connection (A + I) and rows renormalised (i.e. ½A + ½I), and the layers are
  multiplied, last layer on the left. The map of a class-token model is the class token's
  row over the patches; of a GAP model the mean of the patch tokens' rows (what the pooled
  representation averages).
* Filter PCA: the D filters (each 3·P·P values) are centred on their mean and decomposed by
  SVD; a component's sign is fixed so that its largest-magnitude entry is positive.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


# -- Figure 7 left: patch-embedding filters ----------------------------------------------------

def filter_components(weight: torch.Tensor, count: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-embedding filters.

    weight: (D, C, P, P), the patch embedding's conv kernel -> (components (k, C, P, P), each of
    unit norm, and their explained-variance ratios (k,)), k = min(count, D, C·P·P), largest first.
    """
    D = weight.shape[0]
    flat = weight.detach().double().reshape(D, -1)  # (D, C·P·P): one row per filter
    centred = flat - flat.mean(dim=0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(D, CPP), CPP)
    k = min(count, vh.shape[0])
    components = vh[:k]
    peak = components.gather(1, components.abs().argmax(dim=1, keepdim=True))  # (k, 1)
    components = components * torch.where(peak < 0, -1.0, 1.0)  # largest entry positive
    variance = singular**2
    ratio = variance[:k] / variance.sum().clamp_min(1e-300)
    return components.reshape(k, *weight.shape[1:]).float(), ratio.float()


# -- Figure 7 centre: position-embedding similarity ----------------------------------------------

def cosine_similarity(table: torch.Tensor) -> torch.Tensor:
    """table: (n, D) embeddings, one row per patch -> (n, n) cosine similarities."""
    unit = torch.nn.functional.normalize(table.detach().double(), dim=-1)
    return (unit @ unit.t()).float()


# -- Figure 7 right: attention distance ----------------------------------------------------------

def patch_distances(grid: tuple[int, int], cell_pixels: float) -> torch.Tensor:
    """Euclidean distances in pixels between patch centres, row-major: (gh·gw, gh·gw)."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double() * cell_pixels  # (n, 2)
    return torch.cdist(centres, centres).float()


def mean_attention_distance(attention: torch.Tensor, grid: tuple[int, int], cell_pixels: float, num_prefix_tokens: int) -> torch.Tensor:
    """Mean attention distance in pixels per head (see the module's conventions).

    attention: (B, h, N, N) probabilities of one layer, N = prefix + gh·gw -> (h,), averaged
    over the B images and the gh·gw query patches.
    """
    p = num_prefix_tokens
    patches = attention[:, :, p:, p:].double()  # (B, h, n, n): patch queries, patch keys
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # renormalised without the class token
    distance = patch_distances(grid, cell_pixels).double().to(attention.device)  # (n, n)
    per_query = (patches * distance).sum(dim=-1)  # (B, h, n)
    return per_query.mean(dim=(0, 2)).float()


# -- Figure 6: attention rollout -----------------------------------------------------------------

def attention_rollout(attention: torch.Tensor, add_identity: bool = True) -> torch.Tensor:
    """Abnar & Zuidema's rollout: attention (L, B, h, N, N), layers first to last -> (B, N, N).

    Row i of the result: how much token i at the output draws on each input token.
    """
    mixed = attention.double().mean(dim=2)  # (L, B, N, N): heads averaged
    if add_identity:
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
    mixed = mixed / mixed.sum(dim=-1, keepdim=True)
    rollout = mixed[0]
    for layer in mixed[1:]:
        rollout = layer @ rollout  # (B, N, N): a later layer reads the earlier layers' mixture
    return rollout.float()


def rollout_map(rollout: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int, classifier: str) -> torch.Tensor:
    """What the classifier's input draws from each patch: rollout (B, N, N) -> (B, gh, gw).

    classifier "token": the class token's row; "gap": the mean of the patch tokens' rows.
    """
    p = num_prefix_tokens
    if classifier == "token":
        row = rollout[:, 0, p:]  # (B, n)
    else:
        row = rollout[:, p:, p:].mean(dim=1)  # (B, n)
    return row.reshape(-1, *grid)


# -- recording attention -------------------------------------------------------------------------

@contextlib.contextmanager
def keeping_attention(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, every attention module of `model` keeps its probabilities (vit.Attention)."""
    from vitrun.models.vit import Attention

    modules = [m for m in model.modules() if isinstance(m, Attention)]
    for m in modules:
        m.keep_attention = True
    try:
        yield modules
    finally:
        for m in modules:
            m.keep_attention, m.attention = False, None


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Every layer's attention probabilities: images (B, 3, H, W) -> (L, B, h, N, N)."""
    model.eval()
    with keeping_attention(model) as modules:
        if not modules:
            raise ValueError(f"{model.spec.name} has no self-attention (a ResNet)")
        model.forward_features(images)
        return torch.stack([m.attention.float() for m in modules])
