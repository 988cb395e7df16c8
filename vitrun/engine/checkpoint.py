"""Checkpoints and final weights: plain tensors and numbers, loaded with `weights_only=True`,
so a checkpoint can never execute code. Both are streamed to disk through a hash (weights can
be gigabytes) and written atomically."""

from __future__ import annotations

import os
import pickle
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vitrun.durable import write_stream_atomic

# What a damaged file makes torch.load raise: a truncated zip, a torn pickle, a short read.
UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile)


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, step: int, loop: dict[str, Any] | None, copy: bool = False) -> dict[str, Any]:
    """What a checkpoint holds; `copy`: every tensor copied to the CPU, so training may go on
    changing the weights while the copy is written."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": torch.get_rng_state(),
        "loop": dict(loop or {}),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return _copied(state) if copy else state


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    return value


def _write(path: Path, state: dict[str, Any], step: int, keep: int) -> None:
    write_stream_atomic(path, lambda f: torch.save(state, f))
    if keep > 1:
        _keep_last(path, step, keep)


class BackgroundWriter:
    """Checkpoints written on a thread: the step waits for a CPU copy of the state, not for the
    disk (serialising, hashing and syncing a ViT-B/16 with its Adam moments is ~1 GB).

    One write at a time: a save waits for the one before. `wait()` before the stage ends or
    stops, so the newest checkpoint is on disk; an error in the writer (a full disk) is raised
    by the next `save` or `wait`. A process killed mid-write leaves the previous checkpoint
    whole (writes are atomic): resuming from it stays exact.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, loop: dict[str, Any] | None = None, keep: int = 1) -> None:
        """`loop`: the training loop's own running values (partial loss sums), so a resumed run
        logs exactly what an uninterrupted one logs. `keep` > 1 also keeps the last `keep`
        checkpoints as `checkpoint-<step>.pt` (hard links: no extra disk for the newest).

        The RNG saved is this process's (rank 0's) CPU state and its own CUDA device's: a resume
        on any number of devices restores it on each device present (not indexed by the old count)."""
        self.wait()
        state = _state(model, optimizer, step, loop, copy=True)

        def write() -> None:
            try:
                _write(path, state, step, keep)
            except BaseException as err:  # handed to the training thread
                self._error = err

        self._thread = threading.Thread(target=write, name="vitrun-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _keep_last(path: Path, step: int, keep: int) -> None:
    numbered = path.with_name(f"{path.stem}-{step:09d}{path.suffix}")
    numbered.unlink(missing_ok=True)
    try:
        os.link(path, numbered)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, numbered)
    for old in history(path)[:-keep]:
        old.unlink(missing_ok=True)


def history(path: Path) -> list[Path]:
    """The numbered checkpoints kept beside `path`, oldest first."""
    return sorted(path.parent.glob(f"{path.stem}-[0-9]*{path.suffix}"))


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, on_notice: Callable[[str], None] | None = None, set_aside: bool = True) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint into `model` and `optimizer`: (step to continue from, loop values).

    No checkpoint: (0, {}). A checkpoint that cannot be read, or that does not fit this model,
    is renamed to `checkpoint.pt.unreadable-<time>` (kept for inspection), reported through
    `on_notice`, and the stage starts over: nothing is loaded from it. `set_aside=False` (ranks
    other than 0, which load what rank 0 already checked) raises instead.
    """
    if not path.is_file():
        return 0, {}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        _check_fits(state, model)
        optimizer.load_state_dict(state["optimizer"])
    except UNREADABLE as err:
        if not set_aside:
            raise
        from vitrun.store import StageDir

        moved = StageDir(path.parent).set_aside(path, "unreadable")
        if on_notice:
            on_notice(f"{path}: unreadable checkpoint ({_first_line(err)}); set aside as {moved.name}, the stage starts over")
        return 0, {}
    model.load_state_dict(state["model"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])  # this rank's current device
    return int(state["step"]), dict(state.get("loop", {}))


def _check_fits(state: Any, model: nn.Module) -> None:
    """Raise before anything is loaded, so a bad checkpoint never leaves a half-loaded model."""
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "rng"} <= set(state):
        raise ValueError("not a vitrun checkpoint (keys missing)")
    ours = model.state_dict()
    theirs = state["model"]
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
        raise ValueError("its tensors do not match this stage's model")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def save_weights(path: Path, model: nn.Module) -> str:
    """Write the final weights; returns their sha256."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_stream_atomic(path, lambda f: torch.save(weights, f))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
