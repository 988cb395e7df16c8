"""Forward cost of one image, for the paper's compute axes (arXiv 2010.11929, Fig. 5, Table 6).

Counted by `torch.utils.flop_counter.FlopCounterMode`: 2 FLOPs per multiply-accumulate of
every matmul and convolution, attention's q·kᵀ and softmax·v included (timm's published GMACs
leave those two out, so ours run ~4% higher for ViT-B/16 at 224); with pos_embed="relative"
also the queries against the offset table. Norms, activations and
weight standardisation are not counted. The model is built on the meta device, so even
ViT-H/14 costs no memory and about a second.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Union

from .registry import ModelSpec

if TYPE_CHECKING:
    from torch import nn


def forward_flops(spec_or_model: Union[ModelSpec, "nn.Module"], image_size: int, num_classes: int = 1000) -> int:
    """FLOPs of one (1, 3, image_size, image_size) forward pass.

    A model is measured through its `spec` and its own `num_classes` (the argument is then
    ignored), so a fine-tuned model (pre-logits dropped, new head) counts as it runs.
    """
    if isinstance(spec_or_model, ModelSpec):
        return _count(spec_or_model, image_size, num_classes)
    return _count(spec_or_model.spec, image_size, spec_or_model.num_classes)


@lru_cache(maxsize=256)
def _count(spec: ModelSpec, image_size: int, num_classes: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import build

    with torch.device("meta"):
        model = build(spec, num_classes, image_size).eval()
        x = torch.empty(1, 3, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())
