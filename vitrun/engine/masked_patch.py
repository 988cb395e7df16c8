"""Masked patch prediction: self-supervised pre-training (arXiv 2010.11929, §4.6, App. B.1.2).

Half of the patch embeddings are corrupted; of those, 80% become a learnable [mask]
embedding, 10% another patch's embedding and 10% stay as they are (BERT's recipe). The model
predicts, from each corrupted patch's output token, the patch's 3-bit mean colour: 3 bits per
channel, 512 classes. The paper also tried (options here) a 4x4 downsized patch in 3-bit
colours (16 cells, 512 classes each) and L2 regression on the full patch pixels.

    plan = plan_for_step(batch, num_patches, rate, seed, step)  # (B, M, 3): where, how, from where
    loss = objective(MaskedPatchModel(vit, "mean-color"), images, plan)

Choices the paper leaves open:
* Exactly M = round(rate · N) patches are corrupted per image (at least 1, at most N), drawn
  uniformly without replacement (argsort of uniform noise, as MAE's `random_masking`), so
  every image has the same M and the tensors stay regular. Each corrupted patch independently
  gets a kind: [mask] (p 0.8), a random other patch (p 0.1) or unchanged (p 0.1).
* The random other patch is drawn uniformly from the whole batch (any image, any position),
  never the patch itself, and its embedding is taken before any corruption.
* Corruption acts on the patch embeddings (after the linear projection), before the class
  token is prepended and positions are added, as BERT corrupts tokens before adding positions.
* Targets come from the input pixels in [-1, 1] of the same P×P patch the model embeds: a
  colour c maps to the bin clamp(floor((c + 1) / 2 · 8), 0, 7), and the class is r·64 + g·8 + b.
  "4x4-color" average-pools the patch to 4x4 cells (row-major), so P must be divisible by 4.
  "l2-pixels" regresses the raw patch pixels, flattened as (3, P, P).
* Predictions are a zero-initialised linear head on the output token (after the final
  LayerNorm) at each corrupted position; the [mask] embedding starts as normal(0.02), like the
  position embeddings. Loss: mean cross-entropy over the corrupted patches (and 4x4 cells);
  mean squared error over the pixels for "l2-pixels".
* Plain ViTs only: a ResNet has no patch tokens, and a hybrid's tokens see neighbouring
  pixels through the CNN stem, so its "corrupted" patch would leak into its neighbours.

Determinism: a plan is a pure function of (seed, step) drawn on the CPU, so a resumed run
corrupts exactly as the uninterrupted one.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vitrun.engine.device import to_device
from vitrun.models.vit import VisionTransformer, zero_linear

__all__ = [
    "TARGETS", "REPLACE_PROBS", "COLOR_BITS", "MASK", "RANDOM", "KEEP",
    "corruption_plan", "plan_for_step", "corrupt", "slice_with_sources", "patchify", "color_classes", "patch_targets",
    "MaskedPatchModel", "objective", "evaluate",
]

TARGETS = ("mean-color", "4x4-color", "l2-pixels")
REPLACE_PROBS = (0.8, 0.1, 0.1)  # [mask], random other patch, unchanged
COLOR_BITS = 3
COLOR_CLASSES = 2 ** (3 * COLOR_BITS)  # 512
CELLS = 4  # "4x4-color": cells per side
MASK, RANDOM, KEEP = 0, 1, 2


# -- which patches, and how -------------------------------------------------------------

def num_corrupted(num_patches: int, rate: float) -> int:
    """M = round(rate · N), at least 1 and at most N."""
    if not 0 < rate <= 1:
        raise ValueError(f"masked-patch rate must be in (0, 1], got {rate!r}")
    return min(num_patches, max(1, round(rate * num_patches)))


def corruption_plan(batch: int, num_patches: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """-> (B, M, 3) int64 on the generator's device.

    [..., 0] positions (row-major patch indices, distinct per image), [..., 1] kind (MASK,
    RANDOM or KEEP), [..., 2] flat source index b·N + position into the batch's patches
    (used by RANDOM only, but always valid and never the patch's own index).
    """
    B, N = batch, num_patches
    if B * N < 2:
        raise ValueError(f"a random other patch needs at least 2 patches in the batch, got {B}x{N}")
    M = num_corrupted(N, rate)
    kw = {"generator": generator, "device": generator.device}
    noise = torch.rand(B, N, **kw)  # (B, N)
    positions = noise.argsort(dim=1)[:, :M]  # (B, M): the M smallest noises are corrupted
    # kind = number of cumulative thresholds a uniform draw passes: [0, .8) mask, [.8, .9) random, [.9, 1) keep
    u = torch.rand(B, M, **kw)  # (B, M)
    kinds = (u >= REPLACE_PROBS[0]).long() + (u >= REPLACE_PROBS[0] + REPLACE_PROBS[1]).long()
    # A nonzero offset modulo B·N: uniform over every patch in the batch except the patch itself.
    own = torch.arange(B, device=generator.device)[:, None] * N + positions  # (B, M)
    sources = (own + torch.randint(1, B * N, (B, M), **kw)) % (B * N)  # (B, M)
    return torch.stack([positions, kinds, sources], dim=-1)  # (B, M, 3)


def plan_for_step(batch: int, num_patches: int, rate: float, seed: int, step: int) -> torch.Tensor:
    """The plan of one training step: (B, M, 3) on the CPU, a pure function of (seed, step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return corruption_plan(batch, num_patches, rate, generator)


def corrupt(tokens: torch.Tensor, plan: torch.Tensor, mask_token: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """tokens: (B, N, D), plan: (B, M, 3), mask_token: (D,) -> (B, N, D), out of place.

    Differentiable in tokens and mask_token; RANDOM takes its source from the uncorrupted tokens,
    or from `other` (B, M, D) when given: the source patches' embeddings computed apart (a slice
    of a batch whose sources lie in other slices).
    """
    B, N, D = tokens.shape
    if plan.shape[0] != B or plan.shape[-1] != 3:
        raise ValueError(f"plan of shape {tuple(plan.shape)} does not fit {B} images (want (B, M, 3))")
    positions, kinds, sources = plan.to(tokens.device).unbind(-1)  # each (B, M)
    at = positions[..., None].expand(-1, -1, D)  # (B, M, D)
    kept = tokens.gather(1, at)  # (B, M, D)
    if other is None:
        other = tokens.reshape(B * N, D)[sources]  # (B, M, D)
    mask = mask_token.to(tokens.dtype).expand_as(kept)  # (B, M, D); autocast may give bf16 tokens
    kinds = kinds[..., None]  # (B, M, 1)
    replaced = torch.where(kinds == MASK, mask, torch.where(kinds == RANDOM, other, kept))  # (B, M, D)
    return tokens.scatter(1, at, replaced)  # positions are distinct per image: no write collides


# -- targets ------------------------------------------------------------------------------

def slice_with_sources(images: torch.Tensor, plan: torch.Tensor, patch: int, a: int, b: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Rows a:b of a batch for one rank or micro-step, with what their corruption needs from the
    rest of the batch: (images (b-a, 3, H, W), (plan (b-a, M, 3), source pixels (b-a, M, 3, P, P))).

    A RANDOM replacement is another patch of the whole batch; its pixels travel with the slice,
    and since a plain ViT embeds each patch on its own, embedding them apart gives the same
    tokens (and gradients) as the whole batch did.
    """
    B, M = plan.shape[0], plan.shape[1]
    flat = patchify(images, patch).flatten(0, 1)  # (B·N, 3, P, P)
    sources = flat[to_device(plan[a:b, :, 2].reshape(-1), flat.device)].reshape(b - a, M, 3, patch, patch)  # (b-a, M, 3, P, P)
    return images[a:b], (plan[a:b], sources)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """images: (B, 3, H, W) -> (B, gh*gw, 3, P, P), patches in row-major order (the token order)."""
    B, C, H, W = images.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {patch}")
    gh, gw = H // patch, W // patch
    x = images.reshape(B, C, gh, patch, gw, patch)  # (B, 3, gh, P, gw, P)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C, patch, patch)  # (B, N, 3, P, P)


def color_classes(pixels: torch.Tensor) -> torch.Tensor:
    """pixels: (..., 3) colours in [-1, 1] -> (...,) int64 classes in [0, 512): r·64 + g·8 + b."""
    levels = 2**COLOR_BITS
    bins = ((pixels + 1) / 2 * levels).floor().clamp(0, levels - 1).long()  # (..., 3); clamp puts 1.0 in the top bin
    r, g, b = bins.unbind(-1)
    return (r * levels + g) * levels + b


def patch_targets(images: torch.Tensor, patch: int, positions: torch.Tensor, target: str) -> torch.Tensor:
    """images: (B, 3, H, W) in [-1, 1], positions: (B, M) row-major patch indices ->

    "mean-color" (B, M) int64 · "4x4-color" (B, M, 16) int64, cells row-major ·
    "l2-pixels" (B, M, 3·P·P), the pixels flattened as (3, P, P).
    """
    _check_target(target, patch)
    patches = patchify(images, patch)  # (B, N, 3, P, P)
    B, M = positions.shape
    rows = torch.arange(B, device=images.device)[:, None]  # (B, 1)
    picked = patches[rows, positions.to(images.device)]  # (B, M, 3, P, P)
    if target == "mean-color":
        return color_classes(picked.mean(dim=(-2, -1)))  # (B, M, 3) -> (B, M)
    if target == "4x4-color":
        s = patch // CELLS
        cells = picked.reshape(B, M, 3, CELLS, s, CELLS, s).mean(dim=(-3, -1))  # (B, M, 3, 4, 4)
        cells = cells.permute(0, 1, 3, 4, 2).reshape(B, M, CELLS * CELLS, 3)  # (B, M, 16, 3)
        return color_classes(cells)  # (B, M, 16)
    return picked.reshape(B, M, 3 * patch * patch)  # (B, M, 3·P·P)


def _check_target(target: str, patch: int) -> None:
    if target not in TARGETS:
        raise ValueError(f"masked-patch target must be one of {TARGETS}, got {target!r}")
    if target == "4x4-color" and patch % CELLS:
        raise ValueError(f'target "4x4-color" pools each patch to 4x4 cells: patch size {patch} is not divisible by 4')


# -- the model and its loss -----------------------------------------------------------------

class MaskedPatchModel(nn.Module):
    """A ViT plus the [mask] embedding and the prediction head; `.vit` is what transfer keeps.

    The ViT's own pre-logits and classification head are carried along unused.
    """

    def __init__(self, vit: VisionTransformer, target: str = "mean-color"):
        super().__init__()
        spec = vit.spec
        if spec.family != "vit":
            raise ValueError(f"masked-patch pre-training needs a ViT; {spec.name} is a {spec.family} model")
        _check_target(target, spec.patch)
        self.vit, self.target, self.patch = vit, target, spec.patch
        like = vit.patch_embed.proj.weight
        self.mask_token = nn.Parameter(torch.empty(spec.width, device=like.device, dtype=like.dtype).normal_(std=0.02))
        out = {"mean-color": COLOR_CLASSES, "4x4-color": CELLS * CELLS * COLOR_CLASSES, "l2-pixels": 3 * spec.patch**2}
        self.head = zero_linear(spec.width, out[target], like=like)

    def forward(self, images: torch.Tensor, plan: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
        """images: (B, 3, H, W), plan: (B, M, 3), sources: None or the RANDOM sources' pixels
        (B, M, 3, P, P) (`slice_with_sources`) ->

        (B, M, 512) "mean-color" · (B, M, 16, 512) "4x4-color" · (B, M, 3·P·P) "l2-pixels".
        """
        plan = plan.to(images.device)
        other = None
        if sources is not None:
            B, M = plan.shape[0], plan.shape[1]
            other = self.vit.patch_embed(sources.flatten(0, 1)).reshape(B, M, -1)  # (B·M, D, 1, 1) -> (B, M, D)
        tokens = self.vit.forward_features(images, corrupt=lambda t: corrupt(t, plan, self.mask_token, other))  # (B, prefix + N, D)
        # A GAP model with fc_norm has its final LayerNorm after pooling: apply it per token here
        # (an identity for every other model), so the head always reads normalised tokens.
        tokens = self.vit.fc_norm(tokens)
        B, M, D = plan.shape[0], plan.shape[1], tokens.shape[-1]
        at = (plan[..., 0] + self.vit.num_prefix_tokens)[..., None].expand(-1, -1, D)  # (B, M, D)
        out = self.head(tokens.gather(1, at))  # (B, M, out)
        if self.target == "4x4-color":
            out = out.reshape(B, M, CELLS * CELLS, COLOR_CLASSES)  # (B, M, 16, 512)
        return out


def objective(model: MaskedPatchModel, images: torch.Tensor, plan: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The training loss (a scalar) on images (B, 3, H, W) in [-1, 1] corrupted by plan (B, M, 3),
    or by (plan, source pixels) for a slice of a batch (`slice_with_sources`).

    `model` may be a torch.compile or DDP wrapper: the target and patch size come from the module inside.
    """
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)  # DistributedDataParallel
    plan, sources = plan if isinstance(plan, (tuple, list)) else (plan, None)
    predictions = model(images, plan) if sources is None else model(images, plan, sources)
    targets = patch_targets(images, inner.patch, plan[..., 0], inner.target)
    return _loss(predictions, targets, inner.target, reduction="mean")


def _loss(predictions: torch.Tensor, targets: torch.Tensor, target: str, reduction: str) -> torch.Tensor:
    """Cross-entropy over 512 colours per patch or cell, or squared error per pixel; in fp32."""
    if target == "l2-pixels":
        return F.mse_loss(predictions.float(), targets.float(), reduction=reduction)
    return F.cross_entropy(predictions.reshape(-1, COLOR_CLASSES).float(), targets.reshape(-1), reduction=reduction)


@torch.no_grad()
def evaluate(model: MaskedPatchModel, batches: Iterable, rate: float, seed: int = 0) -> dict[str, float | None]:
    """Held-out loss and accuracy, batch i corrupted by plan_for_step(B, N, rate, seed, i).

    batches: (images, labels) pairs, images (B, 3, H, W) in [-1, 1] on the model's device;
    labels are ignored. "masked_patch_loss" is the objective's mean over every corrupted patch
    (cell, pixel) of every batch; "masked_patch_accuracy" the share of corrupted patches (cells)
    whose argmax is the target colour, None for "l2-pixels". Leaves the model in eval mode.
    """
    inner = getattr(model, "_orig_mod", model)
    model.eval()
    num_patches = inner.vit.grid[0] * inner.vit.grid[1]
    loss, correct, count = 0.0, 0, 0
    for i, (images, _) in enumerate(batches):
        plan = plan_for_step(len(images), num_patches, rate, seed, i).to(images.device)
        predictions = model(images, plan)
        targets = patch_targets(images, inner.patch, plan[..., 0], inner.target)
        loss += _loss(predictions, targets, inner.target, reduction="sum").item()
        count += targets.numel()
        if inner.target != "l2-pixels":
            correct += (predictions.argmax(-1) == targets).sum().item()
    if count == 0:
        raise ValueError("evaluate() got no batches")
    accuracy = None if inner.target == "l2-pixels" else correct / count
    return {"masked_patch_loss": loss / count, "masked_patch_accuracy": accuracy}
