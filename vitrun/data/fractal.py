"""FractalDB-style pre-training images: one random iterated function system (IFS) per class.

After Kataoka et al., "Pre-training without Natural Images" (ACCV 2020). A class is an IFS
of 2-4 affine maps x -> A x + b, entries drawn uniformly from [-1, 1] like FractalDB, each
map kept only if contractive (spectral norm <= MAX_NORM, so the attractor exists and the
chaos game converges fast), chosen with probability proportional to |det A|. A system is
rejected when its attractor is degenerate: FractalDB's "filling rate" (the share of a
32x32 grid its points cover, once fitted to the frame) below MIN_FILL throws out points
and lines.

Instances of one class differ by: the chaos-game sample (random starting points, random map
choices), a small perturbation of the maps (FractalDB's intra-class variation), colour and
background, scale, rotation, position and a horizontal flip.

Determinism: class c's system depends on (seed, c) only; instance i of class c in a split
on (seed, c, split, i) only; each gets its own numpy SeedSequence. So instance i of class
c is the same bytes whatever number of classes or images per class is asked for, and
whatever batch it is rendered in (the vectorised maths is elementwise and the rasteriser
counts integers). Bump VERSION whenever the pixels change: caches are keyed by it.

Speed: all images of a chunk iterate together (the chaos game runs on an
(images, walkers) array), then np.bincount rasterises every point at once into a grid at
2x the output size, which is box-filtered down (anti-aliasing).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

VERSION = 1
TEST_PER_CLASS = 20  # test images per class, from their own instance stream (split 2)
DEFAULT_CLASSES = 100
DEFAULT_PER_CLASS = 100  # 10k images at 32 px: a few seconds on 2 cores

_TAG = 0xF4AC7A1  # salts every SeedSequence of this module, apart from other generators
MAX_MAPS = 4
MAX_NORM = 0.9  # spectral norm bound of each map: contraction of at least 10% per step
MIN_FILL = 0.15  # filling-rate threshold: rejects points and lines (~45% of draws), keeps thin ferns
PERTURB = 0.05  # per-instance relative jitter of every map's linear part
BURN_IN = 20  # chaos-game steps discarded: walkers start anywhere in the bounding box
RECORD = 100  # steps recorded per walker; walkers scale with the image area
POINTS_PER_PIXEL = 1.5  # points per pixel of the 2x render grid (at ~30% fill: ~5 hits a lit pixel)
MAX_ROTATION = math.radians(20)  # moderate: fractals are not rotation-invariant classes
SCALE = (0.7, 0.95)  # share of the frame the attractor's longer side spans
SHIFT = 0.1  # max offset of the attractor's centre, in half-frames
_CHUNK_ELEMENTS = 1_000_000  # walker-steps per vectorised chunk: ~60 MB of temporaries, cache-friendly


@dataclass(frozen=True)
class System:
    """One class: an IFS padded to MAX_MAPS maps, and the box that frames its attractor.

    maps: float64 (MAX_MAPS, 2, 3) rows [A | b]; unused maps have probability 0.
    cum_probs: float64 (MAX_MAPS,) cumulative map probabilities, last entry 1.
    centre: float64 (2,), half: float: (p - centre) / half maps the attractor into [-1, 1]^2.
    """

    maps: np.ndarray
    cum_probs: np.ndarray
    centre: np.ndarray
    half: float


def class_names(classes: int) -> tuple[str, ...]:
    return tuple(f"ifs{c:04d}" for c in range(classes))


def _pick_maps(cum_probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Map index per uniform draw: cum_probs (n, M), u (n, W, T) -> int64 (n, W, T)."""
    choice = np.zeros(u.shape, np.int64)
    for m in range(cum_probs.shape[1] - 1):  # index = how many cumulative probabilities u passed
        choice += u >= cum_probs[:, m, None, None].astype(np.float32)
    return choice


def _chaos_game(maps: np.ndarray, choice: np.ndarray, starts: np.ndarray):
    """Run the chaos game for many systems at once.

    maps: (n, M, 2, 3); choice: int (n, W, T), the map applied per walker and step;
    starts: (n, W, 2). Returns x, y: float32 (n, W, T - BURN_IN), the points visited after
    the burn-in.
    """
    n, m = maps.shape[:2]
    flat = choice + (np.arange(n) * m)[:, None, None]  # index into the n * m maps
    a, b, e, c, d, f = (np.ascontiguousarray(maps.reshape(n * m, 6)[:, k], np.float32) for k in range(6))
    x, y = starts[..., 0].astype(np.float32), starts[..., 1].astype(np.float32)
    steps = choice.shape[2]
    xs = np.empty((n, choice.shape[1], steps - BURN_IN), np.float32)
    ys = np.empty_like(xs)
    for t in range(steps):
        k = flat[:, :, t]  # (n, W): each walker's map at this step
        x, y = (
            np.take(a, k) * x + np.take(b, k) * y + np.take(e, k),
            np.take(c, k) * x + np.take(d, k) * y + np.take(f, k),
        )
        if t >= BURN_IN:
            xs[:, :, t - BURN_IN], ys[:, :, t - BURN_IN] = x, y
    return xs, ys


def _occupancy(px: np.ndarray, py: np.ndarray, size: int) -> np.ndarray:
    """Hit counts of points on a size x size grid per image.

    px, py: float pixel coordinates (n, ...); points outside the grid are dropped.
    Returns int64 (n, size, size).
    """
    n = px.shape[0]
    inside = (px >= 0) & (px < size) & (py >= 0) & (py < size)  # before the cast: int() truncates toward 0
    offset = (np.arange(n) * (size * size)).reshape((n,) + (1,) * (px.ndim - 1))
    flat = (py.astype(np.int64) * size + px.astype(np.int64)) + offset
    return np.bincount(flat[inside], minlength=n * size * size).reshape(n, size, size)


def _random_maps(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` contractive maps, FractalDB-style: float64 (count, 2, 3), entries U(-1, 1)."""
    kept = []
    while sum(len(k) for k in kept) < count:
        cand = rng.uniform(-1.0, 1.0, (4 * count, 2, 3))
        kept.append(cand[np.linalg.norm(cand[:, :, :2], ord=2, axis=(1, 2)) <= MAX_NORM])
    return np.concatenate(kept)[:count]


@functools.lru_cache(maxsize=4096)  # train and test splits, and repeated loads, share systems
def class_system(seed: int, c: int) -> System:
    """The IFS of class ``c``: candidates drawn in batches of 8 until one passes the filter."""
    rng = np.random.default_rng([_TAG, seed, c])
    batch, walkers, steps, grid = 8, 128, BURN_IN + 48, 32
    for _ in range(200):  # about half the candidates pass; 1600 failures in a row means a bug
        maps = _random_maps(rng, batch * MAX_MAPS).reshape(batch, MAX_MAPS, 2, 3)
        n_maps = rng.integers(2, MAX_MAPS + 1, batch)
        det = np.abs(np.linalg.det(maps[:, :, :, :2])) * (np.arange(MAX_MAPS) < n_maps[:, None])
        probs = det / np.maximum(det.sum(1, keepdims=True), 1e-12)
        cum = np.cumsum(probs, 1)
        cum[:, -1] = 1.0
        starts = rng.uniform(-1.0, 1.0, (batch, walkers, 2))
        choice = _pick_maps(cum, rng.random((batch, walkers, steps), dtype=np.float32))
        x, y = _chaos_game(maps, choice, starts)
        pts = np.stack([x.reshape(batch, -1), y.reshape(batch, -1)], -1).astype(np.float64)  # (batch, P, 2)
        # Percentiles, not min/max: a few walkers still far from the attractor must not set the frame.
        lo, hi = np.percentile(pts, 0.5, axis=1), np.percentile(pts, 99.5, axis=1)  # (batch, 2)
        centre, half = (lo + hi) / 2, np.max(hi - lo, axis=1) / 2 * 1.05
        half_safe = np.maximum(half, 1e-9)[:, None, None]
        q = (pts - centre[:, None]) / half_safe  # in [-1, 1]^2 when framed
        fill = (_occupancy((q[..., 0] + 1) * grid / 2, (q[..., 1] + 1) * grid / 2, grid) > 0).mean((1, 2))
        ok = (det.sum(1) > 1e-3) & (half > 1e-3) & np.isfinite(pts).all((1, 2)) & (fill >= MIN_FILL)
        if ok.any():
            j = int(np.argmax(ok))
            return System(maps[j], cum[j], centre[j], float(half[j]))
    raise RuntimeError(f"fractal: no acceptable IFS found for class {c} (seed {seed})")


def _render_chunk(
    systems: dict[int, System], seed: int, size: int, classes: np.ndarray, instances: np.ndarray, split: int
) -> np.ndarray:
    """uint8 (n, 3, size, size): instance ``instances[j]`` of class ``classes[j]`` for each j."""
    n, res = len(classes), 2 * size  # render at 2x, box-filter down
    walkers = math.ceil(POINTS_PER_PIXEL * res * res / RECORD)
    steps = BURN_IN + RECORD
    maps = np.empty((n, MAX_MAPS, 2, 3))
    cum = np.empty((n, MAX_MAPS))
    starts = np.empty((n, walkers, 2))
    u = np.empty((n, walkers, steps), np.float32)
    pose = np.empty((n, 2, 3), np.float32)  # per image: framed point [-1, 1]^2 -> pixel of the 2x grid
    colours = np.empty((n, 2, 3))  # per image: (background, foreground) RGB in [0, 1]
    for j, (c, i) in enumerate(zip(classes.tolist(), instances.tolist())):
        s = systems[c]
        rng = np.random.default_rng([_TAG, seed, c, split, i])
        maps[j] = s.maps
        maps[j, :, :, :2] *= 1.0 + PERTURB * rng.uniform(-1.0, 1.0, (MAX_MAPS, 2, 2))
        cum[j] = s.cum_probs
        starts[j] = s.centre + s.half * rng.uniform(-1.0, 1.0, (walkers, 2))
        u[j] = rng.random((walkers, steps), dtype=np.float32)
        scale = rng.uniform(*SCALE)
        angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
        shift = rng.uniform(-SHIFT, SHIFT, 2)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        cos, sin = math.cos(angle) * scale / s.half, math.sin(angle) * scale / s.half
        # pixel = res/2 * (R(angle) * scale * F(flip) * (p - centre) / half + shift + 1)
        lin = res / 2 * np.array([[cos * flip, -sin], [sin * flip, cos]])
        pose[j, :, :2] = lin
        pose[j, :, 2] = res / 2 * (shift + 1.0) - lin @ s.centre
        background = rng.uniform(0.0, 0.25, 3)  # dark, tinted, like FractalDB's black
        foreground = rng.uniform(0.2, 1.0, 3)
        colours[j] = background, foreground / foreground.max()  # bright, any hue
    # Jitter raises a map's spectral norm by at most sqrt(2) * PERTURB relative (Frobenius
    # bound): 0.9 * 1.071 = 0.96, still contractive.
    x, y = _chaos_game(maps, _pick_maps(cum, u), starts)  # (n, W, RECORD)
    px = pose[:, 0, 0, None, None] * x + pose[:, 0, 1, None, None] * y + pose[:, 0, 2, None, None]
    py = pose[:, 1, 0, None, None] * x + pose[:, 1, 1, None, None] * y + pose[:, 1, 2, None, None]
    hits = _occupancy(px, py, res)  # (n, res, res)
    # Saturating density: one hit is already clearly visible, dense regions do not blow out.
    density = 1.0 - np.exp(-hits.astype(np.float32))
    density = density.reshape(n, size, 2, size, 2).mean((2, 4))  # 2x2 box filter
    bg, fg = colours[:, 0, :, None, None], colours[:, 1, :, None, None]  # (n, 3, 1, 1)
    image = bg + (fg - bg) * density[:, None]  # (n, 3, size, size)
    return np.round(image * 255.0).astype(np.uint8)


def render(seed: int, size: int, classes: np.ndarray, instances: np.ndarray, split: int) -> np.ndarray:
    """uint8 (N, 3, size, size): instance ``instances[j]`` of class ``classes[j]``.

    split: 1 for train, 2 for test (separate instance streams of the same classes).
    """
    classes, instances = np.asarray(classes, np.int64), np.asarray(instances, np.int64)
    systems = {c: class_system(seed, c) for c in np.unique(classes).tolist()}
    walkers = math.ceil(POINTS_PER_PIXEL * 4 * size * size / RECORD)
    chunk = max(1, _CHUNK_ELEMENTS // (walkers * (BURN_IN + RECORD)))
    out = np.empty((len(classes), 3, size, size), np.uint8)
    for lo in range(0, len(classes), chunk):
        sl = slice(lo, lo + chunk)
        out[sl] = _render_chunk(systems, seed, size, classes[sl], instances[sl], split)
    return out


def generate(seed: int, size: int, classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-major arrays: train uint8 (classes, per_class, 3, size, size), test (classes, TEST_PER_CLASS, ...)."""

    def split_images(split: int, count: int) -> np.ndarray:
        c, i = np.divmod(np.arange(classes * count), count)
        return render(seed, size, c, i, split).reshape(classes, count, 3, size, size)

    return split_images(1, per_class), split_images(2, TEST_PER_CLASS)
