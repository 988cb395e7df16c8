"""Batched image transforms on uint8 tensors: training crops and evaluation resizes.

Everything works on a whole batch (B, 3, H, W) with tensor ops, on whatever device the
batch lives on: no per-image Python loop, so augmentation costs little next to a forward
pass even on a 2-core CPU. Output pixels are float32 in [-1, 1], the range of the official
ViT code (``value / 127.5 - 1``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in 0..255 -> float32 (B, 3, H, W) in [-1, 1]."""
    return images_uint8.to(torch.float32) / 127.5 - 1.0


def random_crop_flip(
    images_uint8: torch.Tensor,
    out_size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    within: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Inception-style random-resized crop plus horizontal flip, one random box per image.

    images_uint8: (B, 3, H, W) uint8.  Returns float32 (B, 3, out_size, out_size) in [-1, 1].
    within: (offset, total) when these B images are rows offset..offset+B of a batch of `total`
    (one rank's slice): each image gets the box it would get in the whole batch.

    Each box covers a fraction U(scale) of the image area with aspect ratio log-uniform in
    ``ratio``; half the images are mirrored. All boxes are sampled with one draw from
    ``generator`` and resampled with one ``affine_grid``/``grid_sample`` call (bilinear).

    Departures from torchvision's RandomResizedCrop, on purpose: instead of retrying a box
    that does not fit (a data-dependent loop), a side longer than the image is clamped to
    the image, which makes such boxes slightly less elongated; and bilinear sampling does
    not anti-alias, so crops much larger than ``out_size`` alias a little (our sources are
    generated at the training resolution, so crops are rarely shrunk much).
    """
    b, _, h, w = images_uint8.shape
    offset, total = within or (0, b)
    u = torch.rand(total, 5, generator=generator, device=generator.device)[offset : offset + b]
    if images_uint8.is_cuda and not u.is_cuda:  # from pageable memory the copy would wait for the device
        u = u.pin_memory()
    u = u.to(images_uint8.device, non_blocking=True)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)  # box width / box height, in pixels
    # Box sides as fractions of the image sides: (bw*W) * (bh*H) = area*H*W, (bw*W)/(bh*H) = aspect.
    bw = torch.sqrt(area * aspect * h / w).clamp(max=1.0)
    bh = torch.sqrt(area / aspect * w / h).clamp(max=1.0)
    # affine_grid maps output coords in [-1, 1] to input coords: x_in = sx * x_out + tx.
    # A box of relative width bw has sx = bw, and its centre may sit anywhere in +-(1 - bw).
    tx = (1.0 - bw) * (2.0 * u[:, 2] - 1.0)
    ty = (1.0 - bh) * (2.0 * u[:, 3] - 1.0)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)  # negative x scale = horizontal mirror
    zero = torch.zeros_like(bw)
    theta = torch.stack(
        [torch.stack([bw * flip, zero, tx], dim=1), torch.stack([zero, bh, ty], dim=1)], dim=1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)  # (B, out, out, 2)
    out = F.grid_sample(
        to_float(images_uint8), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.clamp_(-1.0, 1.0)


def center(images_uint8: torch.Tensor, out_size: int) -> torch.Tensor:
    """Evaluation view: resize the shorter side to ``out_size``, then centre-crop the longer.

    images_uint8: (B, 3, H, W) uint8.  Returns float32 (B, 3, out_size, out_size) in [-1, 1].
    Downsizing uses anti-aliased bilinear interpolation.
    """
    x = to_float(images_uint8)
    _, _, h, w = x.shape
    if (h, w) != (out_size, out_size):
        short = min(h, w)
        new_h, new_w = round(h * out_size / short), round(w * out_size / short)
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        top, left = (new_h - out_size) // 2, (new_w - out_size) // 2
        x = x[:, :, top : top + out_size, left : left + out_size]
    return x.clamp_(-1.0, 1.0).contiguous()


def full(images_uint8: torch.Tensor, out_size: int) -> torch.Tensor:
    """Evaluation view of vit_jax's fine-tuning: the whole image resized to ``out_size`` square.

    images_uint8: (B, 3, H, W) uint8.  Returns float32 (B, 3, out_size, out_size) in [-1, 1].
    A square image is resized as ``center`` does; others are stretched, as ``tf.image.resize``.
    """
    x = to_float(images_uint8)
    if x.shape[-2:] != (out_size, out_size):
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(-1.0, 1.0).contiguous()
