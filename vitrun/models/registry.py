"""Model names → fully resolved architectures (arXiv 2010.11929, Table 1).

One size table decodes every name the paper uses:

* ``ViT-{size}/{patch}``            e.g. "ViT-B/16": a Vision Transformer (Table 1 sizes);
* ``R{depth}x{width}``              e.g. "R50x1", "R152x2": a BiT ResNet-v2 baseline;
* ``R{depth}[x{width}]+ViT-{size}/{stride}``  e.g. "R50+ViT-B/16": the hybrid, where the number
  after the slash is the CNN's total downsampling, not a patch size.

This module must not import torch: the CLI validates recipes with it before any model exists.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, fields
from typing import Any

# -- size tables -----------------------------------------------------------------------

# name → (depth, width, mlp, heads). Ti and S come from later work (DeiT, AugReg), same recipe.
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "Ti": (12, 192, 768, 3),
    "S": (12, 384, 1536, 6),
    "B": (12, 768, 3072, 12),
    "L": (24, 1024, 4096, 16),
    "H": (32, 1280, 5120, 16),
    # vitrun additions, NOT in the paper: sizes that train on a CPU in minutes on 32-px images
    # (used as "ViT-Mu/4", "ViT-Mi/4"); "Mu" = micro, "Mi" = mini.
    "Mu": (4, 64, 256, 4),
    "Mi": (6, 128, 512, 4),
}

# ResNet depth → bottleneck blocks per stage. 14 and 26 are the small depths of the official
# hybrid configs (R26+ViT-B/32); 200 is the paper's largest BiT baseline (R200x3, Table 6).
RESNET_BLOCKS: dict[int, tuple[int, ...]] = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}

# A hybrid's total stride: the root (conv /2 + pool /2) gives 4, each further stage 2 more.
HYBRID_STRIDES = (4, 8, 16, 32)

CLASSIFIERS = ("token", "gap")
# Appendix D.4 / Table 8: what the position information is (see vit.py and position.py) ...
POS_EMBEDS = ("1d", "2d", "relative", "none")
# ... and where the absolute kinds (1d, 2d) are added: once before the first block (default),
# at every block's input with a table per block, or at every block's input with one table.
POS_EMBED_AT = ("stem", "every-layer", "every-layer-shared")
# Weight-standardisation / GroupNorm eps of the ResNet parts (see models/resnet.py): "official"
# as the paper's code; "timm" to reproduce a timm module's outputs exactly (vitrun.interop).
EPS_CONVENTIONS = ("official", "timm")

_VIT_OPTIONS = (
    "width", "depth", "heads", "mlp", "patch", "classifier", "pos_embed", "pos_embed_at", "pre_logits",
    "dropout", "drop_path", "fc_norm", "class_token",
)
_RESNET_OPTIONS = ("blocks", "width_factor", "eps_convention")
OPTIONS: dict[str, tuple[str, ...]] = {
    "vit": _VIT_OPTIONS,
    "resnet": _RESNET_OPTIONS,
    "hybrid": _VIT_OPTIONS + _RESNET_OPTIONS + ("stride",),
}

_NUMBER = r"\d+(?:\.\d+)?"
_VIT_RE = re.compile(r"ViT-(?P<size>[A-Za-z]+)/(?P<patch>\d+)")
_RESNET_RE = re.compile(rf"R(?P<depth>\d+)x(?P<wf>{_NUMBER})")
_HYBRID_RE = re.compile(rf"R(?P<depth>\d+)(?:x(?P<wf>{_NUMBER}))?\+ViT-(?P<size>[A-Za-z]+)/(?P<stride>\d+)")


# -- the spec --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A fully resolved architecture; `asdict()` is JSON-serialisable and rebuilds it.

    Fields a family does not use stay None (e.g. `blocks` for a plain ViT).
    """

    name: str  # as given, e.g. "ViT-B/16"
    family: str  # "vit" | "resnet" | "hybrid"
    # Transformer (vit, hybrid)
    width: int | None = None  # hidden size D
    depth: int | None = None  # encoder blocks
    heads: int | None = None
    mlp: int | None = None  # MLP hidden size
    patch: int | None = None  # patch side in pixels (vit) or in feature-map cells (hybrid: 1)
    classifier: str | None = None  # "token": class token; "gap": mean of tokens after the final norm
    pos_embed: str | None = None  # "1d" (paper default) | "2d" | "relative" | "none" (App. D.4)
    # Where 1d/2d embeddings are added: "stem" (paper default) | "every-layer" | "every-layer-shared".
    # Relative attention biases every block by construction, so it takes only "stem".
    pos_embed_at: str | None = None
    pre_logits: bool | None = None  # Dense(width)+tanh before the head, as in pre-training
    dropout: float | None = None  # after every dense except q/k/v, and after adding positions
    # Stochastic depth, NOT in the paper (0 there): the rate grows linearly over the blocks from
    # 0 to this value, as timm/DeiT; each residual branch is dropped per sample while training.
    drop_path: float | None = None
    # False (official): the final LayerNorm normalises every token, then the classifier pools.
    # True (timm's GAP default): pool first, then a LayerNorm named `fc_norm`; for interop.
    fc_norm: bool | None = None
    # Prepend a class token. Default: only for classifier "token". With "gap" it is carried
    # along and the patch tokens alone are averaged (timm's global_pool="avg" with a class token).
    class_token: bool | None = None
    # ResNet (resnet, hybrid)
    blocks: tuple[int, ...] | None = None  # bottleneck units per stage (hybrid: after folding)
    width_factor: float | None = None  # channel multiplier: base = round(64 * width_factor)
    eps_convention: str | None = None  # "official" | "timm": numerics only, same parameters
    # Hybrid
    stride: int | None = None  # the CNN's total downsampling before the 1x1 patch embedding

    def __post_init__(self) -> None:
        # Runs for spec() and for ModelSpec(**asdict(...)) alike, so a stored spec is re-checked.
        if self.family not in OPTIONS:
            raise ValueError(f"unknown model family {self.family!r} for {self.name}")
        applies = ("name", "family") + OPTIONS[self.family]
        unused = [f.name for f in fields(self) if f.name not in applies and getattr(self, f.name) is not None]
        if unused:
            raise ValueError(f"{self.name}: options {unused} do not apply to a {self.family} model")
        if self.family in ("vit", "hybrid"):
            self._check_transformer()
        if self.family in ("resnet", "hybrid"):
            self._check_resnet()
        if self.family == "hybrid":
            _check(self.stride in HYBRID_STRIDES, self.name, f"stride must be one of {HYBRID_STRIDES}, got {self.stride!r}")
            stages = _stages_for_stride(self.stride)
            _check(len(self.blocks) == stages, self.name, f"stride {self.stride} keeps {stages} ResNet stage(s), but blocks={self.blocks}")

    def _check_transformer(self) -> None:
        for key in ("width", "depth", "heads", "mlp", "patch"):
            _check(_is_int(getattr(self, key)) and getattr(self, key) > 0, self.name, f"{key} must be a positive integer, got {getattr(self, key)!r}")
        _check(self.width % self.heads == 0, self.name, f"width {self.width} is not divisible by heads {self.heads}")
        _check(self.classifier in CLASSIFIERS, self.name, f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        _check(self.pos_embed in POS_EMBEDS, self.name, f"pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        _check(self.pos_embed_at in POS_EMBED_AT, self.name, f"pos_embed_at must be one of {POS_EMBED_AT}, got {self.pos_embed_at!r}")
        # Table 8 has no "every layer" entries for none and relative: nothing to add, or already per block.
        _check(self.pos_embed_at == "stem" or self.pos_embed in ("1d", "2d"), self.name,
               f"pos_embed_at={self.pos_embed_at!r} needs pos_embed '1d' or '2d', got pos_embed={self.pos_embed!r} "
               + ("(it adds nothing)" if self.pos_embed == "none" else "(relative attention already acts in every block)"))
        _check(self.pos_embed != "2d" or self.width % 2 == 0, self.name, f"pos_embed='2d' needs an even width (X and Y tables of width/2), got width {self.width}")
        _check(isinstance(self.pre_logits, bool), self.name, f"pre_logits must be true or false, got {self.pre_logits!r}")
        _check(isinstance(self.fc_norm, bool), self.name, f"fc_norm must be true or false, got {self.fc_norm!r}")
        _check(isinstance(self.class_token, bool), self.name, f"class_token must be true or false, got {self.class_token!r}")
        _check(self.class_token or self.classifier != "token", self.name, 'classifier "token" needs class_token = true')
        _check(_is_number(self.dropout) and 0 <= self.dropout < 1, self.name, f"dropout must be in [0, 1), got {self.dropout!r}")
        _check(_is_number(self.drop_path) and 0 <= self.drop_path < 1, self.name, f"drop_path must be in [0, 1), got {self.drop_path!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "drop_path", float(self.drop_path))

    def _check_resnet(self) -> None:
        blocks = self.blocks
        _check(isinstance(blocks, (tuple, list)) and len(blocks) > 0 and all(_is_int(b) and b > 0 for b in blocks),
               self.name, f"blocks must be a non-empty list of positive integers, got {blocks!r}")
        _check(_is_number(self.width_factor) and round(64 * self.width_factor) >= 1, self.name,
               f"width_factor must be a positive number (at least 1/64), got {self.width_factor!r}")
        # Canonical types: TOML gives lists and ints; a resolved spec must hash and compare the same.
        object.__setattr__(self, "blocks", tuple(blocks))
        object.__setattr__(self, "width_factor", float(self.width_factor))
        if self.eps_convention is None:  # a spec stored before the option existed
            object.__setattr__(self, "eps_convention", "official")
        _check(self.eps_convention in EPS_CONVENTIONS, self.name, f"eps_convention must be one of {EPS_CONVENTIONS}, got {self.eps_convention!r}")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _stages_for_stride(stride: int) -> int:
    """Stages a hybrid keeps: the root gives /4, every stage after the first /2 more."""
    return int(math.log2(stride)) - 1


def fold_blocks(blocks: tuple[int, ...], stride: int) -> tuple[int, ...]:
    """Cut a ResNet at total `stride`; the removed stages' units move into the last kept stage.

    (3, 4, 6, 3) at 16 → (3, 4, 9), the official R50+ViT-B/16; at 32 → unchanged.
    """
    keep = _stages_for_stride(stride)
    return tuple(blocks[: keep - 1]) + (sum(blocks[keep - 1 :]),)


# -- names -----------------------------------------------------------------------------

def names() -> list[str]:
    """Canonical example names: every model the paper reports, then the CPU sizes."""
    return [
        "ViT-B/16", "ViT-B/32", "ViT-L/16", "ViT-L/32", "ViT-H/14", "ViT-Ti/16", "ViT-S/16", "ViT-S/32",
        "R50x1", "R50x2", "R101x1", "R101x3", "R152x1", "R152x2", "R152x4", "R200x3",
        "R50+ViT-B/16", "R50+ViT-B/32", "R50+ViT-L/16", "R50+ViT-L/32",
        "ViT-Mu/4", "ViT-Mi/4", "R14x0.25", "R14x0.25+ViT-Mu/8",
    ]


def spec(name: str, **overrides: Any) -> ModelSpec:
    """Resolve a paper name plus options into a checked `ModelSpec`.

    Raises ValueError for unknown names and options (with a suggestion) and for bad values.
    """
    family, defaults = _decode(name)
    allowed = OPTIONS[family]
    for key in overrides:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "options: " + ", ".join(allowed)
            raise ValueError(f"unknown option {key!r} for {name} ({hint})")
    options = {**defaults, **overrides}
    if family in ("vit", "hybrid") and "class_token" not in overrides:
        options["class_token"] = options["classifier"] == "token"
    if family == "hybrid" and "blocks" not in overrides and options["stride"] in HYBRID_STRIDES:
        # Cut the depth's stages at the (possibly overridden) stride.
        options["blocks"] = fold_blocks(options["blocks"], options["stride"])
    return ModelSpec(name=name, family=family, **options)


def _decode(name: str) -> tuple[str, dict[str, Any]]:
    """name → (family, default options)."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if m := _VIT_RE.fullmatch(name):
        return "vit", {**_transformer(name, m["size"]), "patch": int(m["patch"])}
    if m := _RESNET_RE.fullmatch(name):
        return "resnet", {"blocks": _resnet_blocks(name, m["depth"]), "width_factor": float(m["wf"]), "eps_convention": "official"}
    if m := _HYBRID_RE.fullmatch(name):
        stride = int(m["stride"])
        if stride not in HYBRID_STRIDES:
            raise ValueError(f"{name}: a hybrid's stride (the number after '/') must be one of {HYBRID_STRIDES}")
        return "hybrid", {
            **_transformer(name, m["size"]),
            # The feature map is already downsampled `stride` times: 1x1 patches, as official.
            "patch": 1,
            "blocks": _resnet_blocks(name, m["depth"]),  # spec() folds them at the stride
            "width_factor": float(m["wf"] or 1),  # "R50" means R50x1
            "eps_convention": "official",
            "stride": stride,
        }
    raise ValueError(f"unknown model {name!r}{_suggest(name)}")


def _transformer(name: str, size: str) -> dict[str, Any]:
    if size not in VIT_SIZES:
        raise ValueError(f"unknown model {name!r}{_suggest(name)} (ViT sizes: {', '.join(VIT_SIZES)})")
    depth, width, mlp, heads = VIT_SIZES[size]
    return {
        "width": width, "depth": depth, "heads": heads, "mlp": mlp,
        "classifier": "token",
        "pos_embed": "1d",
        "pos_embed_at": "stem",
        # The paper pre-trains with the pre-logits layer; fine-tuning drops it (App. B.1.1).
        "pre_logits": True,
        # Table 3 ties dropout to the pre-training set (0 on JFT, 0.1 on ImageNet/-21k), so
        # recipes set it; the official model configs' per-model 0.1 (L/16, H/14, R50+B/16) is
        # not copied here.
        "dropout": 0.0,
        "drop_path": 0.0,
        "fc_norm": False,
    }


def _resnet_blocks(name: str, depth: str) -> tuple[int, ...]:
    if int(depth) not in RESNET_BLOCKS:
        raise ValueError(f"unknown model {name!r}: ResNet depth {depth} is not one of {', '.join(map(str, RESNET_BLOCKS))}")
    return RESNET_BLOCKS[int(depth)]


def _suggest(name: str) -> str:
    # Compare case-insensitively so "vit-b/16" finds "ViT-B/16" rather than a same-score neighbour.
    canonical = {n.lower(): n for n in names()}
    close = difflib.get_close_matches(name.lower(), list(canonical), n=1, cutoff=0.5)
    return f" (did you mean {canonical[close[0]]!r}?)" if close else ""
