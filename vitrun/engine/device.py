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

    @property
    def fused(self) -> bool:
        """Fused (one-kernel) AdamW / SGD updates, on CUDA and on the CPU (torch >= 2.4 has CPU
        kernels): on a 2-core CPU fused AdamW takes 97 ms instead of 594 ms for ViT-S/16's
        22M parameters, 1.1 ms instead of 11 ms for ViT-Mu/4 (BENCHMARKS.md). The update
        is the same formula; the weights differ from the foreach path only by rounding."""
        return self.device.type in ("cuda", "cpu")

    def prepare(self, model: torch.nn.Module) -> bool:
        """Channels-last memory for convolutional networks on CUDA (cuDNN's fast NHWC kernels);
        a ViT's one patch convolution gains nothing, so it stays as it is. True when chosen:
        then pass `channels_last=True` to `images`."""
        if self.device.type == "cuda" and is_convnet(model):
            model.to(memory_format=torch.channels_last)
            return True
        return False

    def images(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """A batch on the device (non-blocking copy), in the memory format `prepare` chose."""
        x = to_device(x, self.device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        return f"{name}, {'bf16 autocast' if self.dtype else 'fp32'}{', compiled' if self.compile else ''}"


class DeviceError(ValueError):
    """The device asked for cannot be used here; str() is one line naming the setting it came
    from (`--device` or `[run] device`) and a fix."""


RECIPE_SETTING = "[run] device"  # where `place`'s device comes from unless a command's flag says
FLAG_SETTING = "--device"


def place(device: str = "auto", precision: str = "auto", compile: bool = False, threads: int | None = None, index: int | None = None, setting: str = RECIPE_SETTING) -> Placement:
    """index: this rank's GPU under torchrun (LOCAL_RANK); it overrides the device's own index.
    setting: where `device` came from, named in errors: `[run] device` (a recipe) or `--device`
    (a command's flag, FLAG_SETTING). Raises DeviceError for a device that cannot be used."""
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    fix = f"use {setting} auto, cpu or cuda" if setting.startswith("--") else f'set {setting} = "auto", "cpu" or "cuda"'
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"{setting} {device!r} is not a device torch knows (cpu, cuda, cuda:1 …); {fix}") from None
    if dev.type == "cuda" and index is not None:
        dev = torch.device("cuda", index)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting} {device!r}, but no CUDA device is available here; {fix}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"{setting} {device!r}, but this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 …); {fix}")
    if dev.type == "cuda":
        # TF32 tensor cores for the fp32 matmuls and convolutions left outside autocast
        # (fp32 runs, the loss): about 8x the fp32 rate on A100/H100, 10-bit mantissa products.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # bf16 pays off on tensor cores; on CPU it is slower than fp32 for these sizes.
    use_bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    # torch.compile needs a GPU toolchain to pay off; on CPU it would only add start-up time.
    return Placement(dev, torch.bfloat16 if use_bf16 else None, compile and dev.type == "cuda")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` on `device`, without making the host wait. The data paths hand CUDA batches over
    already there (data/loader.py); a CPU tensor that still comes is pinned first, as from
    pageable memory a CUDA copy waits for the device's queue to drain (non_blocking does nothing)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    return x.to(device)


def is_convnet(model: torch.nn.Module) -> bool:
    """More than one convolution: a ResNet or hybrid stem (a ViT has only its patch embedding)."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1
