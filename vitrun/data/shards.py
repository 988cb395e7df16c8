"""Shards read where they lie: WebDataset tars (``wds:GLOB``) and Parquet files (``parquet:GLOB``).

Nothing is converted or copied. An *index* of every sample, built once per set of shards
and cached, gives random access for the map-style sampler (a batch is a pure function of
(seed, step)):

* tar: (shard, byte offset, byte size) of each sample's image member, so one image is one
  ``os.pread`` (no tar parsing at read time); labels are read from the ``cls`` members
  while indexing (WebDataset: a sample is the members sharing a key, the path up to the
  first dot of the file name: ``n01440764_10026.jpg`` + ``n01440764_10026.cls``);
* parquet: (shard, row group, row in group); the label column is read alone (no image
  bytes) while indexing, an image by reading its row group's image column (the row group
  most recently read stays open in each worker: shards written with small row groups,
  as the hub's are, cost little per image; see the README).

Shards are indexed in parallel (a process pool, one task per shard). The index lives under
``<vitrun cache>/data/index/``, named by a hash of the shard paths, sizes and modification
times and the columns read, so a changed shard is re-indexed and the data are never
copied: disk use grows by the index only (about 20 bytes per image).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitrun.data.cache import cache_root, load_arrays, save_arrays
from vitrun.data.options import SourceError

INDEX_VERSION = 1
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff", "img", "image")
OPEN_SHARDS = 64  # tar files a reader keeps open (per worker)
LABEL_KEYS = ("cls", "label", "labels", "fine_label", "target", "targets", "class", "y")


@dataclass(frozen=True)
class ShardIndex:
    """Where each sample of a set of shards lies (N samples).

    shard: int32 (N,), position in ``shards``.
    a, b: int64 (N,); tar: image byte offset and size; parquet: row group and row in it.
    labels: (N,) int64 (numeric labels) or unicode (text labels), as the shards hold them.
    """

    shards: tuple[str, ...]
    shard: np.ndarray
    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.shard)


# -- WebDataset tars -------------------------------------------------------------------

def tar_members(path: str, limit: int | None = None) -> dict[str, set[str]]:
    """Sample key -> the member extensions it has, for the first ``limit`` members (validation)."""
    samples: dict[str, set[str]] = {}
    with _open_tar(path) as tar:
        for n, member in enumerate(tar):
            if limit is not None and n >= limit:
                break
            if member.isfile():
                key, ext = _split_name(member.name)
                samples.setdefault(key, set()).add(ext)
    return samples


def tar_columns(path: str, image: str | None, label: str | None, source: str) -> tuple[str, str]:
    """(image extension, label extension) of the samples in shard ``path``, detected or as named."""
    found = sorted(set().union(*tar_members(path, limit=64).values()))
    listed = ", ".join(found) or "none"
    if image and image not in found:
        raise SourceError("image_column", f"{source}: no member .{image} in {path} (members found: {listed})")
    if label and label not in found:
        raise SourceError("label_column", f"{source}: no member .{label} in {path} (members found: {listed}); set label_column")
    image = image or next((e for e in IMAGE_EXTS if e in found), None)
    if image is None:
        raise SourceError("image_column", f"{source}: no image members in {path} (members found: {listed}; images: .{', .'.join(IMAGE_EXTS[:4])}); set image_column")
    return image, label or pick_label([], [k for k in LABEL_KEYS if k in found], found, source)


def pick_label(typed: list[str], named: list[str], found, source: str) -> str:
    """The label column: the one class-label-typed column, else the first of LABEL_KEYS present.

    typed: columns declared as class labels (a ``ClassLabel``); named: columns whose names
    are label names, in LABEL_KEYS order. Several typed columns and no name among them
    (e.g. two ClassLabels called "a" and "b") is ambiguous; none at all is missing.
    """
    listed = ", ".join(found) or "none"
    if len(typed) == 1:
        return typed[0]
    if typed:
        preferred = [c for c in named if c in typed]
        if preferred:
            return preferred[0]
        raise SourceError("label_column", f"{source}: several label columns ({', '.join(typed)}; columns: {listed}); set label_column")
    if named:
        return named[0]
    raise SourceError("label_column", f"{source}: cannot tell which column holds the labels (columns: {listed}; recognised: {', '.join(LABEL_KEYS)}); set label_column")


def _open_tar(path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed only: a member must be readable at its offset
    except tarfile.ReadError as err:
        raise SourceError("data", f"{path}: not an uncompressed tar shard ({err}); WebDataset shards must be plain .tar") from None


def _split_name(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (folder + "/" + stem if folder else stem), ext.lower()


def _index_tar(job: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """One shard: image (offsets, sizes), label texts, and samples dropped for lacking a member."""
    path, image_ext, label_ext = job
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, str] = {}
    end = os.path.getsize(path)
    fix = "re-write or remove this shard"
    with open(path, "rb") as raw, _open_tar(path) as tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > end:
                    raise SourceError("data", f"{path}: truncated: member {member.name} at byte {member.offset_data} runs past the end of the file; {fix}")
                key, ext = _split_name(member.name)
                if ext == image_ext:
                    images[key] = (member.offset_data, member.size)
                elif ext == label_ext:
                    labels[key] = os.pread(raw.fileno(), member.size, member.offset_data).decode("utf-8", "replace").strip()
        except tarfile.TarError as err:
            raise SourceError("data", f"{path}: damaged tar header near byte {tar.offset} ({err}); {fix}") from None
        # tarfile stops quietly at a damaged header past the first: only zeros may follow the last member.
        rest = os.pread(raw.fileno(), 512, tar.offset)
        if rest.strip(b"\0"):
            raise SourceError("data", f"{path}: damaged tar header near byte {tar.offset}; {fix}")
    keys = [k for k in images if k in labels]
    offsets = np.array([images[k][0] for k in keys], dtype=np.int64)
    sizes = np.array([images[k][1] for k in keys], dtype=np.int64)
    return offsets, sizes, [labels[k] for k in keys], len(images) + len(labels) - 2 * len(keys)


def index_tars(shards: list[str], image_ext: str, label_ext: str, cache_dir, source: str, workers: int | None = None) -> ShardIndex:
    """The cached index of WebDataset ``shards`` (built in parallel on first use)."""
    def build() -> ShardIndex:
        parts = _parallel(_index_tar, [(s, image_ext, label_ext) for s in shards], workers)
        dropped = sum(p[3] for p in parts)
        if dropped:
            import warnings

            from vitrun.data.options import SourceWarning

            warnings.warn(f"{source}: {dropped} samples lack a .{image_ext} or .{label_ext} member and are left out", SourceWarning)
        return _join(shards, [(p[0], p[1], p[2]) for p in parts])

    return _cached(shards, ("tar", image_ext, label_ext), cache_dir, build)


# -- Parquet ---------------------------------------------------------------------------

def _index_parquet(job: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, list]:
    import pyarrow.parquet as pq

    path, label = job
    meta = pq.ParquetFile(path).metadata
    groups = np.repeat(np.arange(meta.num_row_groups, dtype=np.int64), [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    rows = np.concatenate([np.arange(meta.row_group(g).num_rows, dtype=np.int64) for g in range(meta.num_row_groups)] or [np.zeros(0, np.int64)])
    values = pq.read_table(path, columns=[label]).column(label).to_pylist()  # the label column alone
    return groups, rows, values


def index_parquet(shards: list[str], label: str, cache_dir, workers: int | None = None) -> ShardIndex:
    """The cached index of Parquet ``shards``: (shard, row group, row) and labels."""
    return _cached(shards, ("parquet", label), cache_dir, lambda: _join(shards, _parallel(_index_parquet, [(s, label) for s in shards], workers)))


def parquet_label_range(path: str, label: str) -> tuple[float, float] | None:
    """(min, max) of a numeric label column from the file's statistics (no data read), None if unknown."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    column = next((i for i in range(meta.num_columns) if meta.schema.column(i).path == label), None)
    if column is None:
        return None
    lows, highs = [], []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or not isinstance(stats.min, (int, float)):
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    return (min(lows), max(highs)) if lows else None


# -- shared ----------------------------------------------------------------------------

def _parallel(fn, jobs: list, workers: int | None) -> list:
    workers = min(len(jobs), workers or max(1, (os.cpu_count() or 2) - 1))
    if workers <= 1:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _join(shards: list[str], parts: list) -> ShardIndex:
    shard = np.concatenate([np.full(len(p[0]), i, dtype=np.int32) for i, p in enumerate(parts)])
    a = np.concatenate([p[0] for p in parts]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts]).astype(np.int64)
    values = [v for p in parts for v in p[2]]
    return ShardIndex(tuple(shards), shard, a, b, _label_array(values))


def _label_array(values: list) -> np.ndarray:
    """Labels as int64 when every value is an integer (also as text: "17"), else as text."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except (TypeError, ValueError):
        return np.array([str(v) for v in values])


def _cache_key(shards: list[str], what: tuple) -> str:
    digest = hashlib.sha256(repr((INDEX_VERSION, what)).encode())
    for s in shards:
        st = os.stat(s)
        digest.update(f"{os.path.abspath(s)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def index_path(shards: list[str], what: tuple, cache_dir) -> Path:
    return cache_root(cache_dir) / "index" / f"{what[0]}-{_cache_key(shards, what)}.npz"


def _cached(shards: list[str], what: tuple, cache_dir, build) -> ShardIndex:
    path = index_path(shards, what, cache_dir)
    arrays = load_arrays(path, ("shards", "shard", "a", "b", "labels"))
    if arrays is not None and tuple(arrays["shards"]) == tuple(shards):
        return ShardIndex(tuple(str(s) for s in arrays["shards"]), arrays["shard"], arrays["a"], arrays["b"], arrays["labels"])
    index = build()
    save_arrays(path, shards=np.array(shards), shard=index.shard, a=index.a, b=index.b, labels=index.labels)
    return index


# -- readers (picklable: sent to data-loader workers) -----------------------------------

@dataclass(frozen=True)
class TarReader:
    """Image members of tar shards, one ``pread`` each; ``where(row)`` names shard and offset."""

    shards: tuple[str, ...]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    _files: dict = field(default_factory=dict, compare=False, repr=False)

    def read_bytes(self, row: int) -> bytes:
        s = int(self.shard[row])
        fd = self._files.get(s)
        if fd is None:
            if len(self._files) >= OPEN_SHARDS:  # ImageNet-21k has thousands of shards: stay under ulimit -n
                os.close(self._files.pop(next(iter(self._files))))
            fd = self._files[s] = os.open(self.shards[s], os.O_RDONLY)
        return os.pread(fd, int(self.size[row]), int(self.offset[row]))

    def read(self, row: int):
        import io

        from PIL import Image

        return Image.open(io.BytesIO(self.read_bytes(row)))

    def where(self, row: int) -> str:
        return f"shard {self.shards[int(self.shard[row])]} at byte {int(self.offset[row])}"

    def __getstate__(self):  # file descriptors stay in the process that opened them
        return {**self.__dict__, "_files": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)


@dataclass(frozen=True)
class ParquetReader:
    """Image cells of Parquet shards (a binary column, or the hub's {bytes, path} struct)."""

    shards: tuple[str, ...]
    column: str
    shard: np.ndarray
    group: np.ndarray
    row: np.ndarray
    _open: dict = field(default_factory=dict, compare=False, repr=False)

    def read_bytes(self, row: int) -> bytes:
        import pyarrow.parquet as pq

        s, g = int(self.shard[row]), int(self.group[row])
        if self._open.get("at") != (s, g):  # keep the last row group read: neighbours are cheap
            self._open.clear()
            self._open.update(at=(s, g), column=pq.ParquetFile(self.shards[s]).read_row_group(g, columns=[self.column]).column(0))
        cell = self._open["column"][int(self.row[row])].as_py()
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return cell["bytes"]
            with open(cell["path"], "rb") as f:
                return f.read()
        return cell

    def read(self, row: int):
        import io

        from PIL import Image

        return Image.open(io.BytesIO(self.read_bytes(row)))

    def where(self, row: int) -> str:
        return f"shard {self.shards[int(self.shard[row])]} row group {int(self.group[row])} row {int(self.row[row])}"

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)
