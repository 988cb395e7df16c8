"""What a recipe may say about a data source besides its name, and the error sources raise.

The recipe schema declares these keys once (``schema.DataFields``) for ``[pretrain]`` and
``[[transfer]]``; the data layer reads them from a stage's config with ``SourceOptions.of``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

DEFAULT_TEST_FRACTION = 0.2  # a source with no test split: this share of train, stratified, is the test set
DEFAULT_EVAL_SIZE = 50_000  # ... but at most this many images (big_vision holds out 25,600-50,000 of ImageNet-21k)
SPLIT_SEED = 0  # such test splits do not follow the run's seed: every run is scored on the same images


class SourceError(ValueError):
    """A source that cannot be opened, phrased for the user: ``key`` is the recipe key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key

    def __reduce__(self):  # raised in index-building processes: must survive pickling
        return (type(self), (self.key, str(self)))


class SourceWarning(UserWarning):
    """Something about a whole source that every rank sees alike (samples left out, a decoder
    fallback): under torchrun only rank 0 shows it. Warnings about one image stay plain
    UserWarnings, since each rank reads other images."""


@dataclass(frozen=True)
class SourceOptions:
    """Per-source settings; None means "the source's own default" (documented per field)."""

    config: Optional[str] = None  # hf: the dataset configuration (also hf:ID:CONFIG)
    train_split: Optional[str] = None  # default "train" ("trainval" for torchvision:OxfordIIITPet)
    test_split: Optional[str] = None  # default "test", else "validation"/"val"; else carved from train
    image_column: Optional[str] = None  # hf/parquet/arrow: default the first Image feature
    label_column: Optional[str] = None  # hf/parquet/arrow: default the first ClassLabel, else "label"…
    root: Optional[str] = None  # torchvision: where the files are (default <cache>/torchvision)
    download: bool = False  # torchvision: fetch the files when root lacks them (needs a network)
    test_fraction: Optional[float] = None  # share of train held out as test when there is no test split
    eval_size: Optional[int] = None  # ... or this many images (default: the share, at most DEFAULT_EVAL_SIZE)
    dev_fraction: Optional[float] = None  # held-out share of train for learning-rate selection
    stream: bool = False  # hf: read as a stream (streaming.py), for hub datasets without random access

    @classmethod
    def of(cls, section: dict[str, Any]) -> "SourceOptions":
        """The options in a stage config's section (``[pretrain]`` or ``[[transfer]]``)."""
        return cls(**{f.name: section[f.name] for f in fields(cls) if section.get(f.name) is not None})

    def given(self) -> dict[str, Any]:
        """The options set to something other than their default."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
