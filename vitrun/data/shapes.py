"""A procedural transfer set in another domain than fractals: ten filled geometric shapes.

Each image is one shape (a signed distance function, SDF, evaluated over the pixel grid)
in a random colour, size, tilt and position, on a random background: a base colour,
two plane-wave textures and per-pixel noise. Shape and background lightness differ by at
least MIN_CONTRAST so every image is legible; the look-alikes (circle / pentagon / ellipse,
triangle / chevron, ring / crescent) and the clutter keep it from being trivial.

Version 2 made it learnable at the quickstart's budget (50 fine-tuning steps of 32 images):
version 1's small, freely rotated shapes (radius 0.4-0.75) with strong tints and textures left
every model family near chance (R14x0.25 15.7%, ViT-Mu/4 13.7% fine-tuned, 10 classes), and
with larger shapes alone the hybrid stayed at chance (10.1%). Version 2 draws larger shapes,
upright within +-15 degrees, with more contrast and a quieter background (RADIUS, ROTATION,
MIN_CONTRAST, TINT, TEXTURE, NOISE below): measured on one pre-training each, fine-tuned at
lr 0.03, upright shapes gave ViT-Mu/4 18.4%, the hybrid 28.1%, R14x0.25 38.0%.

Rendering is vectorised over a batch: coordinates of every pixel of every image are moved
into each shape's own frame at once, then one SDF per class runs on that class's images.
Edges are anti-aliased analytically: pixel coverage = clip(0.5 - distance / pixel, 0, 1).

Determinism as in ``fractal``: instance i of class c in a split depends on
(seed, c, split, i) only. Bump VERSION whenever the pixels change: caches are keyed by it.
SDF formulas after Inigo Quilez's "2D distance functions" (iquilezles.org).
"""

from __future__ import annotations

import math

import numpy as np

VERSION = 2
TEST_PER_CLASS = 100
DEFAULT_CLASSES = 10  # all of SHAPES
DEFAULT_PER_CLASS = 300

_TAG = 0x5A4E5  # salts this module's SeedSequences, apart from other generators
RADIUS = (0.55, 0.85)  # shape size: circumradius as a share of the half-frame
MIN_CONTRAST = 0.5  # lightness gap between shape and background
NOISE = 0.02  # std of the per-pixel Gaussian noise, in [0, 1] pixel units
TINT = 0.15  # max per-channel hue shift of background and shape
ROTATION = math.radians(15)  # max |angle|: upright +- 15 degrees (free rotation left the hybrid at chance)
TEXTURE = 0.04  # max amplitude of each background plane wave, per channel
_CHUNK_PIXELS = 500_000  # pixels per vectorised chunk: bounds memory to ~100 MB at any size


def _length(x, y):
    return np.sqrt(x * x + y * y)


def _star(x, y, n: int, m: float, r: float = 1.0):
    """Regular n-gon (m = 2) or n-pointed star (2 < m <= n) of circumradius r."""
    an, en = math.pi / n, math.pi / m
    acs, ecs = (math.cos(an), math.sin(an)), (math.cos(en), math.sin(en))
    bn = np.mod(np.arctan2(x, y), 2 * an) - an  # angle inside the sector, in (-an, an)
    length = _length(x, y)
    qx, qy = length * np.cos(bn) - r * acs[0], length * np.abs(np.sin(bn)) - r * acs[1]
    h = np.clip(-(qx * ecs[0] + qy * ecs[1]), 0.0, r * acs[1] / ecs[1])
    qx, qy = qx + ecs[0] * h, qy + ecs[1] * h
    return _length(qx, qy) * np.sign(qx)


def _box(x, y, hx: float, hy: float):
    dx, dy = np.abs(x) - hx, np.abs(y) - hy
    return _length(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _segment(x, y, ax, ay, bx, by, width):
    """Capsule: points within ``width`` of the segment a-b."""
    px, py, ux, uy = x - ax, y - ay, bx - ax, by - ay
    h = np.clip((px * ux + py * uy) / (ux * ux + uy * uy), 0.0, 1.0)
    return _length(px - ux * h, py - uy * h) - width


def _ellipse(x, y, a: float, b: float):
    # Scaled-circle approximation: exact sign, distance off by < max(a, b) / min(a, b)
    # away from the edge, which only the anti-aliasing band sees.
    return (_length(x / a, y / b) - 1.0) * min(a, b)


# Unit shapes, circumradius ~1, in the shape's own frame. Union = min, subtraction = max(d1, -d2).
SHAPES = {
    "circle": lambda x, y: _length(x, y) - 0.85,
    "square": lambda x, y: _star(x, y, 4, 2.0),
    "triangle": lambda x, y: _star(x, y, 3, 2.0),
    "pentagon": lambda x, y: _star(x, y, 5, 2.0),
    "star": lambda x, y: _star(x, y, 5, 3.0),
    "cross": lambda x, y: np.minimum(_box(x, y, 0.95, 0.28), _box(x, y, 0.28, 0.95)),
    "ring": lambda x, y: np.abs(_length(x, y) - 0.7) - 0.22,
    "ellipse": lambda x, y: _ellipse(x, y, 1.0, 0.5),
    "chevron": lambda x, y: np.minimum(
        _segment(x, y, -0.75, 0.6, 0.0, -0.5, 0.2), _segment(x, y, 0.75, 0.6, 0.0, -0.5, 0.2)
    ),
    "crescent": lambda x, y: np.maximum(_length(x, y) - 0.9, -(_length(x - 0.45, y) - 0.8)),
}
_SDFS = tuple(SHAPES.values())


def class_names(classes: int) -> tuple[str, ...]:
    return tuple(SHAPES)[:classes]


def _lightness_pair(rng: np.random.Generator) -> tuple[float, float]:
    """(background, shape) lightness in [0, 1], at least MIN_CONTRAST apart."""
    bg = rng.uniform(0.0, 1.0)
    while True:
        fg = rng.uniform(0.0, 1.0)
        if abs(fg - bg) >= MIN_CONTRAST:
            return bg, fg


def _render_chunk(seed: int, size: int, classes: np.ndarray, instances: np.ndarray, split: int) -> np.ndarray:
    """uint8 (n, 3, size, size): instance ``instances[j]`` of class ``classes[j]``."""
    n = len(classes)
    pose = np.empty((n, 4))  # centre x, centre y, angle, radius
    colours = np.empty((n, 2, 3))  # (background, shape) RGB in [0, 1]
    waves = np.empty((n, 2, 3))  # two plane waves: (kx, ky, phase)
    wave_amp = np.empty((n, 2, 3))  # per wave, per channel
    noise = np.empty((n, 3, size, size), np.float32)
    for j, (c, i) in enumerate(zip(classes.tolist(), instances.tolist())):
        rng = np.random.default_rng([_TAG, seed, c, split, i])
        radius = rng.uniform(*RADIUS)
        reach = 0.95 - radius  # keep the shape (nearly) inside the frame
        pose[j] = (*rng.uniform(-reach, reach, 2), rng.uniform(-ROTATION, ROTATION), radius)
        bg, fg = _lightness_pair(rng)
        tint = rng.uniform(-TINT, TINT, (2, 3))  # hue on top of lightness
        colours[j] = np.clip(np.array([[bg], [fg]]) + tint, 0.0, 1.0)
        freq = rng.uniform(1.0, 6.0, 2) * math.pi  # 1..6 cycles across the frame
        direction = rng.uniform(0, 2 * math.pi, 2)
        waves[j] = np.stack([freq * np.cos(direction), freq * np.sin(direction), rng.uniform(0, 2 * math.pi, 2)], 1)
        wave_amp[j] = rng.uniform(0.0, TEXTURE, (2, 3))
        noise[j] = rng.standard_normal((3, size, size), dtype=np.float32) * NOISE

    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
    gx, gy = centres[None, None, :], centres[None, :, None]  # (1, 1, size), (1, size, 1)
    # Into each shape's frame: rotate by -angle about its centre, divide by its radius.
    cx, cy, angle, radius = (pose[:, k, None, None] for k in range(4))  # each (n, 1, 1)
    dx, dy = gx - cx, gy - cy  # (n, size, size)
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius
    distance = np.empty((n, size, size))
    for k in np.unique(classes).tolist():
        m = classes == k
        distance[m] = _SDFS[k](x[m], y[m]) * radius[m]  # back to frame units
    coverage = np.clip(0.5 - distance / (2.0 / size), 0.0, 1.0)[:, None]  # (n, 1, size, size)

    texture = sum(
        wave_amp[:, w, :, None, None]
        * np.sin(waves[:, w, 0, None, None, None] * gx + waves[:, w, 1, None, None, None] * gy
                 + waves[:, w, 2, None, None, None])
        for w in range(2)
    )  # (n, 3, size, size)
    background = colours[:, 0, :, None, None] + texture
    shape = colours[:, 1, :, None, None]
    image = background + (shape - background) * coverage + noise
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def render(seed: int, size: int, classes: np.ndarray, instances: np.ndarray, split: int) -> np.ndarray:
    """uint8 (N, 3, size, size): instance ``instances[j]`` of class ``classes[j]``.

    split: 1 for train, 2 for test (separate instance streams of the same classes).
    """
    classes, instances = np.asarray(classes, np.int64), np.asarray(instances, np.int64)
    out = np.empty((len(classes), 3, size, size), np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    for lo in range(0, len(classes), chunk):
        sl = slice(lo, lo + chunk)
        out[sl] = _render_chunk(seed, size, classes[sl], instances[sl], split)
    return out


def generate(seed: int, size: int, classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-major arrays: train uint8 (classes, per_class, 3, size, size), test (classes, TEST_PER_CLASS, ...)."""
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"shapes has {len(SHAPES)} classes, asked for {classes}")

    def split_images(split: int, count: int) -> np.ndarray:
        c, i = np.divmod(np.arange(classes * count), count)
        return render(seed, size, c, i, split).reshape(classes, count, 3, size, size)

    return split_images(1, per_class), split_images(2, TEST_PER_CLASS)
