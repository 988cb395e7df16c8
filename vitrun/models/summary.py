"""Table 1 of arXiv 2010.11929 for every registered model: sizes, parameters, tokens, FLOPs.

`describe(names)` gives one dict per model (the rows of `vitrun models`):

    name, family, layers, width, mlp, heads, patch, blocks, params, tokens, image_size,
    gflops, gmacs

* params: with a 1000-way head and no pre-logits, as timm counts (PAPER.md's numbers).
* layers: Transformer blocks (ViT, hybrid); for a ResNet its depth, 3·units + 2 ("R50").
* width: D (ViT, hybrid); for a ResNet the channels of its pooled features.
* patch: pixels per token side (a hybrid's is its CNN stride); tokens: with the class token.
* gflops: `forward_flops`, 2 FLOPs per multiply-accumulate, attention's matmuls included;
  gmacs = gflops / 2. timm's published GMACs leave attention's matmuls out (≈4% lower).
Every model is built on the meta device: nothing is allocated, ViT-H/14 takes about a second.
Counting all of them takes 10-30 s, so the rows at 224 px ship in `table1.json` (written by
`summary.write_precounted()`; a test recounts them) and `vitrun models` answers at once.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Iterable

from .flops import forward_flops
from .registry import names as registered_names
from .registry import spec as resolve

CAPTION = (
    "params: 1000-way head, no pre-logits (timm's count); tokens include the class token; "
    "GFLOPs: one image, forward, torch.utils.flop_counter (2 per multiply-accumulate, attention "
    "matmuls included); GMACs = GFLOPs / 2. ResNets: layers = depth, width = pooled channels."
)


PRECOUNTED = Path(__file__).with_name("table1.json")
PRECOUNTED_AT = {"image_size": 224, "num_classes": 1000}


def describe(names: Iterable[str] | None = None, image_size: int = 224, num_classes: int = 1000) -> list[dict[str, Any]]:
    """One row per model name (default: every `registry.names()`), in the order given.

    Rows at 224 px with a 1000-way head come from `table1.json`; others are counted.
    """
    known = _precounted() if {"image_size": image_size, "num_classes": num_classes} == PRECOUNTED_AT else {}
    return [known.get(name) or _row(name, image_size, num_classes) for name in (registered_names() if names is None else names)]


@cache
def _precounted() -> dict[str, dict[str, Any]]:
    if not PRECOUNTED.is_file():
        return {}
    return {row["name"]: row for row in json.loads(PRECOUNTED.read_text())["rows"]}


def _row(name: str, image_size: int, num_classes: int) -> dict[str, Any]:
    import torch

    from . import build

    family = resolve(name).family
    # The counted model is the one timm (and PAPER.md) counts: without the pre-logits layer.
    spec = resolve(name) if family == "resnet" else resolve(name, pre_logits=False)
    with torch.device("meta"):
        model = build(spec, num_classes, image_size)
    params = sum(p.numel() for p in model.parameters())
    flops = forward_flops(spec, image_size, num_classes)
    if family == "resnet":
        layers, width, mlp, heads, patch, tokens = 3 * sum(spec.blocks) + 2, model.num_features, None, None, None, None
    else:
        layers, width, mlp, heads = spec.depth, spec.width, spec.mlp, spec.heads
        patch = spec.patch * (spec.stride or 1)
        tokens = model.num_prefix_tokens + model.grid[0] * model.grid[1]
    return {
        "name": name, "family": family, "layers": layers, "width": width, "mlp": mlp, "heads": heads,
        "patch": patch, "blocks": list(spec.blocks) if spec.blocks else None, "params": params,
        "tokens": tokens, "image_size": image_size, "gflops": flops / 1e9, "gmacs": flops / 2e9,
    }


def write_precounted(path: Path = PRECOUNTED) -> None:
    """Count every registered model at 224 px and write the rows `describe` serves from."""
    rows = [_row(name, **PRECOUNTED_AT) for name in registered_names()]
    path.write_text(json.dumps({**PRECOUNTED_AT, "rows": rows}, indent=1) + "\n")
