"""Position information for ViT (arXiv 2010.11929, §3.1, §3.2 and Appendix D.4 / Table 8).

Pure functions on position tensors; the parameters themselves live on the model (vit.py):

* "1d" `pos_embed` (L, prefix + gh*gw, D): one learned vector per token, row-major patches.
* "2d" `pos_embed_x` (L, gw, D/2) and `pos_embed_y` (L, gh, D/2): a patch at column x, row y
  gets concat(X[x], Y[y]) (`grid_2d`); the class token has its own `pos_embed_cls` (L, 1, D),
  the 2-D counterpart of the 1d table's first row.
* "relative" `blocks.i.attn.relative_pos` (2·gh·gw − 1 [+ 3], D/h): the paper's 1-D relative
  attention (`relative_index`, `relative_bias`). Decided where the paper is silent (reasons
  below): one table per block, shared by the heads (Shaw et al. 2018); the bias is
  q · a[p_q − p_k] / √(D/h); the class token reads three learned buckets of its own
  (class → patch, patch → class, class → class). It acts in every block by construction, so
  it takes only `pos_embed_at="stem"` (Table 8 reports it in that column only).

L is the number of tables: 1 (added at the stem, or shared by every block) or depth.

Resolution change (fine-tuning at 384 after pre-training at 224, §3.2): patch-grid embeddings
are resampled in 2-D, corners mapped to corners (align_corners=True), which for "bilinear" is
the official `scipy.ndimage.zoom(order=1)`; "bicubic" on request (no antialiasing, unlike
timm's state-dict filter). Prefix (class-token) embeddings are kept as they are.
`load_resampled` loads a checkpoint trained at another resolution in one call.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("bilinear", "bicubic", "nearest")
# Relative attention's buckets for the class token, which has no place in the patch sequence:
# (class → patch, patch → class, class → class), each one learned vector, after the 2L − 1 offsets.
PREFIX_BUCKETS = 3


# -- absolute: 1d and 2d ------------------------------------------------------------------

def grid_2d(x_table: torch.Tensor, y_table: torch.Tensor) -> torch.Tensor:
    """App. D.4's 2-D embedding: x_table (L, gw, D/2), y_table (L, gh, D/2) -> (L, gh*gw, D).

    The patch in row y, column x gets concat(X[x], Y[y]); patches in row-major order.
    """
    L, gw, half = x_table.shape
    gh = y_table.shape[1]
    x = x_table[:, None].expand(L, gh, gw, half)  # (L, gh, gw, D/2): same X along a column
    y = y_table[:, :, None].expand(L, gh, gw, half)  # (L, gh, gw, D/2): same Y along a row
    return torch.cat([x, y], dim=-1).reshape(L, gh * gw, 2 * half)  # (L, gh*gw, D)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Interpolate the patch-grid part of a 1-D position embedding in 2-D; prefix kept as is.

    pos_embed: (L, prefix + gh*gw, D) -> (L, prefix + nh*nw, D), each of the L tables on its
    own. Bilinear with corners mapped to corners (align_corners=True) equals the official
    `scipy.ndimage.zoom(order=1)`.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    (gh, gw), (L, D) = old_grid, (pos_embed.shape[0], pos_embed.shape[-1])
    if grid.shape[1] != gh * gw:
        raise ValueError(f"position embedding has {grid.shape[1]} grid tokens, not {gh}x{gw}")
    grid = grid.reshape(L, gh, gw, D).permute(0, 3, 1, 2)  # (L, D, gh, gw)
    grid = _interpolate(grid, tuple(new_grid), mode)  # (L, D, nh, nw)
    grid = grid.permute(0, 2, 3, 1).reshape(L, new_grid[0] * new_grid[1], D)  # (L, nh*nw, D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


def resample_axis(table: torch.Tensor, new_length: int, mode: str = "bilinear") -> torch.Tensor:
    """One axis table of the 2-D embedding: (L, n, D/2) -> (L, new_length, D/2).

    Resampling the X and Y tables on their own equals resampling the assembled 2-D grid
    (bilinear and bicubic weights are separable and sum to one), so "2d" stays "2d".
    """
    L, n, half = table.shape
    image = table.permute(0, 2, 1)[..., None]  # (L, D/2, n, 1): a one-column image
    image = _interpolate(image, (new_length, 1), mode)  # (L, D/2, new_length, 1)
    return image[..., 0].permute(0, 2, 1).to(table.dtype)  # (L, new_length, D/2)


def _interpolate(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """image (L, C, h, w) -> (L, C, *size); corners on corners for the (bi)linear/cubic modes."""
    corners = True if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
    return F.interpolate(image.float(), size=size, mode=mode, align_corners=corners)


# -- relative ------------------------------------------------------------------------------
#
# Decisions where App. D.4 is silent (it says: every (query, key) pair has an offset p_q − p_k
# between 1-D patch positions, each offset an embedding; an extra attention of the query
# against those embeddings as keys gives logits added to the content logits before softmax):
# * Shared by the heads, one table per block (Shaw et al. 2018, the relative attention the
#   paper's wording follows): each entry has the head width D/h, and head h's bias is
#   q_h · a[p_q − p_k] / √(D/h), scaled like the content logits it is added to.
# * Offsets are between row-major patch indices: 2·gh·gw − 1 of them ("1-D relative").
# * The class token has no offset: it gets three learned buckets of its own (PREFIX_BUCKETS).
# * Initialised normal(0.02), like the absolute embeddings.

def relative_rows(grid: tuple[int, int], num_prefix_tokens: int) -> int:
    """Entries of a relative table: 2·gh·gw − 1 patch offsets, + 3 class-token buckets."""
    return 2 * grid[0] * grid[1] - 1 + (PREFIX_BUCKETS if num_prefix_tokens else 0)


def relative_index(grid: tuple[int, int], num_prefix_tokens: int, device: Any = None) -> torch.Tensor:
    """Which table entry each (query, key) pair reads: (N, N) long, N = prefix + gh*gw.

    Patch pairs read offset p_q − p_k at row p_q − p_k + L − 1 (L = gh*gw, so rows 0 … 2L − 2);
    pairs involving the class token read the buckets after them.
    """
    if num_prefix_tokens > 1:
        raise ValueError("relative position embeddings support at most one prefix (class) token")
    L = grid[0] * grid[1]
    p = torch.arange(L, device=device)
    index = p[:, None] - p[None, :] + (L - 1)  # (L, L): query's row, key's column
    if num_prefix_tokens:
        cls_to_patch, patch_to_cls, cls_to_cls = 2 * L - 1, 2 * L, 2 * L + 1
        index = F.pad(index, (1, 0, 1, 0), value=cls_to_cls)  # (1 + L, 1 + L)
        index[0, 1:], index[1:, 0] = cls_to_patch, patch_to_cls
    return index


def relative_bias(q: torch.Tensor, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The relative attention's logits, to add to the content logits (SDPA's `attn_mask`).

    q: (B, h, N, d) queries; table: (R, d) offset embeddings; index: (N, N) -> (B, h, N, N).
    """
    B, h, N, d = q.shape
    logits = q @ table.t() / math.sqrt(d)  # (B, h, N, R): every query against every offset
    return logits.gather(-1, index.expand(B, h, N, N))  # (B, h, N, N): pair (i, j) reads index[i, j]


def resample_relative(
    table: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int,
    mode: str = "bilinear",
) -> torch.Tensor:
    """A relative table for another patch grid: (2·gh·gw − 1 [+3], d) -> (2·nh·nw − 1 [+3], d).

    A 1-D offset is not a fixed 2-D displacement (on a 14-wide grid, +13 is "13 right" or
    "1 down, 1 left"), so the table is resampled through 2-D displacements:
    1. the old table is read as an image over displacements (dy, dx) ∈ [−(gh−1), gh−1] ×
       [−(gw−1), gw−1], pixel (dy, dx) = table[dy·gw + dx];
    2. each new offset is read as the displacement most patch pairs with that offset have;
    3. that displacement is scaled to the old grid corners to corners (δ·(g−1)/(n−1), as the
       absolute embeddings are) and the image is sampled there (`mode`, via grid_sample).
    The same grid gives the same table back; class-token buckets are kept as they are.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    (gh, gw), (nh, nw) = old_grid, new_grid
    L, L_new = gh * gw, nh * nw
    patch, prefix = table[: 2 * L - 1], table[2 * L - 1 :]
    if patch.shape[0] != 2 * L - 1 or prefix.shape[0] != relative_rows(old_grid, num_prefix_tokens) - (2 * L - 1):
        raise ValueError(f"relative table has {table.shape[0]} rows, not {relative_rows(old_grid, num_prefix_tokens)} for grid {gh}x{gw}")
    dy = torch.arange(-(gh - 1), gh, device=table.device)[:, None]
    dx = torch.arange(-(gw - 1), gw, device=table.device)[None, :]
    image = patch[(dy * gw + dx) + (L - 1)]  # (2gh−1, 2gw−1, d): the table over displacements
    image = image.permute(2, 0, 1)[None].float()  # (1, d, 2gh−1, 2gw−1)

    # Step 2: offset o = dy·nw + dx splits as (⌊o/nw⌋, o mod nw) or one row further, dx − nw;
    # keep the split with more patch pairs, then the one with the smaller |dx| (symmetric in ±o).
    o = torch.arange(-(L_new - 1), L_new, device=table.device)
    rows = torch.stack([torch.div(o, nw, rounding_mode="floor"), torch.div(o, nw, rounding_mode="floor") + 1])  # (2, 2L'−1)
    cols = o[None] - rows * nw  # (2, 2L'−1)
    pairs = (nh - rows.abs()).clamp(min=0) * (nw - cols.abs()).clamp(min=0)  # (2, 2L'−1)
    second = (pairs[1] > pairs[0]) | ((pairs[1] == pairs[0]) & (cols[1].abs() < cols[0].abs()))
    row, col = torch.where(second, rows[1], rows[0]), torch.where(second, cols[1], cols[0])  # (2L'−1,) each

    # Step 3: in grid_sample's [−1, 1] coordinates with align_corners=True, displacement ±(g−1)
    # of the old image sits at ±1, so the scaled displacement δ·(g−1)/(n−1) is simply δ/(n−1).
    y = row / (nh - 1) if nh > 1 else torch.zeros_like(row, dtype=torch.float)
    x = col / (nw - 1) if nw > 1 else torch.zeros_like(col, dtype=torch.float)
    where = torch.stack([x, y], dim=-1).float()[None, None]  # (1, 1, 2L'−1, 2): (x, y) order
    sampled = F.grid_sample(image, where, mode=mode, padding_mode="border", align_corners=True)  # (1, d, 1, 2L'−1)
    patch_new = sampled[0, :, 0].t().to(table.dtype)  # (2L'−1, d)
    return torch.cat([patch_new, prefix], dim=0)


# -- loading a checkpoint of another resolution ----------------------------------------------

def load_resampled(model: nn.Module, state_dict: Mapping[str, torch.Tensor], mode: str = "bilinear") -> list[str]:
    """Load `state_dict` (trained at another resolution) into `model`, resampling positions.

    See `resample_state`; missing or extra keys raise as in `load_state_dict`. Returns the
    resampled keys.
    """
    state, resampled = resample_state(model, state_dict, mode)
    model.load_state_dict(state)
    return resampled


def resample_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], mode: str = "bilinear") -> tuple[dict[str, torch.Tensor], list[str]]:
    """`state_dict` with its position tensors resampled to `model`'s grid, and their keys.

    Every position tensor whose shape differs from the model's is resampled to the model's
    grid (1d `pos_embed`, 2d `pos_embed_x`/`pos_embed_y`, relative `…attn.relative_pos`); the
    checkpoint's grid is read from the shapes, square as vitrun's images are. Any other shape
    mismatch raises ValueError naming the key; keys the model lacks are passed through.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    target = model.state_dict()
    prefix_tokens = getattr(model, "num_prefix_tokens", 0)
    state, resampled = dict(state_dict), []
    for key, value in state_dict.items():
        if key not in target or target[key].shape == value.shape:
            continue  # load_state_dict reports unknown keys
        want = target[key].shape
        if key == "pos_embed" and value.ndim == 3 and value.shape[0::2] == want[0::2]:
            old = _square(value.shape[1] - prefix_tokens, key)
            state[key] = resample_pos_embed(value, model.grid, old, prefix_tokens, mode)
        elif key in ("pos_embed_x", "pos_embed_y") and value.ndim == 3 and value.shape[0::2] == want[0::2]:
            state[key] = resample_axis(value, want[1], mode)
        elif key.endswith("attn.relative_pos") and value.ndim == 2 and value.shape[1] == want[1]:
            extra = PREFIX_BUCKETS if prefix_tokens else 0
            old = _square((value.shape[0] - extra + 1) // 2, key)
            state[key] = resample_relative(value, model.grid, old, prefix_tokens, mode)
        else:
            raise ValueError(
                f"{key}: checkpoint shape {tuple(value.shape)} does not fit the model's {tuple(want)} "
                "(only position embeddings are resampled)"
            )
        resampled.append(key)
    return state, resampled


def _square(tokens: int, key: str) -> tuple[int, int]:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{key}: {tokens} grid positions are not a square grid; cannot tell its shape")
    return side, side
