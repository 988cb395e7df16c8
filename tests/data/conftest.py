"""Small real-format datasets built on disk: an image folder (PNG and JPEG, mixed sizes and
modes) and Hugging Face datasets (save_to_disk and Parquet), for the real loading code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "square", "stripes")
MODES = ("RGB", "L", "RGBA", "P")


def draw(label: int, index: int) -> Image.Image:
    """A recognisable image of class ``label``: size and colour mode vary with ``index``."""
    rng = np.random.default_rng([label, index])
    w, h = 20 + 7 * (index % 4), 18 + 5 * (index % 3)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = h / 2, w / 2, min(h, w) / 3
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    elif label == 1:
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    else:
        mask = (xx // 3) % 2 == 0
    base = rng.integers(0, 60, 3)
    pixels = np.where(mask[..., None], 255 - base, base).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    mode = MODES[index % len(MODES)]
    return image.convert(mode) if mode != "P" else image.convert("P", palette=Image.ADAPTIVE, colors=16)


def write_tree(root: Path, per_class: int, offset: int = 0) -> None:
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(offset, offset + per_class):
            image = draw(label, i)
            if i % 2 and image.mode in ("RGB", "L"):
                image.save(root / name / f"{i:03d}.jpg", quality=90)
            else:
                image.save(root / name / f"{i:03d}.png")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """train/ and test/ trees: 3 classes, 16 + 6 images each, PNG and JPEG, 4 colour modes."""
    root = tmp_path_factory.mktemp("folder")
    write_tree(root / "train", 16)
    write_tree(root / "test", 6, offset=100)
    return root


@pytest.fixture(scope="session")
def hf_splits():
    import datasets

    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=list(CLASSES)), "note": datasets.Value("string")})

    def split(count: int, offset: int):
        rows = [(draw(i % 3, offset + i), i % 3) for i in range(count)]
        return datasets.Dataset.from_dict({"img": [r[0] for r in rows], "fine_label": [r[1] for r in rows], "note": ["x"] * count}, features=features)

    return datasets.DatasetDict(train=split(48, 0), test=split(18, 100))


@pytest.fixture(scope="session")
def hf_arrow(tmp_path_factory, hf_splits) -> Path:
    path = tmp_path_factory.mktemp("arrow") / "ds"
    hf_splits.save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def hf_parquet(tmp_path_factory, hf_splits) -> Path:
    """The hub's layout: data/train-00000-of-00001.parquet, data/test-00000-of-00001.parquet."""
    folder = tmp_path_factory.mktemp("parquet") / "data"
    folder.mkdir()
    for name, split in hf_splits.items():
        split.to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))
    return folder


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path_factory, monkeypatch):
    """datasets' Arrow cache (parquet: builds one) goes to the session's temp folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-cache")
