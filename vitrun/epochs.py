"""`epochs` in `[pretrain]`, `[finetune]` and a `[[transfer]] finetune = {…}` override: the
paper states budgets in epochs (Table 3: 90 epochs of ImageNet-21k), the loop counts steps.

Converted when the recipe loads, before validation: steps = ceil(epochs × training images /
batch_size), and `epochs` is removed, so a recipe in epochs and one in the equivalent steps
share their stage keys. The training size comes from what is known without loading data:

* `pretrain.size` (a class-balanced subset), a transfer's `train_size`, `per_class` × classes;
* embedded sets (generators: classes × images per class; digits);
* local sources, counted: `folder:` (image files of the training tree), `parquet:` (row counts
  in the files' metadata), `wds:` (label members of the tars);
* the paper's datasets on the hub and in torchvision, by name (vitrun/data/known.py).

Anything else is a one-line recipe error asking for `steps`. A `[finetune] epochs` applies to
every transfer dataset, so their sizes must agree; otherwise give each its own through
`[[transfer]] finetune = { epochs = … }` (or `steps`).
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any


class EpochsError(ValueError):
    """`epochs` cannot become steps; the message names the key and the fix."""


def resolve(variant: dict[str, Any]) -> list[str]:
    """Replace every `epochs` in `variant` (a recipe dict, changed in place) by `steps`;
    returns one note per conversion, e.g. "pretrain.epochs = 90 → steps = 301,674 (…)"."""
    notes: list[str] = []
    pretrain = variant.get("pretrain")
    if isinstance(pretrain, dict) and "epochs" in pretrain:
        images = _pretrain_images(pretrain)
        notes.append(_convert("pretrain", pretrain, images, pretrain.get("batch_size", 4096), f"{pretrain.get('data', 'fractal')}"))
    listed = variant.get("transfer", [])  # a wrong type is the schema's to report, after this
    transfers = [t for t in listed if isinstance(t, dict)] if isinstance(listed, list) else []
    finetune = variant.get("finetune")
    if isinstance(finetune, dict) and "epochs" in finetune:
        sizes = {_transfer_images(t, i) for i, t in enumerate(transfers)}
        if len(sizes) > 1:
            raise EpochsError("finetune.epochs: the transfer datasets differ in size, so one epoch count means different steps; "
                              "give steps, or epochs per dataset in [[transfer]] finetune = { epochs = … }")
        if sizes:
            label = transfers[0].get("name") or transfers[0].get("data", "")
            notes.append(_convert("finetune", finetune, sizes.pop(), finetune.get("batch_size", 512), label))
        else:
            finetune.pop("epochs")
    for i, transfer in enumerate(transfers):
        override = transfer.get("finetune")
        if isinstance(override, dict) and "epochs" in override:
            batch = override.get("batch_size", (finetune or {}).get("batch_size", 512))
            notes.append(_convert(f"transfer[{i}].finetune", override, _transfer_images(transfer, i), batch, transfer.get("name") or transfer.get("data", "")))
    return notes


def _convert(where: str, section: dict[str, Any], images: int, batch_size: Any, label: str) -> str:
    epochs = section.pop("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
        raise EpochsError(f"{where}.epochs: expected a positive number of passes over the training split, got {epochs!r}")
    if "steps" in section:
        raise EpochsError(f"{where}: give steps or epochs, not both (remove one)")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise EpochsError(f"{where}.batch_size: expected a positive integer, got {batch_size!r}")
    section["steps"] = max(1, math.ceil(epochs * images / batch_size))
    return f"{where}.epochs = {epochs:g} → steps = {section['steps']:,} ({images:,} training images of {label}, batch {batch_size})"


def _pretrain_images(pretrain: dict[str, Any]) -> int:
    if pretrain.get("size"):
        return _number(pretrain, "size", "pretrain")
    return _source_images(pretrain, "pretrain")


def _transfer_images(transfer: dict[str, Any], i: int) -> int:
    where = f"transfer[{i}]"
    if transfer.get("train_size"):
        return _number(transfer, "train_size", where)
    if transfer.get("per_class"):
        return _number(transfer, "per_class", where) * _classes(transfer, where)
    return _source_images(transfer, where)


def _classes(section: dict[str, Any], where: str) -> int:
    from vitrun.data import known

    if section.get("classes"):
        return _number(section, "classes", where)
    holds = known.lookup(section.get("data", "fractal"))
    if holds is None:
        raise EpochsError(f"{where}.classes: per_class needs the number of classes to count an epoch; give classes, or steps instead of epochs")
    return holds.classes


def _number(section: dict[str, Any], key: str, where: str) -> int:
    """A count an epoch is measured in; anything but a positive integer is a recipe error."""
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EpochsError(f"{where}.{key}: expected a positive whole number, got {value!r}")
    return value


def _source_images(section: dict[str, Any], where: str) -> int:
    data = section.get("data", "fractal")
    if not isinstance(data, str):
        raise EpochsError(f"{where}.data: expected a dataset name such as \"fractal\" or \"hf:ID\", got {data!r}")
    kind, _, target = data.partition(":")
    if not target:  # embedded
        from vitrun import data as sources

        generator = sources.GENERATORS.get(data)
        if generator is not None:
            classes = _number(section, "classes", where) if section.get("classes") else generator.DEFAULT_CLASSES
            return classes * generator.DEFAULT_PER_CLASS
    counted = _count_local(kind, target, section) if target else None
    if counted is not None:
        return counted
    from vitrun.data import known

    holds = known.lookup(data)
    if holds is not None and not section.get("classes"):
        return holds.train_images
    raise EpochsError(f"{where}.epochs: the size of {data}'s training split is not known before loading it; give steps instead of epochs")


def _count_local(kind: str, target: str, section: dict[str, Any]) -> int | None:
    """Training images of a local source, counted from its files (None: not a local source)."""
    if kind == "folder":
        from vitrun.data import folder
        from vitrun.data.options import SourceError, SourceOptions

        try:
            splits = folder.layout(Path(target).expanduser(), SourceOptions.of(section))
        except SourceError:
            return None
        train = splits["train"]
        return sum(folder.count_images(train / name, 10**12) for name in folder.classes(train))
    if kind in ("parquet", "wds"):
        files = [f for f in glob.glob(str(Path(target).expanduser()), recursive=True) if Path(f).is_file()]
        if not files:
            return None
        from vitrun.data.sharded import split_files
        from vitrun.data.options import SourceError

        try:
            train = split_files(files, f"{kind}:{target}")["train"]
        except SourceError:
            return None
        return sum(_parquet_rows(f) if kind == "parquet" else _tar_samples(f) for f in train)
    return None


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _tar_samples(path: str) -> int:
    """Samples in a WebDataset tar: distinct keys (a key's members share the name before the first dot)."""
    import tarfile

    with tarfile.open(path) as tar:
        return len({Path(m.name).name.split(".", 1)[0] + str(Path(m.name).parent) for m in tar if m.isfile()})
