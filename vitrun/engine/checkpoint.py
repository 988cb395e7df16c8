"""Checkpoints and final weights: plain tensors and numbers, loaded with `weights_only=True`,
so a checkpoint can never execute code."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from vitrun.store import write_atomic


def save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    _write(path, state)


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load a checkpoint into `model` and `optimizer`; returns the step to continue from (0 if none)."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def save_weights(path: Path, model: nn.Module) -> None:
    _write(path, {k: v.detach().cpu() for k, v in model.state_dict().items()})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _write(path: Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())
