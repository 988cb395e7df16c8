"""Build a vitrun model around converted weights: head, pre-logits and resolution adapted.

Shared by every way in (timm modules, official `.npz` files, recipe `init`), so they all follow
the same rules, those of the official fine-tuning code (vit_jax `checkpoint.load_pretrained`,
arXiv 2010.11929 App. B.1.1):

1. the head is kept only when asked and its shape fits, else it starts at zero;
2. the pre-logits layer is kept when the spec has one, dropped when it has none; a spec that
   wants one the checkpoint lacks gets a freshly initialised layer;
3. position embeddings of another grid are resampled in 2-D (bilinear, corners to corners,
   as official `scipy.ndimage.zoom(order=1)`); the class-token entry is kept as is.
"""

from __future__ import annotations

import torch
from torch import nn

from vitrun import models
from vitrun.models.registry import ModelSpec
from vitrun.models.position import resample_state


class FeatureHead(nn.Identity):
    """The head of a model with `num_classes=0` (timm's convention): logits = features (B, D).

    Holds an empty, non-persistent `weight` so `reset_head(n)`, which builds the new head on the
    old one's device and dtype, works as for any other model.
    """

    def __init__(self, like: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", like.new_empty(0), persistent=False)


def build_loaded(
    spec: ModelSpec,
    state: dict[str, torch.Tensor],
    num_classes: int,
    image_size: int,
    keep_head: bool,
) -> nn.Module:
    """A model of `spec` with `state` (vitrun parameter names) loaded; see the module's rules.

    num_classes=0 gives a feature extractor (`FeatureHead`). Raises ValueError when `state`
    does not fit the spec (other than head, pre-logits and grid).
    """
    model = models.build(spec, max(num_classes, 1), image_size)
    if num_classes == 0:
        model.head = FeatureHead(next(model.parameters()))
        model.num_classes = 0
    state = dict(state)
    head = {k: state.pop(k) for k in ("head.weight", "head.bias") if k in state}
    if keep_head and head and num_classes and head["head.weight"].shape[0] == num_classes:
        state.update(head)
    pre_logits = {k: state.pop(k) for k in list(state) if k.startswith("pre_logits.")}
    if spec.family != "resnet" and spec.pre_logits:
        state.update(pre_logits)
    unexpected = sorted(set(state) - set(model.state_dict()))
    if unexpected:
        raise ValueError(f"the weights do not fit {spec.name}: " + "; ".join(f"unexpected {k}" for k in unexpected[:5]))
    try:
        state, _ = resample_state(model, state)  # another grid: positions resampled in 2-D
    except ValueError as err:  # a shape that no resampling explains
        raise ValueError(f"the weights do not fit {spec.name}: {err}") from None
    missing = model.load_state_dict(state, strict=False).missing_keys
    # Only what rules 1-2 leave at its fresh initialisation may be missing.
    allowed = ("head.", "pre_logits.")
    absent = [k for k in missing if not k.startswith(allowed)]
    if absent:
        raise ValueError(f"the weights lack {len(absent)} tensor(s) of {spec.name}, e.g. {absent[0]}")
    return model
