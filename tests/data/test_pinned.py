"""Batches onto CUDA through pinned memory (data/pinned.py): chosen on CUDA only, and the same
batches either way. Without a GPU the pinned buffers are faked (plain memory) and the device is
the CPU: what is checked is that every batch path assembles in the buffers and gives the values
of the plain path."""

from __future__ import annotations

import pytest
import torch

from vitrun import data
from vitrun.data import loader, pinned
from vitrun.data.imageset import ImageSet


def _fake_cuda(monkeypatch) -> list[tuple]:
    """From here on pretend the device is CUDA; records each pinned buffer asked for (shape, dtype)."""
    made = []

    def empty(shape, dtype):
        made.append((tuple(shape), dtype))
        return torch.empty(shape, dtype=dtype)

    monkeypatch.setattr(pinned, "pins", lambda device: True)
    monkeypatch.setattr(pinned, "empty", empty)
    return made


def _in_memory() -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (20, 3, 12, 12), dtype=torch.uint8, generator=gen), torch.arange(20) % 3, ("a", "b", "c"))


def test_only_cuda_batches_are_pinned():
    assert pinned.pins(torch.device("cuda", 0)) and not pinned.pins(torch.device("cpu"))


def test_the_cpu_path_asks_for_no_pinned_memory(monkeypatch):
    monkeypatch.setattr(pinned, "empty", lambda *a: pytest.fail("pinned memory on the CPU path"))
    images = _in_memory()
    loader.train_batches(images, 8, 8, 2, seed=1, crop="inception")(0)
    list(loader.eval_batches(images, 8, 8))


def test_in_memory_batches_are_gathered_in_pinned_memory_and_equal_the_plain_ones(monkeypatch):
    images = _in_memory()
    plain_train = loader.train_batches(images, 8, 8, 2, seed=1, crop="inception", part=(1, 2))(1)
    plain_eval = list(loader.eval_batches(images, 8, 8))
    made = _fake_cuda(monkeypatch)
    x, y = loader.train_batches(images, 8, 8, 2, seed=1, crop="inception", part=(1, 2))(1)
    assert made == [((4, 3, 12, 12), torch.uint8), ((4,), torch.int64)]  # uint8 rows cross, not float32
    assert torch.equal(x, plain_train[0]) and torch.equal(y, plain_train[1])
    made.clear()
    pinned_eval = list(loader.eval_batches(images, 8, 8))
    assert [shape for shape, _ in made] == [(8, 3, 12, 12), (8,), (8, 3, 12, 12), (8,), (4, 3, 12, 12), (4,)]
    assert len(pinned_eval) == len(plain_eval) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(pinned_eval, plain_eval))


def test_loader_chunks_are_joined_in_pinned_memory(image_folder, monkeypatch):
    images = data.load(f"folder:{image_folder}", image_size=16).train
    settings = loader.LoaderSettings(workers=0)
    plain = loader.train_batches(images, 16, 6, 2, seed=4, crop="inception", settings=settings)(0)
    made = _fake_cuda(monkeypatch)
    x, y = loader.train_batches(images, 16, 6, 2, seed=4, crop="inception", settings=settings)(0)
    assert made == [((6, 3, 16, 16), torch.uint8), ((6,), torch.int64)]
    assert torch.equal(x, plain[0]) and torch.equal(y, plain[1])


def test_stacked_views_equal_numpys_stack(monkeypatch):
    views = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(3)]
    made = _fake_cuda(monkeypatch)
    out = pinned.stack(views, torch.device("cpu"))
    assert made == [((3, 3, 4, 4), torch.uint8)] and torch.equal(out, torch.stack(views))
