"""The Hugging Face hub, for ``hf:ID`` sources: what validation asks of it, and its shard files.

``check`` runs in ``vitrun validate`` and reads metadata only (never data files): the repo
must be in the local cache or answer within a few seconds; a gated repo the user cannot
read is reported with the fix (``huggingface-cli login``); otherwise the dataset's
description (``load_dataset_builder``: features and splits) must name an image column, one
label column and the splits the options ask for, as loading will.

``shard_files`` / ``fetch`` serve repos whose data are tars or Parquet files (the
``timm/imagenet-22k-wds`` / ``ILSVRC/imagenet-1k`` kind): they are fetched into the hub cache
and read there in place (``sharded.py``), with no Arrow copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from vitrun.data import hf
from vitrun.data.options import SourceError, SourceOptions
from vitrun.probe import PROBE_SECONDS

SHARD_EXTS = {"wds": ".tar", "parquet": ".parquet"}
LOGIN = "accept its terms on its hub page, then run `huggingface-cli login` (or set HF_TOKEN)"


def check(source: str, repo_id: str, options: SourceOptions) -> None:
    """Raise SourceError unless hub dataset ``repo_id`` can be opened as ``options`` say (metadata only)."""
    if in_cache(repo_id):
        return
    fix = "set HF_HOME to a cache that has it, or use wds:GLOB / parquet:GLOB / arrow:PATH"
    if any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise SourceError("data", f"{source} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fix}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().dataset_info(repo_id, timeout=PROBE_SECONDS)
        if getattr(info, "gated", False):
            HfApi().auth_check(repo_id, repo_type="dataset")  # raises GatedRepoError without access
    except GatedRepoError:
        raise SourceError("data", f"{source} is gated and this machine has no access; {LOGIN}") from None
    except RepositoryNotFoundError:
        raise SourceError("data", f"{source}: no such dataset on the Hugging Face hub (check the id, e.g. hf:uoft-cs/cifar10)") from None
    except Exception:  # no network, DNS, proxy, timeout: all mean "cannot download here"
        raise SourceError("data", f"{source} cannot be downloaded here; {fix}") from None
    _check_description(source, repo_id, options)


def _check_description(source: str, repo_id: str, options: SourceOptions) -> None:
    """Columns and splits from the dataset's description, as ``load_dataset`` will see them."""
    import datasets
    from huggingface_hub.errors import GatedRepoError

    try:
        info = datasets.load_dataset_builder(repo_id, options.config).info
    except GatedRepoError:
        raise SourceError("data", f"{source} is gated and this machine has no access; {LOGIN}") from None
    except Exception as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "gated" in text.lower():
            raise SourceError("data", f"{source} is gated and this machine has no access; {LOGIN}") from None
        raise SourceError("data", f"{source}: its description cannot be read ({text})") from None
    if info.splits:
        hf.pick_splits(dict.fromkeys(info.splits), options, source)
    if info.features:  # absent for some shard repos: their columns are checked when the shards open
        hf.columns(info.features, options, source)


def in_cache(repo_id: str) -> bool:
    import datasets
    from huggingface_hub import constants

    hub_dir = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    built = Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return hub_dir.is_dir() or built.is_dir()


def shard_files(repo_id: str, config: str | None) -> tuple[str, list[str]] | None:
    """(kind, repo file names) when the repo's data are tars or Parquet files, else None.

    With a config, only files under a folder of that name count (the hub's parquet layout).
    """
    from huggingface_hub import HfApi

    try:
        names = HfApi().list_repo_files(repo_id, repo_type="dataset")
    except Exception:  # offline: the files of a snapshot already in the cache, if any
        names = _cached_names(repo_id)
    if config:
        names = [n for n in names if config in n.split("/")[:-1]]
    for kind, ext in SHARD_EXTS.items():
        found = sorted(n for n in names if n.endswith(ext))
        if found:
            return kind, found
    return None


def _cached_names(repo_id: str) -> list[str]:
    from huggingface_hub import constants

    snapshots = sorted((Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots").glob("*"))
    if not snapshots:
        raise LookupError(f"{repo_id} is not in the hub cache")
    return sorted(str(p.relative_to(snapshots[-1])) for p in snapshots[-1].rglob("*") if p.is_file())


def fetch(repo_id: str, names: list[str]) -> list[str]:
    """Local paths of hub files ``names`` in the Hugging Face cache (downloaded, in parallel, when missing)."""
    from huggingface_hub import snapshot_download

    root = Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=names))
    return [str(root / n) for n in names]
