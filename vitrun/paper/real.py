"""ImageNet-ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): accuracy against the
re-assessed labels of the ImageNet validation set, from the public `real.json` and the
test-set predictions a fine-tuning stage keeps (`predictions.npy`)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

PREDICTIONS_FILE = "predictions.npy"  # int32 (N,): the predicted class of each test image, in split order


class RealLabelsError(ValueError):
    """A ReaL labels file that is not the public real.json format, or predictions that do not fit it."""


def load_real_labels(path: str | Path) -> list[list[int]]:
    """The public `real.json`: one list of correct labels per ImageNet validation image, in
    file-name order (ILSVRC2012_val_00000001 first); an empty list where raters agreed on none."""
    try:
        labels = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RealLabelsError(f"{path}: cannot read ReaL labels ({err}); expected a JSON list of label lists, as real.json") from None
    if not isinstance(labels, list) or not all(isinstance(x, list) and all(isinstance(y, int) for y in x) for x in labels):
        raise RealLabelsError(f"{path}: expected a JSON list with one list of integer labels per validation image, as real.json")
    return labels


def real_accuracy(predictions: Sequence[int], real: Sequence[Sequence[int]]) -> float:
    """ImageNet-ReaL accuracy: a prediction is right when it is one of the image's ReaL labels;
    images whose list is empty are left out, as in the paper."""
    if len(predictions) != len(real):
        raise RealLabelsError(f"{len(predictions)} predictions for {len(real)} ReaL label lists; both must cover the whole validation set in order")
    scored = [(p, labels) for p, labels in zip(predictions, real) if labels]
    if not scored:
        raise RealLabelsError("every ReaL label list is empty: nothing to score")
    return sum(int(p) in labels for p, labels in scored) / len(scored)


def predictions_bytes(predicted: Sequence[int]) -> bytes:
    """`predictions.npy` contents for a stage to write (atomically, beside its stage.json)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(predicted, dtype=np.int32))
    return buffer.getvalue()


def load_predictions(stage_dir: Path) -> list[int] | None:
    """A stage's test-set predictions, or None when it kept none."""
    import numpy as np

    path = Path(stage_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    return np.load(path, allow_pickle=False).tolist()
