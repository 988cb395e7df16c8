"""A recipe's `init`: start from pre-trained weights instead of from scratch.

    init = "timm:vit_base_patch16_224.augreg_in21k"   # timm's weights (Hugging Face hub or its cache)
    init = "npz:ckpt/ViT-B_16.npz"                    # an official Google checkpoint

`check_init` is what `vitrun validate` can afford: no torch, no network. `load_init` loads, checks
that the checkpoint's architecture is the recipe's (head, pre-logits and the position-embedding
grid aside) and adapts it as the official fine-tuning code does (see `transfer`): a new
zero-initialised head, the pre-logits kept only if the recipe's model has them, position
embeddings resampled to the recipe's resolution.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from vitrun.models.registry import ModelSpec

from . import specs

if TYPE_CHECKING:
    from torch import nn

SCHEMES = ("timm", "npz")
# Names that mark a readable layout (`npz.infer_spec`); zip members end in ".npy".
_NPZ_ANCHORS = ("embedding/kernel", "opt/target/embedding/kernel", "params/embedding/kernel",
                "resnet/root_block/standardized_conv2d/kernel")


def check_init(init: str) -> None:
    """Raise ValueError (one line) unless `init` can be loaded, as far as can be told cheaply.

    timm: the name is well-formed and timm is installed (whether timm knows the name, or the
    weights can be downloaded, needs torch and the network: `load_init` says). npz: the file
    exists and is an `.npz` archive holding a ViT, hybrid or BiT layout. Relative paths are
    relative to the working directory.
    """
    if not isinstance(init, str):
        raise ValueError(f"init must be a string 'timm:NAME' or 'npz:PATH', got {init!r}")
    scheme, sep, rest = init.partition(":")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"init {init!r}: expected 'timm:NAME' (e.g. timm:vit_base_patch16_224.augreg_in21k) or 'npz:PATH'")
    if scheme == "timm":
        if not re.fullmatch(r"[\w\-./:]+", rest):
            raise ValueError(f"init {init!r}: not a timm model name (e.g. timm:vit_base_patch16_224.augreg_in21k)")
        if importlib.util.find_spec("timm") is None:
            raise ValueError(f"init {init!r}: timm is not installed (pip install timm), or use npz:PATH")
        return
    path = Path(rest).expanduser()
    if not rest or not path.is_file():
        raise ValueError(f"init {init!r}: no checkpoint file at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"init {init!r}: {path} is not an .npz archive")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    if not any(f"{anchor}.npy" in names for anchor in _NPZ_ANCHORS):
        raise ValueError(f"init {init!r}: {path} holds no official ViT, hybrid or BiT layout (no embedding/kernel or resnet/root_block)")


def load_init(init: str, spec: ModelSpec, num_classes: int, image_size: int) -> "nn.Module":
    """A model of `spec` (num_classes, image_size) starting from the weights `init` names.

    Raises ValueError, one line, when the weights cannot be had (missing file, no network, unknown
    timm name) or their architecture differs from `spec` (the differing fields are named).
    """
    check_init(init)
    from .transfer import build_loaded

    scheme, _, rest = init.partition(":")
    if scheme == "npz":
        from .npz import infer_spec, load_state, read_arrays, unstack

        try:
            arrays = unstack(read_arrays(rest))
            found, layout = infer_spec(arrays, hint=spec)
            state = load_state(arrays, found, **layout)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"{init}: {err}") from err
    else:
        from .timm_models import timm_state

        timm_model = timm_pretrained(init, rest)
        try:
            found, state, _ = timm_state(timm_model)  # timm's tensors: one more model is built, not two
        except ValueError as err:
            raise ValueError(f"{init}: {err}") from err
    diff = specs.differences(found, spec)
    if diff:
        raise ValueError(f"{init}: the checkpoint is {specs.describe(found)}, not the recipe's {spec.name}: {', '.join(diff)}")
    return build_loaded(spec, state, num_classes, image_size, keep_head=False)


# -- timm's pre-trained weights ------------------------------------------------------------------

def timm_pretrained(init: str, name: str) -> "nn.Module":
    """timm.create_model(name, pretrained=True), with one-line errors and no minute of retries offline."""
    import timm

    arch = name.split(".")[0]
    if not name.startswith("hf-hub:") and not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        raise ValueError(f"{init}: timm has no model {arch!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    offline = _offline_reason()
    try:
        with _hub_offline(offline is not None):
            return timm.create_model(name, pretrained=True)
    except Exception as err:  # timm and the hub raise many kinds; each becomes one line
        if _is_download_error(err):
            reason = offline or f"download failed: {type(err).__name__}"
            raise ValueError(f"{init}: cannot download the weights here ({reason}); "
                             "set HF_HOME to a cache that has them or use npz:PATH") from err
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{init}: timm cannot load it: {first_line}") from err


def _offline_reason() -> str | None:
    """Why the hub cannot be reached ("no network", "HF_HUB_OFFLINE is set"), or None.

    Asked once, quickly: otherwise each file the hub tries costs about 25 s of retries.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    from vitrun.probe import reachable

    return None if reachable(constants.ENDPOINT) else "no network"


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Make the hub read only its local cache while `enabled` (what HF_HUB_OFFLINE=1 does).

    The hub reads the environment once at import, then consults `constants.HF_HUB_OFFLINE` on
    every request; setting it for the call lets cached weights load at once instead of after
    the retries. Restored afterwards.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _is_download_error(err: BaseException) -> bool:
    module = type(err).__module__.split(".")[0]
    return isinstance(err, OSError) or module in ("huggingface_hub", "httpx", "requests", "urllib3")
