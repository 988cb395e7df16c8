"""Shards built on disk as the hub's image sets are laid out, for the tests and ``vitrun bench data``.

* WebDataset tars as ``timm/imagenet-22k-wds``: per sample ``KEY.jpg``, ``KEY.cls`` (the class
  number as text) and ``KEY.json``; shards named ``<name>-<split>-NNNN.tar``;
* Parquet files with columns ``jpg`` (JPEG bytes), ``cls`` (int64) and ``json`` (text), named
  ``<split>-NNNNN.parquet``, in row groups of ``row_group`` rows.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

from PIL import Image


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def samples(count: int, classes: int, draw: Callable[[int, int], Image.Image], offset: int = 0, label: Callable[[int], int] | None = None):
    """(key, jpeg bytes, label) for images offset .. offset + count - 1; label i % classes unless given."""
    for i in range(offset, offset + count):
        y = i % classes if label is None else label(i)
        yield f"s{i:07d}", jpeg(draw(i % classes, i)), y


def write_wds(folder: Path, split: str, shards: int, rows: list, name: str = "toy") -> list[Path]:
    """``rows`` (key, jpeg, label) dealt into ``shards`` tar files in order; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // shards)
    paths = []
    for s in range(shards):
        path = folder / f"{name}-{split}-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, data, label in rows[s * per : (s + 1) * per]:
                for ext, payload in (("jpg", data), ("cls", str(label).encode()), ("json", json.dumps({"label": label}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def write_parquet(folder: Path, split: str, shards: int, rows: list, row_group: int = 16) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // shards)
    paths = []
    for s in range(shards):
        part = rows[s * per : (s + 1) * per]
        table = pa.table({
            "jpg": pa.array([r[1] for r in part], pa.binary()),
            "cls": pa.array([r[2] for r in part], pa.int64()),
            "json": pa.array([json.dumps({"key": r[0]}) for r in part]),
        })
        path = folder / f"{split}-{s:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group)
        paths.append(path)
    return paths


def photos(count: int, seed: int = 0):
    """(key, jpeg bytes, label) of ``count`` photo-like JPEGs of ImageNet's typical size
    (crops of 300-427 x 350-560 px from scikit-learn's two sample photos, re-encoded at
    quality 90: 60-130 kB each), labels 0..99: what decoding costs on real data."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    sources = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = sources[i % 2]
        h, w = int(rng.integers(300, 428)), int(rng.integers(350, 561))
        top, left = int(rng.integers(0, photo.height - h + 1)), int(rng.integers(0, photo.width - w + 1))
        crop = photo.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        yield f"p{i:07d}", jpeg(crop), int(rng.integers(100))


if __name__ == "__main__":  # python -m tests.data.shardsets OUT_DIR [IMAGES] [SHARDS]: benchmark shards
    import sys

    out = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    shards = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    rows = list(photos(count))
    write_wds(out / "wds", "train", shards, rows, name="photos")
    write_parquet(out / "parquet", "train", shards, rows, row_group=32)
    print(f"{count} JPEGs ({sum(len(r[1]) for r in rows) / count / 1000:.0f} kB each on average) in {shards} tar and {shards} parquet shards under {out}")
