"""Independent references for the model tests: plain numpy or loops, no code from vitrun."""

from __future__ import annotations

import math

import numpy as np
import torch


def zoom_bilinear(grid: np.ndarray, new: tuple[int, int]) -> np.ndarray:
    """Bilinear resize, corners on corners (scipy.ndimage.zoom(order=1)). grid (h, w, D) -> (nh, nw, D)."""
    h, w, _ = grid.shape

    def axis(n_old, n_new):
        pos = np.arange(n_new) * (n_old - 1) / (n_new - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_old - 1)
        return lo, hi, pos - lo

    y0, y1, wy = axis(h, new[0])
    x0, x1, wx = axis(w, new[1])
    wy, wx = wy[:, None, None], wx[None, :, None]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x1] * wx
    bottom = grid[y1][:, x0] * (1 - wx) + grid[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def relative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, patches: int, cls: bool) -> torch.Tensor:
    """App. D.4 by the letter, one pair at a time: softmax((q·k + q·a[p_q − p_k]) / √d) v.

    q, k, v: (B, h, N, d) with N = cls + patches; table: (2·patches − 1 [+3], d), offsets first,
    then the class token's buckets (class→patch, patch→class, class→class).
    """
    B, h, N, d = q.shape
    logits = torch.empty(B, h, N, N, dtype=q.dtype)
    for i in range(N):
        for j in range(N):
            if cls and i == 0 and j == 0:
                row = 2 * patches + 1
            elif cls and i == 0:
                row = 2 * patches - 1
            elif cls and j == 0:
                row = 2 * patches
            else:
                row = (i - cls) - (j - cls) + patches - 1
            logits[:, :, i, j] = ((q[:, :, i] * k[:, :, j]).sum(-1) + (q[:, :, i] * table[row]).sum(-1)) / math.sqrt(d)
    return logits.softmax(-1) @ v
