"""Official Google checkpoints (`.npz`) ⇄ vitrun models.

Layouts read (the architecture is inferred from the arrays' names and shapes):

* vit_jax ViT (google-research/vision_transformer): `embedding/kernel` (HWIO), `cls`,
  `Transformer/posembed_input/pos_embedding` (class token included),
  `Transformer/encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
  LayerNorm_2, MlpBlock_3/Dense_0|1}`, `Transformer/encoder_norm`, `pre_logits`, `head`;
  optionally under `opt/target/`.
* big_vision ViT: prefix `params/`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`,
  `MlpBlock_0`, a top-level `pos_embedding` that leaves the class token out (read here as a
  zero position for it, which is the same network), blocks possibly stacked as
  `Transformer/encoderblock/...` with a leading depth axis.
* the hybrid: the ViT keys plus `conv_root`, `gn_root`, `block{i}/unit{j}/{conv,gn}{1,2,3}`,
  `conv_proj`, `gn_proj`.
* BiT ResNet (google-research/big_transfer): `resnet/root_block/standardized_conv2d/kernel`,
  `resnet/block{i}/unit{jj}/{a,b,c}/{standardized_conv2d, group_norm}`, `a/proj`,
  `resnet/group_norm`, `resnet/head/conv2d`.

The same tables are read by timm (`vision_transformer._load_weights`, `resnetv2._load_weights`);
`to_npz` writes the vit_jax and BiT layouts, so timm's own loaders are a test oracle. Kernels are
HWIO / in×out (transposed for PyTorch); q, k and v are separate (D, heads, D/heads) kernels
that become the fused `qkv`. Files are read with `allow_pickle=False`: a checkpoint never runs code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitrun.models import registry
from vitrun.models.registry import ModelSpec

from . import specs
from .transfer import build_loaded

BIT_ROOT = "resnet/root_block/standardized_conv2d/kernel"
_PREFIXES = ("", "opt/target/", "params/")


# -- the name table ----------------------------------------------------------------------------
# (npz key, vitrun key, kind); kind says how the array is laid out (see `_to_torch`).

def _table(spec: ModelSpec, big_vision: bool = False, prefix: str = "") -> list[tuple[str, str, str]]:
    if spec.family == "resnet":
        return _bit_table(spec)
    p, rows = prefix, []
    if spec.family == "hybrid":
        rows += _hybrid_stem_table(spec, p)
    rows += [(f"{p}embedding/kernel", "patch_embed.proj.weight", "conv"), (f"{p}embedding/bias", "patch_embed.proj.bias", "copy")]
    if spec.class_token:
        rows.append((f"{p}cls", "cls_token", "copy"))
    if spec.pos_embed == "1d":
        rows.append((f"{p}pos_embedding" if big_vision else f"{p}Transformer/posembed_input/pos_embedding", "pos_embed",
                     "pos_no_cls" if big_vision and spec.class_token else "copy"))
    mha, ln2, mlp = (0, 1, 0) if big_vision else (1, 2, 3)
    for i in range(spec.depth):
        b, o = f"{p}Transformer/encoderblock_{i}/", f"blocks.{i}."
        a = f"{b}MultiHeadDotProductAttention_{mha}/"
        rows += _norm(f"{b}LayerNorm_0", f"{o}norm1")
        for j, name in enumerate(("query", "key", "value")):
            rows += [(f"{a}{name}/kernel", f"{o}attn.qkv.weight", f"qkv_kernel{j}"), (f"{a}{name}/bias", f"{o}attn.qkv.bias", f"qkv_bias{j}")]
        rows += [(f"{a}out/kernel", f"{o}attn.proj.weight", "out_kernel"), (f"{a}out/bias", f"{o}attn.proj.bias", "copy")]
        rows += _norm(f"{b}LayerNorm_{ln2}", f"{o}norm2")
        for j in (0, 1):
            rows += _dense(f"{b}MlpBlock_{mlp}/Dense_{j}", f"{o}mlp.fc{j + 1}")
    rows += _norm(f"{p}Transformer/encoder_norm", "norm")
    if spec.pre_logits:
        rows += _dense(f"{p}pre_logits", "pre_logits.fc")
    return rows + _dense(f"{p}head", "head")


def _hybrid_stem_table(spec: ModelSpec, p: str) -> list[tuple[str, str, str]]:
    o = "patch_embed.backbone."
    rows = [(f"{p}conv_root/kernel", f"{o}conv_root.weight", "conv"), *_norm(f"{p}gn_root", f"{o}gn_root")]
    for i, n in enumerate(spec.blocks):
        for j in range(n):
            b, u = f"{p}block{i + 1}/unit{j + 1}/", f"{o}stages.{i}.{j}."
            for r in (1, 2, 3):
                rows += [(f"{b}conv{r}/kernel", f"{u}conv{r}.weight", "conv"), *_norm(f"{b}gn{r}", f"{u}gn{r}")]
            if j == 0:  # the first unit of every stage changes width or stride: a projection
                rows += [(f"{b}conv_proj/kernel", f"{u}conv_proj.weight", "conv"), *_norm(f"{b}gn_proj", f"{u}gn_proj")]
    return rows


def _bit_table(spec: ModelSpec) -> list[tuple[str, str, str]]:
    rows = [(BIT_ROOT, "trunk.conv_root.weight", "conv")]
    for i, n in enumerate(spec.blocks):
        for j in range(n):
            b, u = f"resnet/block{i + 1}/unit{j + 1:02d}/", f"trunk.stages.{i}.{j}."
            # BiT's a/b/c are the three pre-activated convolutions: GN a precedes conv a.
            for r, letter in enumerate("abc", start=1):
                rows += [(f"{b}{letter}/standardized_conv2d/kernel", f"{u}conv{r}.weight", "conv"),
                         (f"{b}{letter}/group_norm/gamma", f"{u}gn{r}.weight", "copy"),
                         (f"{b}{letter}/group_norm/beta", f"{u}gn{r}.bias", "copy")]
            if j == 0:
                rows.append((f"{b}a/proj/standardized_conv2d/kernel", f"{u}conv_proj.weight", "conv"))
    return rows + [("resnet/group_norm/gamma", "norm.weight", "copy"), ("resnet/group_norm/beta", "norm.bias", "copy"),
                   ("resnet/head/conv2d/kernel", "head.weight", "head_conv"), ("resnet/head/conv2d/bias", "head.bias", "copy")]


def _norm(npz: str, ours: str) -> list[tuple[str, str, str]]:
    return [(f"{npz}/scale", f"{ours}.weight", "copy"), (f"{npz}/bias", f"{ours}.bias", "copy")]


def _dense(npz: str, ours: str) -> list[tuple[str, str, str]]:
    return [(f"{npz}/kernel", f"{ours}.weight", "dense"), (f"{npz}/bias", f"{ours}.bias", "copy")]


def _to_torch(a: np.ndarray, kind: str) -> torch.Tensor:
    """One npz array -> its vitrun tensor (a third of `qkv` for the q/k/v kinds)."""
    a = np.asarray(a, dtype=np.float32)
    if kind == "conv":
        a = a.transpose(3, 2, 0, 1)  # (kh, kw, Cin, Cout) -> (Cout, Cin, kh, kw)
    elif kind == "dense":
        a = a.T  # (in, out) -> (out, in)
    elif kind == "head_conv":
        a = a[0, 0].T  # (1, 1, C, n) -> (n, C)
    elif kind.startswith("qkv_kernel"):
        a = a.reshape(a.shape[0], -1).T  # (D, h, D/h) -> (h*D/h, D): rows of one projection
    elif kind.startswith("qkv_bias"):
        a = a.reshape(-1)  # (h, D/h) -> (D,)
    elif kind == "out_kernel":
        a = a.reshape(-1, a.shape[-1]).T  # (h, D/h, D) -> (D, h*D/h)
    elif kind == "pos_no_cls":
        a = np.concatenate([np.zeros_like(a[:, :1]), a], axis=1)  # (1, N, D) -> (1, 1 + N, D): cls gets no position
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_numpy(t: torch.Tensor, kind: str, heads: int | None) -> np.ndarray:
    """The inverse of `_to_torch` (q/k/v kinds receive their third of `qkv` already cut)."""
    a = t.detach().cpu().float().numpy()
    if kind == "conv":
        return a.transpose(2, 3, 1, 0)  # (Cout, Cin, kh, kw) -> (kh, kw, Cin, Cout)
    if kind == "dense":
        return a.T
    if kind == "head_conv":
        return a.T[None, None]  # (n, C) -> (1, 1, C, n)
    if kind.startswith("qkv_kernel"):
        return a.T.reshape(a.shape[1], heads, -1)  # (D, D) -> (D, h, D/h)
    if kind.startswith("qkv_bias"):
        return a.reshape(heads, -1)  # (D,) -> (h, D/h)
    if kind == "out_kernel":
        return a.T.reshape(heads, -1, a.shape[0])  # (D, D) -> (h, D/h, D)
    return a


# -- reading -----------------------------------------------------------------------------------

def from_npz(path: str | Path, spec: ModelSpec | None = None, num_classes: int | None = None,
             image_size: int | None = None) -> nn.Module:
    """A vitrun model with the weights of an official `.npz` checkpoint.

    spec: None infers the architecture from the arrays (eps_convention "official", dropout 0);
    a given spec must match them (head, pre-logits and grid aside) and decides the rest.
    num_classes: None keeps the checkpoint's head (0 if it has none: a feature extractor);
    another number gives a zero-initialised head. image_size: None is the checkpoint's
    (224 for BiT, which does not record one); another size resamples the position embeddings.
    Raises FileNotFoundError for a missing file, ValueError for a layout it cannot read.
    """
    arrays = unstack(read_arrays(path))
    found, layout = infer_spec(arrays, spec)
    if spec is not None:
        diff = specs.differences(found, spec)
        if diff:
            raise ValueError(f"{path}: the checkpoint is {specs.describe(found)}, not {spec.name}: {', '.join(diff)}")
    spec = spec or found
    state = load_state(arrays, spec, **layout)
    classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    return build_loaded(spec, state, classes if num_classes is None else num_classes,
                        image_size or _native_size(spec, state), keep_head=True)


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, read without pickle (object arrays are refused)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz checkpoint ({err})") from err


def infer_spec(arrays: dict[str, np.ndarray], hint: ModelSpec | None = None) -> tuple[ModelSpec, dict]:
    """(the architecture the arrays hold, layout keywords for `load_state`).

    arrays: as `unstack(read_arrays(path))` gives them.

    `hint` only settles what arrays cannot show: a model without position embeddings (absent
    here as in a big_vision "sincos2d" one), and the numerics options (eps, dropout).
    """
    def numerics(family: str) -> dict:  # what arrays cannot show, taken from the hint
        keys = [k for k in ("dropout", "eps_convention") if k in registry.OPTIONS[family]]
        return {k: getattr(hint, k) for k in keys if hint is not None and getattr(hint, k) is not None}

    if BIT_ROOT in arrays:
        blocks = _count_units(arrays, r"resnet/block(\d+)/unit(\d+)/")
        return specs.resnet_spec(blocks, arrays[BIT_ROOT].shape[-1] / 64, numerics("resnet")), {}

    prefix = next((p for p in _PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise ValueError("not an official ViT, hybrid or BiT checkpoint (no embedding/kernel or resnet/root_block)")
    p = prefix
    stacked = f"{p}Transformer/encoderblock/LayerNorm_0/scale" in arrays
    big_vision = prefix == "params/" or f"{p}pos_embedding" in arrays or stacked
    if f"{p}MAPHead_0/probe" in arrays:
        raise ValueError("multihead attention pooling (MAPHead) has no vitrun equivalent")
    mha, mlp = (0, 0) if big_vision else (1, 3)
    depth = len({m[1] for k in arrays if (m := re.match(rf"{re.escape(p)}Transformer/encoderblock_(\d+)/", k))})
    query = arrays.get(f"{p}Transformer/encoderblock_0/MultiHeadDotProductAttention_{mha}/query/kernel")
    if query is None or query.ndim != 3:
        raise ValueError("cannot find the heads: expected (D, heads, D/heads) query kernels")
    kernel = arrays[f"{p}embedding/kernel"]  # (P, P, Cin, D)
    transformer = {"width": kernel.shape[-1], "depth": depth, "heads": query.shape[1],
                   "mlp": arrays[f"{p}Transformer/encoderblock_0/MlpBlock_{mlp}/Dense_0/kernel"].shape[-1], "patch": kernel.shape[0]}
    has_pos = f"{p}pos_embedding" in arrays or f"{p}Transformer/posembed_input/pos_embedding" in arrays
    if not has_pos and not (hint is not None and hint.family != "resnet" and hint.pos_embed == "none"):
        raise ValueError("no position embedding in the checkpoint (none, or a fixed sincos one that is not stored): "
                         "pass a spec with pos_embed='none' if the model really had none")
    options = {"classifier": "token" if f"{p}cls" in arrays else "gap", "pos_embed": "1d" if has_pos else "none",
               "pre_logits": f"{p}pre_logits/kernel" in arrays, "fc_norm": False}
    if f"{p}conv_root/kernel" in arrays:
        blocks = _count_units(arrays, rf"{re.escape(p)}block(\d+)/unit(\d+)/")
        found = specs.hybrid_spec(blocks, arrays[f"{p}conv_root/kernel"].shape[-1] / 64, transformer, {**options, **numerics("hybrid")})
    else:
        if kernel.shape[2] != 3:
            raise ValueError(f"patch embedding for {kernel.shape[2]} input channels (vitrun: 3)")
        found = specs.vit_spec(transformer, {**options, **numerics("vit")})
    return found, {"big_vision": big_vision, "prefix": prefix}


def load_state(arrays: dict[str, np.ndarray], spec: ModelSpec, big_vision: bool = False, prefix: str = "") -> dict[str, torch.Tensor]:
    """vitrun state dict (head and pre-logits included when present) from the arrays.

    big_vision, prefix: as `infer_spec` found them (its layout keywords).
    """
    state, qkv = {}, {}
    for key, ours, kind in _table(spec, big_vision, prefix):
        if key not in arrays:
            if ours.startswith(("head.", "pre_logits.")):
                continue  # a checkpoint saved without its head (or pre-logits)
            raise ValueError(f"the checkpoint lacks {key} (expected for {spec.name})")
        tensor = _to_torch(arrays[key], kind)
        if kind.startswith("qkv"):
            qkv.setdefault(ours, [None] * 3)[int(kind[-1])] = tensor
        else:
            state[ours] = tensor
    state.update({ours: torch.cat(parts) for ours, parts in qkv.items()})  # q, k, v -> (3D, D) / (3D,)
    return state


def _count_units(arrays: dict[str, np.ndarray], pattern: str) -> tuple[int, ...]:
    units: dict[int, set[int]] = {}
    for key in arrays:
        if m := re.match(pattern, key):
            units.setdefault(int(m[1]), set()).add(int(m[2]))
    stages = sorted(units)
    if stages != list(range(1, len(stages) + 1)):
        raise ValueError(f"ResNet stages {stages} are not numbered 1..n")
    return tuple(len(units[s]) for s in stages)


def unstack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's scanned encoder: `encoderblock/X` of shape (depth, ...) -> `encoderblock_i/X`."""
    out = dict(arrays)
    for key, value in arrays.items():
        if m := re.match(r"(.*Transformer/encoderblock)/(.*)", key):
            for i in range(value.shape[0]):
                out[f"{m[1]}_{i}/{m[2]}"] = value[i]
    return out


def _native_size(spec: ModelSpec, state: dict[str, torch.Tensor]) -> int:
    """The image size the checkpoint's position embeddings were trained for (BiT: 224)."""
    if spec.family == "resnet" or "pos_embed" not in state:
        return 224
    side = math.isqrt(state["pos_embed"].shape[1] - spec.class_token)
    return side * spec.patch * (spec.stride or 1)


# -- writing -----------------------------------------------------------------------------------

def to_npz(model: nn.Module, path: str | Path) -> None:
    """Write `model` in the official layout (vit_jax for ViT and hybrid, BiT for ResNets).

    float32 arrays; timm's `_load_weights` and `from_npz` read it back. A ViT without
    position embeddings is written without them (read it back with spec=model.spec).
    Raises ValueError for what the layout cannot hold: fc_norm (timm's layout: the official
    GAP normalises before pooling) and position embeddings other than learned 1-D ones.
    """
    spec = model.spec
    if spec.family != "resnet":
        if spec.fc_norm:
            raise ValueError(f"to_npz: {spec.name} has fc_norm=True (LayerNorm after pooling), which the official layout cannot hold")
        if spec.class_token and spec.classifier != "token":
            raise ValueError(f"to_npz: {spec.name} carries a class token but pools the patches (gap); the official layout reads a class token as classifier 'token'")
        if spec.pos_embed not in ("1d", "none") or spec.pos_embed_at != "stem":
            raise ValueError("to_npz: the official layout holds learned 1-D position embeddings added at the stem only")
    state = model.state_dict()
    arrays = {}
    for key, ours, kind in _table(spec):
        if ours not in state:
            continue  # a FeatureHead (num_classes=0) has no head to write
        tensor = state[ours]
        if kind.startswith("qkv"):
            j = int(kind[-1])
            tensor = tensor[j * spec.width:(j + 1) * spec.width]  # q, k or v of the fused projection
        arrays[key] = _to_numpy(tensor, kind, spec.heads)
    with open(Path(path).expanduser(), "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
        np.savez(f, **arrays)
