"""Where and how numbers are computed: device, autocast precision, threads, compile.

GPU-only paths (bf16 autocast, torch.compile) fall back to plain fp32 eager on CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    compile: bool

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        return f"{name}, {'bf16 autocast' if self.dtype else 'fp32'}{', compiled' if self.compile else ''}"


def place(device: str = "auto", precision: str = "auto", compile: bool = False, threads: int | None = None, index: int | None = None) -> Placement:
    """index: this rank's GPU under torchrun (LOCAL_RANK); it overrides the device's own index."""
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and index is not None:
        dev = torch.device("cuda", index)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"run.device = {device!r}, but no CUDA device is available here; use run.device = \"auto\"")
    # bf16 pays off on tensor cores; on CPU it is slower than fp32 for these sizes.
    use_bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    # torch.compile needs a GPU toolchain to pay off; on CPU it would only add start-up time.
    return Placement(dev, torch.bfloat16 if use_bf16 else None, compile and dev.type == "cuda")
