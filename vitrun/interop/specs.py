"""Name a measured architecture with the paper's words, and say how two architectures differ.

A converted model gets the paper's name when its sizes are a row of Table 1 (arXiv 2010.11929;
`registry.VIT_SIZES`, `registry.RESNET_BLOCKS`), e.g. "ViT-B/16", "R50x1", "R50+ViT-B/16";
otherwise the nearest name plus overrides (`spec("ViT-B/16", depth=6)`), so the spec always
rebuilds the module exactly.

Torch-free, like `vitrun.models.registry`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from vitrun.models import registry
from vitrun.models.registry import ModelSpec

# Not architecture: a checkpoint is compatible with a recipe whatever these say. The head and the
# position-embedding grid are not in the spec at all (they follow num_classes and image_size).
IGNORED = frozenset({"name", "pre_logits", "dropout", "drop_path", "eps_convention"})


def vit_spec(transformer: dict[str, Any], options: dict[str, Any]) -> ModelSpec:
    """transformer: width, depth, heads, mlp, patch → "ViT-{size}/{patch}" plus overrides."""
    size, overrides = _nearest_size(transformer)
    return registry.spec(f"ViT-{size}/{transformer['patch']}", **overrides, **options)


def resnet_spec(blocks: tuple[int, ...], width_factor: float, options: dict[str, Any]) -> ModelSpec:
    """BiT: "R{depth}x{width}", with a `blocks` override when no paper depth has these stages."""
    depth = next((d for d, b in registry.RESNET_BLOCKS.items() if b == tuple(blocks)), None)
    overrides = {} if depth else {"blocks": tuple(blocks)}
    return registry.spec(f"R{depth or 50}x{width_factor:g}", **overrides, **options)


def hybrid_spec(blocks: tuple[int, ...], width_factor: float, transformer: dict[str, Any],
                options: dict[str, Any]) -> ModelSpec:
    """"R{depth}[x{width}]+ViT-{size}/{stride}"; blocks are the stages actually kept (folded)."""
    stride = 2 ** (len(blocks) + 1)  # root /4, then /2 per stage after the first
    if stride not in registry.HYBRID_STRIDES:
        raise ValueError(f"a hybrid stem with {len(blocks)} ResNet stages (stride {stride}) has no vitrun equivalent "
                         f"(strides {registry.HYBRID_STRIDES})")
    depth = next((d for d, b in registry.RESNET_BLOCKS.items() if registry.fold_blocks(b, stride) == tuple(blocks)), None)
    size, overrides = _nearest_size(transformer)
    if transformer["patch"] != 1:
        overrides["patch"] = transformer["patch"]
    if not depth:
        overrides["blocks"] = tuple(blocks)
    width = "" if width_factor == 1 else f"x{width_factor:g}"
    return registry.spec(f"R{depth or 50}{width}+ViT-{size}/{stride}", **overrides, **options)


def _nearest_size(transformer: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The Table 1 row needing the fewest overrides (none when the sizes are a row)."""
    keys = ("depth", "width", "mlp", "heads")  # the order of registry.VIT_SIZES' tuples

    def overrides(size: str) -> dict[str, Any]:
        row = dict(zip(keys, registry.VIT_SIZES[size]))
        return {k: transformer[k] for k in keys if transformer[k] != row[k]}

    best = min(registry.VIT_SIZES, key=lambda size: len(overrides(size)))
    return best, overrides(best)


def differences(found: ModelSpec, wanted: ModelSpec) -> list[str]:
    """Architecture fields that differ, as "field found ≠ wanted" (head, grid, IGNORED aside)."""
    if found.family != wanted.family:
        return [f"family {found.family} ≠ {wanted.family}"]
    out = []
    for f in fields(ModelSpec):
        if f.name in IGNORED:
            continue
        a, b = getattr(found, f.name), getattr(wanted, f.name)
        if a != b:
            out.append(f"{f.name} {_show(a)} ≠ {_show(b)}")
    return out


def describe(spec: ModelSpec) -> str:
    """One line: the name and the fields that decide compatibility, e.g. for error messages."""
    shown = [f"{f.name}={_show(getattr(spec, f.name))}" for f in fields(ModelSpec)
             if f.name not in IGNORED and f.name != "family" and getattr(spec, f.name) is not None]
    return f"{spec.name} ({', '.join(shown)})"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
