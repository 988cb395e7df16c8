"""The micro-batch that fits in memory: `[run] micro_batch = "auto"` (the default on CUDA).

The recipe's batch is split over the ranks (`distributed.split_batch`) and each rank's slice
over gradient-accumulation micro-steps of `micro` images. With "auto" the loop finds `micro`
before the first step, on this rank's own first batch and model:

* CUDA (`search`): the whole slice first, then the next divisor of the slice at or below half
  of the last try, until one forward + backward of that many images survives while memory the
  size of the optimizer's state (and DDP's gradient buckets) is held, with its peak under
  `1 - SAFETY` of the device (headroom for fragmentation, evaluation and the compiled step);
  then the divisors between it and the last that failed, by bisection: the largest that fits.
  An out-of-memory error is caught and the cache emptied before the next try.
* CPU (`estimate`): running out of memory there means swapping, not an error one can catch.
  One pass of `CPU_PROBE` images (or the slice, if smaller) counts the bytes autograd keeps for
  the backward pass (activations; parameters excluded, each storage once), which grow in
  proportion to the batch; the largest divisor of the slice whose activations, with the
  gradients and optimizer state to come, fit in `1 - SAFETY` of the memory available to this
  rank is taken. Not the resident-memory extrapolation of `vitrun bench inference` (Figure 12):
  glibc keeps freed memory resident between passes, so a second training pass adds little new
  residency (ViT-B/16 at 224 px, 2-core CPU: it read 38 MiB per image where autograd keeps
  112 MiB, and would have put a slice of 512 in 8 GiB). vitrun's models have no BatchNorm, but
  the counting pass is of 4 images, not 1, so one that has can train on it.

Every rank takes the smallest answer (an all-reduce), so all ranks cut their slices alike. The
probe leaves the weights, buffers, gradients, optimizer and random state as they were: a run
with "auto" is bit for bit a run with `micro_batch` set to the value it chose. The choice
travels in the checkpoint; a resumed stage tries it first and never goes above it, so a resume
with as much memory is bit for bit the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

SAFETY = 0.10  # share of the memory a chosen micro-batch leaves free
CPU_PROBE = 4  # images in the CPU's counting pass


@dataclass(frozen=True)
class Choice:
    micro: int  # images per micro-step on this rank
    how: str  # "probed on cuda:0", "the whole slice fits in …": for the record and the console


def next_divisor(n: int, below: int) -> int:
    """The largest divisor of `n` at most `below` (≥ 1)."""
    return next(d for d in range(max(1, min(below, n)), 0, -1) if n % d == 0)


def search(per_rank: int, fits: Callable[[int], bool], start: int | None = None) -> int:
    """The largest divisor of `per_rank` (at most `start`, a divisor) for which `fits` holds
    (memory grows with the batch): the slice (or `start`), then halving to the next divisor
    until one fits, then the divisors between that and the last that did not, by bisection.
    Raises MemoryError (one line) when not even one image fits."""
    micro, too_big = start or per_rank, None
    while not fits(micro):
        if micro == 1:
            raise MemoryError("not even 1 image per micro-step fits in the device's memory: use a smaller model or image size, or more devices")
        micro, too_big = next_divisor(per_rank, micro // 2), micro
    between = [d for d in range(micro + 1, too_big or 0) if per_rank % d == 0]
    while between:
        middle = between[len(between) // 2]
        if fits(middle):
            micro, between = middle, [d for d in between if d > middle]
        else:
            between = [d for d in between if d < middle]
    return micro


def estimate(per_rank: int, activations: Callable[[int], int], budget: int, start: int | None = None) -> Choice:
    """CPU: the largest divisor of the slice (at most `start`) whose activations fit in `budget`
    bytes; activations(m): the bytes autograd keeps for m images (`saved_bytes`)."""
    probe = min(per_rank, CPU_PROBE)
    per_image = max(activations(probe) / probe, 1.0)
    fits = int(budget // per_image)
    where = f"{budget / 2**30:.1f} GiB, {per_image / 2**20:.1f} MiB of activations per image"
    if fits >= (start or per_rank):
        return Choice(start or per_rank, f"the whole slice fits in {where}" if not start else f"{fits} images fit in {where}; kept the {start} the stage started with")
    return Choice(next_divisor(per_rank, max(fits, 1)), f"{fits} images fit in {where}")


def saved_bytes(run: Callable[[int], None], m: int, model: nn.Module) -> int:
    """Bytes autograd keeps for the backward pass of `run(m)`: each storage once, parameters not."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()  # alive until backward: no address is reused meanwhile
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run(m)
    return sum(kept.values())


def method(device: torch.device) -> str:
    """"search" (catch out-of-memory errors) on CUDA, "estimate" (peak memory) elsewhere."""
    return "search" if device.type == "cuda" else "estimate"


def choose(model: nn.Module, optimizer: torch.optim.Optimizer, run: Callable[[int], None], per_rank: int, device: torch.device, data_parallel: bool = False, ranks_here: int = 1, before: int | None = None) -> Choice:
    """This rank's micro-batch: `run(m)` does one forward + backward of the first m images of
    the step's slice, as training does (autocast, memory format). data_parallel: DDP will add
    gradient buckets (one more gradient's worth); ranks_here: processes sharing this machine's
    memory (the CPU estimate divides it among them); before: what a resumed stage ran with,
    kept while it fits (then the resumed run is bit for bit the uninterrupted one), ignored
    when it does not divide the slice (another number of ranks). Model, gradients, buffers
    and random state are as before when it returns."""
    before = before if before and per_rank % before == 0 else None
    extra = optimizer_state_bytes(optimizer) + (parameter_bytes(model) if data_parallel else 0)
    with unchanged(model, device):
        if method(device) == "search":
            micro = search(per_rank, lambda m: _fits_on_device(run, m, extra, device, model), before)
            return Choice(micro, f"probed on {device}" + (f", from the {before} the stage started with" if before else ""))
        budget = int(available_memory() / max(1, ranks_here) * (1 - SAFETY)) - extra - parameter_bytes(model)  # the gradients
        return estimate(per_rank, lambda m: saved_bytes(run, m, model), max(budget, 0), before)


def _fits_on_device(run: Callable[[int], None], m: int, extra: int, device: torch.device, model: nn.Module) -> bool:
    """One forward + backward of m images with `extra` bytes held: no out-of-memory error, and
    (CUDA) a peak under 1 - SAFETY of the device."""
    cuda = device.type == "cuda"
    ok, held = False, None
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        held = torch.empty(extra, dtype=torch.uint8, device=device)  # the optimizer's state, to come
        run(m)
        if cuda:
            torch.cuda.synchronize(device)
            ok = torch.cuda.max_memory_reserved(device) <= (1 - SAFETY) * torch.cuda.get_device_properties(device).total_memory
        else:
            ok = True
    except torch.OutOfMemoryError:
        pass
    except RuntimeError as err:  # cuDNN / cuBLAS report their own allocation failures
        if "out of memory" not in str(err) and "ALLOC_FAILED" not in str(err):
            raise
    finally:
        del held  # released before the cache is emptied
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.empty_cache()  # the failed try's blocks go back before the next one
    return ok


@contextlib.contextmanager
def unchanged(model: nn.Module, device: torch.device):
    """Random state and buffers (BatchNorm statistics) as before the block; no gradients after."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    buffers = {name: value.detach().clone() for name, value in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """What the optimizer's state will take once it steps (0 when it already holds it: a resume):
    Adam-like two tensors per parameter (three with amsgrad), SGD one with momentum, none without;
    an optimizer it does not know: two, as Adam."""
    if any(optimizer.state.values()):
        return 0
    size = sum(p.numel() * p.element_size() for group in optimizer.param_groups for p in group["params"] if p.requires_grad)
    defaults = optimizer.defaults
    if isinstance(optimizer, torch.optim.SGD):
        return size if defaults.get("momentum") else 0
    return size * (3 if defaults.get("amsgrad") else 2)


def available_memory() -> int:
    """Bytes this machine can still hand out (Linux MemAvailable; elsewhere, total physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
