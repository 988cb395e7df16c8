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
