"""Per-image views of decoded images (PIL), for sources read from disk.

The in-memory sources are augmented a whole batch at a time (``augment.py``); real images
come one at a time, in any size and mode, so they are cropped and resized here, inside the
data-loader workers, and leave as uint8 (3, S, S) tensors (4x less to copy between
processes than float32; ``augment.to_float`` scales them to [-1, 1] in the main process).

The views of the paper's code (google-research/vision_transformer, big_vision):

* ``inception``: the training crop of pre-training AND fine-tuning, a random box of 5-100% of
  the area with aspect ratio in [3/4, 4/3], resized to S, random flip (big_vision's
  ``inception_crop``, area_min=5; vit_jax's fine-tuning pipeline,
  ``sample_distorted_bounding_box(area_range=(0.05, 1))`` + ``flip_left_right``);
* ``resize``: an alternative training crop (``crop = "resize"``): shorter side resized to S,
  a random S x S crop, random flip;
* ``full``: the fine-tuning evaluation view of vit_jax: the whole image resized to S x S, no
  crop (the aspect ratio is not kept), as vit_jax's ``tf.image.resize`` for evaluation;
* ``center``: the other evaluations (pre-training test, few-shot, ``vitrun evaluate``):
  shorter side resized to S, centre S x S crop (as ``augment.center``).

Crop and resize happen in one ``Image.resize(box=...)`` call (anti-aliased). JPEGs are
decoded at a reduced scale first when the crop allows it (``Image.draft``: libjpeg's DCT
scaling), which makes decoding a 500 px photo for a 32 px view several times faster.
Randomness comes from the ``rng`` the caller passes, so a view is a pure function of it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

CROPS = ("inception", "resize")
EVAL_VIEWS = ("center", "full")
INCEPTION_AREA = (0.05, 1.0)
INCEPTION_RATIO = (3 / 4, 4 / 3)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (grey, palette, RGBA, CMYK, 16-bit ...) as 8-bit RGB.

    Transparent pixels are composited on black (the colour they decode to in TF's
    ``decode_png(channels=3)``), palette images through RGBA so their transparency counts.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        background = Image.new("RGB", image.size)
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greyscale: scale the full range to 0..255 instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(array)
        image = Image.fromarray(array.round().astype(np.uint8))
    return image.convert("RGB")


def view(image: Image.Image, size: int, kind: str, rng: np.random.Generator | None = None) -> torch.Tensor:
    """One view of ``image``: uint8 (3, size, size).

    kind: "inception" | "resize" (training crops, need ``rng``) or "center" | "full" (evaluation).
    """
    box, flip = plan(*image.size, kind, rng)
    image, box = _draft(image, box, size)
    out = to_rgb(image).resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(out, dtype=np.uint8)  # (size, size, 3)
    # numpy's single-threaded transpose: torch's threaded copy of one 150 kB image cost 15 ms
    # in the training process of a busy 2-core machine (threads waiting on each other).
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (3, size, size)


def plan(w: int, h: int, kind: str, rng: np.random.Generator | None) -> tuple[tuple[float, float, float, float], bool]:
    """(crop box (left, top, right, bottom) in pixels, flip) of a ``kind`` view of a w x h image.

    The same draws whoever decodes the pixels (PIL here, or the GPU in ``gpu_decode``).
    """
    if kind == "center":
        return _square_box(w, h, 0.5), False
    if kind == "full":
        return (0.0, 0.0, float(w), float(h)), False
    if kind == "resize":
        return _square_box(w, h, rng.random()), rng.random() < 0.5
    if kind == "inception":
        return _inception_box(w, h, rng), rng.random() < 0.5
    raise ValueError(f"unknown view {kind!r} (known: {', '.join(EVAL_VIEWS + CROPS)})")


def _square_box(w: int, h: int, position: float) -> tuple[float, float, float, float]:
    """The largest square, slid along the longer side to ``position`` in [0, 1] (0.5: centred)."""
    side = min(w, h)
    left, top = (w - side) * position, (h - side) * position
    return (left, top, left + side, top + side) if w >= h else (0.0, top, float(w), top + side)


def _inception_box(w: int, h: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A random box of area fraction U(INCEPTION_AREA), log-uniform aspect ratio.

    As ``augment.random_crop_flip``: a side longer than the image is clamped to it rather
    than redrawn, so four numbers decide the box (no data-dependent retries).
    """
    u = rng.random(4)
    area = (INCEPTION_AREA[0] + (INCEPTION_AREA[1] - INCEPTION_AREA[0]) * u[0]) * w * h
    lo, hi = math.log(INCEPTION_RATIO[0]), math.log(INCEPTION_RATIO[1])
    aspect = math.exp(lo + (hi - lo) * u[1])  # box width / box height
    bw, bh = min(w, math.sqrt(area * aspect)), min(h, math.sqrt(area / aspect))
    left, top = (w - bw) * u[2], (h - bh) * u[3]
    return (left, top, left + bw, top + bh)


def _draft(image: Image.Image, box, size: int):
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when the box still gets >= ``size`` pixels."""
    if image.format != "JPEG" or not image.tile:  # not a JPEG, or already decoded
        return image, box
    w, h = image.size
    bw, bh = box[2] - box[0], box[3] - box[1]
    # Ask for the image size at which the box spans `size` pixels; draft picks a scale >= it.
    want = (max(1, math.ceil(size * w / bw)), max(1, math.ceil(size * h / bh)))
    if want[0] >= w and want[1] >= h:
        return image, box
    image.draft("RGB", want)
    sx, sy = image.size[0] / w, image.size[1] / h
    return image, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
