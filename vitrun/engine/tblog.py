"""TensorBoard logs of a training stage (`[run] tensorboard = true`): loss, learning rate,
gradient norm, images/s and the evaluation curve, under `<stage dir>/tensorboard/`.

The `tensorboard` package is an optional extra (`pip install 'vitrun[tensorboard]'`); the
recipe is refused at validation when it is missing (schema.RunConfig), so this module may
import it. A resumed stage purges the events logged after its checkpoint, as metrics.jsonl
drops those rows: the logs of a killed-and-resumed run read as one run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: the recipe schema asks `available()` while validating
    from torch import nn

EXTRA = "vitrun[tensorboard]"


def available() -> bool:
    """Whether the tensorboard package is installed (found without importing it: fast)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    """A loop extra writing scalars: train/loss, train/lr, train/grad_norm, train/images_per_s
    (from the logging rows), eval/accuracy (from the evaluation curve)."""

    def __init__(self, log_dir: Path, batch_size: int):
        self.log_dir, self.batch_size = Path(log_dir), batch_size
        self.logged_step = 0  # the last step written: a resume purges the events after it
        self._writer = None
        self._resumed = False
        self._clock: tuple[int, float] | None = None  # (step, time) of the previous row

    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.logged_step + 1 if self._resumed else None)
        return self._writer

    def after_step(self, step: int, model: "nn.Module") -> None:
        pass

    def on_log(self, row: dict[str, Any]) -> None:
        step, now = row["step"], time.perf_counter()
        writer = self.writer()
        for name in ("loss", "lr", "grad_norm"):
            if name in row:
                writer.add_scalar(f"train/{name}", row[name], step)
        if self._clock is not None and step > self._clock[0] and now > self._clock[1]:
            writer.add_scalar("train/images_per_s", (step - self._clock[0]) * self.batch_size / (now - self._clock[1]), step)
        self._clock = (step, now)
        self.logged_step = step

    def on_eval(self, step: int, accuracy: float) -> None:
        self.writer().add_scalar("eval/accuracy", accuracy, step)
        self.logged_step = max(self.logged_step, step)

    def state_dict(self) -> dict[str, Any]:
        if self._writer is not None:
            self._writer.flush()  # what the checkpoint vouches for is on disk
        return {"logged_step": self.logged_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logged_step, self._resumed = int(state["logged_step"]), True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
