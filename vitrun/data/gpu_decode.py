"""JPEG decoding on the GPU (``[run] decode = "gpu"``): nvJPEG through ``torchvision.io.decode_jpeg``.

Workers then only read bytes and draw each view's crop box and flip (``transforms.plan``,
the same draws as the CPU path, from (seed, step, slot)); the training process decodes the
whole batch on the device in one call, crops, resizes (bilinear, anti-aliased) and flips
there. CPU cores stop being the limit: one H100-class GPU decodes several thousand
ImageNet JPEGs a second.

What changes: the same images, crops and flips as the CPU path; pixels differ by decoder
and resampler rounding (a few levels of 255), so ``decode`` is a ``[run]`` setting that keeps
stage keys but not bit-identical batches across the two paths (each path is deterministic
and independent of the number of workers).

What degrades: without a CUDA device (or torchvision) the CPU path runs, with one warning.
Images that are not JPEG (PNG, CMYK JPEG …) are decoded by the worker on the CPU as before.
A JPEG that fails on the device is decoded again alone; one that still fails becomes a
black image, with a warning naming where it lies.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from vitrun.data import transforms

_JPEG_MODES = ("RGB", "L")


def usable(device: torch.device) -> bool:
    """Whether JPEGs can be decoded on ``device`` (CUDA and torchvision present)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def item(images, j: int, size: int, kind: str, rng) -> tuple:
    """A worker's share of one image: ("jpeg", bytes uint8 (B,), box float64 (4,), flip) for a
    JPEG, else ("view", uint8 (3, size, size)) decoded here. Raises what PIL raises for a bad header."""
    data = images.encoded(j)
    image = Image.open(io.BytesIO(data)) if data is not None else images.image(j)
    if data is None or image.format != "JPEG" or image.mode not in _JPEG_MODES:
        return ("view", transforms.view(image, size, kind, rng), None, None, images.where(j))
    box, flip = transforms.plan(*image.size, kind, rng)
    return ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), torch.tensor(box, dtype=torch.float64), flip, images.where(j))


def collate(items: list) -> list:
    """Keep the items as they are: encoded images differ in length."""
    return items


def assemble(items: list, size: int, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, size, size) on ``device`` from workers' items (see ``item``), in order."""
    out = torch.empty((len(items), 3, size, size), dtype=torch.uint8, device=device)
    jpegs = [k for k, it in enumerate(items) if it[0] == "jpeg"]
    for k, it in enumerate(items):
        if it[0] == "view":
            out[k] = it[1].to(device, non_blocking=True)
    decoded = _decode([items[k][1] for k in jpegs], [items[k][4] for k in jpegs], device)
    for k, image in zip(jpegs, decoded):
        _, _, box, flip, _ = items[k]
        out[k] = crop_resize(image, box.tolist(), size, flip)
    return out


def _decode(data: list[torch.Tensor], where: list[str], device: torch.device) -> list[torch.Tensor]:
    if not data:
        return []
    with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec on every call; decode_jpeg still works
        warnings.simplefilter("ignore", DeprecationWarning)
        return _decode_all(data, where, device)


def _decode_all(data: list[torch.Tensor], where: list[str], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad file fails the batch: decode one by one to find it
        out = []
        for d, w in zip(data, where):
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as err:
                warnings.warn(f"{w}: not a readable JPEG ({err}); a black image takes its place")
                out.append(torch.zeros((3, 8, 8), dtype=torch.uint8, device=device))
        return out


def crop_resize(image: torch.Tensor, box, size: int, flip: bool) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size): the box (pixel edges, rounded outwards to whole
    pixels) resized bilinearly with anti-aliasing, then flipped left-right if asked."""
    h, w = image.shape[-2:]
    left, top = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    right, bottom = min(w, max(left + 1, int(np.ceil(box[2])))), min(h, max(top + 1, int(np.ceil(box[3]))))
    patch = image[:, top:bottom, left:right].unsqueeze(0).float()  # (1, 3, h', w')
    resized = torch.nn.functional.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if flip:
        resized = resized.flip(-1)
    return resized.round().clamp(0, 255).to(torch.uint8)[0]
