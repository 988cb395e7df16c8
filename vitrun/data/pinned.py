"""Batches onto a CUDA device without making the host wait.

From pageable memory a CUDA copy is not asynchronous: the host first waits for the device to
finish its queue, every step, whatever `non_blocking` says. So on CUDA a batch is assembled
straight into pinned memory and copied without blocking: a fresh buffer each time, which
torch's pinned-memory cache hands back only once its copy is done. The pixels travel as uint8
(4x fewer bytes than float32) and are augmented or scaled on the device. The whole source is
not pinned once instead: indexing a pinned tensor gives a pageable one, so each batch would
still need a copy. Elsewhere (CPU training) everything stays as it was: plain indexing and cat.
"""

from __future__ import annotations

import numpy as np
import torch


def pins(device: torch.device) -> bool:
    """Batches for `device` are assembled in pinned memory (CUDA only)."""
    return device.type == "cuda"


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def gather(source: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """source[index] (rows of an in-memory tensor, (N, ...) -> (len(index), ...)), on `device`."""
    if not pins(device):
        return source[index]
    out = empty((len(index), *source.shape[1:]), source.dtype)
    torch.index_select(source, 0, index, out=out)
    return out.to(device, non_blocking=True)


def concat(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """torch.cat(parts) (the chunks loader workers made), on `device`; a plain cat of pinned
    chunks would give a pageable tensor."""
    if not pins(device):
        return torch.cat(parts)
    out = empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    torch.cat(parts, out=out)
    return out.to(device, non_blocking=True)


def stack(views: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """uint8 (3, S, S) views -> (B, 3, S, S) on `device`, stacked by numpy (single-threaded: see
    ``transforms.view``)."""
    arrays = [v.numpy() for v in views]
    if not pins(device):
        return torch.from_numpy(np.stack(arrays))
    out = empty((len(arrays), *arrays[0].shape), views[0].dtype)
    np.stack(arrays, out=out.numpy())
    return out.to(device, non_blocking=True)
