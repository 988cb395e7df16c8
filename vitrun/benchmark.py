"""Model speed against timm, same architecture, same machine, one run.

`vitrun bench model ViT-B/16` builds our model and the timm module with the same
architecture and weights (`vitrun.interop.to_timm`), then times both in alternation:
inference (eval mode, no grad) and a training step (forward, backward, Adam update, as in
pre-training). The numbers are images per second, median over the timed repeats, and
our/timm ratios; the alternation keeps a busy machine from favouring one side.

timm is optional here: without it only our numbers are printed.

`vitrun bench train` (`bench_train`) times the training step alone and says how close it is to
the hardware: images/s, achieved TFLOP/s from counted FLOPs (`models.forward_flops` × 3 for
forward + backward: the backward pass costs two forward matmuls, one for the input gradient and
one for the weight gradient), and that as a share of the matrix-multiply peak measured on the
same device in the same run (`matmul_peak`). Both commands time through `_alternate`.

`vitrun bench inference` (`bench_inference`) is the paper's Figure 12 on the user's hardware:
inference images/s per core (CPU) or per device (GPU), and the largest batch that fits in
memory, per model and input size (see its docstring for how each is measured).
"""

from __future__ import annotations

import functools

import ctypes
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from vitrun import models
from vitrun.engine.device import Placement


@dataclass(frozen=True)
class Timing:
    """Images per second of one model for one kind of work (median over repeats)."""

    model: str  # "vitrun" | "timm"
    work: str  # "inference" | "train step"
    images_per_s: float


def bench_model(
    name: str,
    placement: Placement,
    image_size: int = 224,
    batch_size: int = 8,
    repeats: int = 5,
    warmup: int = 2,
    compare: bool = True,
    **options,
) -> list[Timing]:
    """Time `name` (plus model options) and, when timm is installed and `compare`, its timm twin."""
    _, contenders, x, y = _contenders(name, placement, image_size, batch_size, compare, options)
    timings = []
    for work, make_step in (("inference", _inference), ("train step", _train_step)):
        steps = {who: make_step(m.to(placement.device), x, y, placement) for who, m in contenders.items()}
        seconds = _alternate(steps, repeats, warmup, placement.device)
        timings += [Timing(who, work, batch_size / statistics.median(s)) for who, s in seconds.items()]
    return timings


def _contenders(name: str, placement: Placement, image_size: int, batch_size: int, compare: bool, options: dict):
    """(our model, {"vitrun": it, "timm": its twin when asked and timm is installed}, images, labels):
    what `bench model` and `bench train` time, on one random batch of 1000-way labels."""
    ours = models.create(name, num_classes=1000, image_size=image_size, **options)
    if getattr(ours.spec, "pre_logits", False):
        ours.reset_head(1000)  # timm's ViT has no pre-logits: compare the fine-tuning shape
    contenders = {"vitrun": ours}
    twin = timm_twin(ours) if compare else None
    if twin is not None:
        contenders["timm"] = twin
    x = torch.randn(batch_size, 3, image_size, image_size, device=placement.device)
    y = torch.randint(0, 1000, (batch_size,), device=placement.device)
    return ours, contenders, x, y


def train_step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, placement: Placement, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of one training step of `model` on the batch (x, y)."""
    seconds = _alternate({"model": _train_step(model, x, y, placement)}, repeats, warmup, placement.device)
    return statistics.median(seconds["model"])


def timm_twin(model: nn.Module) -> nn.Module | None:
    """The timm module with the same architecture and weights, or None without timm."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return None
    from vitrun.interop import to_timm

    return to_timm(model)


def _inference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, placement: Placement) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.no_grad(), placement.autocast():
            model(x)

    return step


def _optimizer(model: nn.Module, placement: Placement) -> torch.optim.Optimizer:
    """AdamW as each side's own trainer builds it: vitrun's loop uses the fused kernels (CUDA
    and CPU, `Placement.fused`); timm's train.py calls `create_optimizer_v2`, which leaves
    torch's default (foreach on CUDA, a per-tensor loop on the CPU). A training step is the
    model and its update: the update is part of what a user waits for."""
    if type(getattr(model, "_orig_mod", model)).__module__.startswith("timm."):  # compiled or not
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(model, "adamw", lr=1e-4)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=placement.fused or None)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, placement: Placement) -> Callable[[], None]:
    model.train()
    optimizer = _optimizer(model, placement)

    def step() -> None:
        with placement.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _alternate(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each step, measured in turns: A, B, A, B, ..."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {who: [] for who in steps}
    for _ in range(repeats):
        for who, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            seconds[who].append(time.perf_counter() - start)
    return seconds


# -- the training step against the hardware ------------------------------------------------------

BACKWARD_FACTOR = 3  # forward + backward ≈ 3 forward passes of matmul FLOPs (input and weight grads)


@dataclass(frozen=True)
class TrainTiming:
    """One model's training step: median seconds and what they mean against the hardware."""

    model: str  # "vitrun" | "timm"
    batch_size: int
    seconds: float  # median seconds per step (forward, backward, AdamW update)
    flops_per_image: int  # counted forward FLOPs of one image
    peak_flops: float  # measured matmul FLOP/s of the device, same run
    first_step_seconds: float = float("nan")  # the very first step: compilation, allocator and kernel warm-up included

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.seconds

    @property
    def tflops(self) -> float:
        """Achieved TFLOP/s: counted forward FLOPs × 3 (forward + backward) per image."""
        return BACKWARD_FACTOR * self.flops_per_image * self.images_per_s / 1e12

    @property
    def utilisation(self) -> float:
        """Achieved FLOP/s as a share of the measured matmul peak (model FLOPs utilisation)."""
        return self.tflops * 1e12 / self.peak_flops


def bench_train(
    name: str,
    placement: Placement,
    image_size: int = 224,
    batch_size: int = 8,
    repeats: int = 5,
    warmup: int = 2,
    compare: bool = True,
    **options,
) -> tuple[list[TrainTiming], float]:
    """Training steps of `name` (and its timm twin when `compare`), timed in turns: (timings, peak FLOP/s).

    Both models see the same batch; each is updated by AdamW as its own trainer builds it
    (`_optimizer`: fused kernels for vitrun, timm's `create_optimizer_v2` for timm); with `placement.compile` both are
    compiled (GPU only: `place` leaves it off on a CPU). The FLOPs are our model's, counted
    once; the twin has the same architecture, so the same count applies to it. Each model's
    first step is timed on its own (`first_step_seconds`: with --compile, the compilation):
    first step to steady state is that minus the median.
    """
    from vitrun.models import forward_flops

    ours, contenders, x, y = _contenders(name, placement, image_size, batch_size, compare, options)
    flops = forward_flops(ours, image_size)
    steps = {}
    for who, model in contenders.items():
        model = model.to(placement.device)
        steps[who] = _train_step(torch.compile(model) if placement.compile else model, x, y, placement)
    first = {who: _alternate({who: step}, 1, 0, placement.device)[who][0] for who, step in steps.items()}
    # The peak is measured before and after the steps and the better kept: one reading on a
    # machine where anything else runs can come out below what the model itself reaches.
    peak = matmul_peak(placement)
    seconds = _alternate(steps, repeats, max(0, warmup - 1), placement.device)
    peak = max(peak, matmul_peak(placement))
    return [TrainTiming(who, batch_size, statistics.median(s), flops, peak, first[who]) for who, s in seconds.items()], peak


def train_record(name: str, image_size: int, batch_size: int, placement: Placement, timings: list[TrainTiming], peak: float) -> dict:
    """`bench train --json`: the run as one JSON object, with what the numbers depend on
    (device, precision, compile, package versions as `vitrun doctor` lists them, the CPU's
    vector unit), for BENCHMARKS.md."""
    import platform
    from datetime import datetime, timezone

    from vitrun.doctor import versions

    theirs = next((t for t in timings if t.model == "timm"), None)
    return {
        "model": name,
        "image_size": image_size,
        "batch_size": batch_size,
        "device": placement.describe(),
        "precision": "bf16" if placement.dtype else "fp32",
        "compile": placement.compile,
        "matmul_peak_tflops": peak / 1e12,
        "cpu": {"processor": platform.processor() or platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()},
        "versions": dict(versions()),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": [
            {
                "model": t.model,
                "images_per_s": t.images_per_s,
                "ms_per_step": 1000 * t.seconds,
                "first_step_s": t.first_step_seconds,
                "tflops": t.tflops,
                "utilisation": t.utilisation,
                "vs_timm": None if theirs is None else theirs.seconds / t.seconds,
            }
            for t in timings
        ],
    }


def matmul_peak(placement: Placement, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a square matrix product (`torch.mm` or `F.linear`, the faster) in the
    placement's precision (bf16 or fp32), best of `repeats`.

    size: 8192 on a GPU (saturates an H100-class device); on a CPU the smallest of 256, 512, …,
    2048 whose product takes 50 ms (fp32 reaches 2048 on two AVX2 cores, large enough for the
    BLAS to reach its steady rate; bf16 on a CPU without bf16 units runs ~100x slower and stops
    at 256 instead of spending minutes on one product). The best, not the median, because a
    peak is what the device can do when nothing else is running.
    """
    device = placement.device
    dtype = placement.dtype or torch.float32
    if size is None and device.type == "cuda":
        size = 8192
    if size is None:
        size = 256
        while size < 2048 and _mm_seconds(size, device, dtype) < 0.05:
            size *= 2
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    # Both entry points a model's matmuls take: on a CPU without bf16 units, F.linear's bf16
    # path (oneDNN) is ~5x faster than torch.mm's; in fp32 and on GPUs they are the same GEMM.
    seconds = _alternate({"mm": lambda: torch.mm(a, b), "linear": lambda: nn.functional.linear(a, b)}, repeats, 1, device)
    return 2 * size**3 / min(min(s) for s in seconds.values())


def _mm_seconds(size: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds of one square product of `size` (after one untimed)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    return _alternate({"mm": lambda: torch.mm(a, a)}, 1, 1, device)["mm"][0]


# -- Figure 12: inference across input sizes ------------------------------------------------------

FIGURE12_MODELS = ("ViT-B/16", "R50x1", "R50+ViT-B/16")  # the paper's comparison: ViT vs BiT vs hybrid
# The same three families at sizes a 2-core CPU measures in a few minutes (2.5, 1.2, 3.6 GFLOPs at 224 px).
CPU_MODELS = ("ViT-Ti/16", "R26x0.5", "R26x0.5+ViT-Ti/16")
FIGURE12_SIZES = (64, 128, 224, 384, 512)
TPU_CORE_BYTES = 16 * 2**30  # a TPUv3 core's memory, Figure 12's device: the CPU default budget


@dataclass(frozen=True)
class InferencePoint:
    """One model at one input size (a row of Figure 12's table)."""

    model: str
    family: str  # "vit" | "resnet" | "hybrid"
    image_size: int
    batch: int  # images per timed forward pass
    images_per_s: float  # the whole machine (CPU) or device
    images_per_s_per_unit: float  # per core (CPU: ÷ torch's threads) or per device
    unit: str  # "core" | "device"
    max_batch: int | None  # largest batch that fits; None when it cannot be told here
    max_batch_how: str  # "measured" (GPU, out-of-memory search) | "estimated" (CPU) | "capped" | "unknown"

    def row(self) -> dict:
        return dict(self.__dict__)


def bench_inference(
    names: Iterable[str],
    sizes: Iterable[int],
    placement: Placement,
    batch: int,
    repeats: int = 3,
    max_batch: int = 16384,
    memory_bytes: int | None = None,
    on_point: Callable[[InferencePoint], None] | None = None,
) -> list[InferencePoint]:
    """Figure 12: images/s and the largest batch for each model at each input size.

    Throughput: eval mode, no grad, the median of `repeats` timed passes of `batch` images
    after a warm-up (GPU: bf16 autocast if `placement` says so; attention runs through SDPA).
    Per unit: on CPU ÷ torch.get_num_threads(), the cores the pass ran on (set them with
    --threads); on GPU per device.
    Largest batch: on GPU, batches double from 1 until one runs out of memory, then a
    binary search between the last that fit and the first that did not (at most
    `max_batch`: "capped" when even that fits). On CPU running out of memory is not a
    search one can afford (hundreds of 512-px images per probe, and swapping first), so
    the peak resident memory of a pass of 1 and of `batch` images (Linux's VmHWM, reset
    before each) gives bytes per image and fixed bytes, and the batch that fits in
    `memory_bytes` (default one TPUv3 core's 16 GiB, the paper's device) is extrapolated:
    "estimated", bounded by `max_batch`; "unknown" where VmHWM cannot be read.
    """
    on_gpu = placement.device.type == "cuda"
    unit_count = 1 if on_gpu else torch.get_num_threads()
    points = []
    for name in names:
        for size in sizes:
            model = models.create(name, num_classes=1000, image_size=size).to(placement.device).eval()
            run = _forward(model, size, placement)
            if on_gpu:
                fits, how = _largest_gpu_batch(run, max_batch)
                timed = max(1, min(batch, fits or 1))
            else:
                run(1)  # warm-up: thread pools and allocator
                fits, how = _estimated_cpu_batch(run, batch, memory_bytes or TPU_CORE_BYTES, max_batch)
                timed = batch
            warmup = 1 if on_gpu else 0  # on CPU the peak-memory pass at `batch` was the warm-up
            seconds = _alternate({"model": functools.partial(run, timed)}, repeats, warmup, placement.device)["model"]
            rate = timed / statistics.median(seconds)
            point = InferencePoint(name, model.spec.family, size, timed, rate, rate / unit_count, "device" if on_gpu else "core", fits, how)
            points.append(point)
            if on_point:
                on_point(point)
            del model, run
            _release(placement.device)
    return points


def _forward(model: nn.Module, size: int, placement: Placement) -> Callable[[int], None]:
    """run(b): one inference pass of b random images (fresh each time, as a stream of inputs)."""

    def run(b: int) -> None:
        x = torch.randn(b, 3, size, size, device=placement.device)
        with torch.no_grad(), placement.autocast():
            model(x)
        if placement.device.type == "cuda":
            torch.cuda.synchronize(placement.device)

    return run


def _largest_gpu_batch(run: Callable[[int], None], cap: int) -> tuple[int | None, str]:
    def fits(b: int) -> bool:
        try:
            run(b)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        except RuntimeError as err:  # cuDNN/cuBLAS report their own allocation failures
            if "out of memory" in str(err) or "ALLOC_FAILED" in str(err):
                return False
            raise
        finally:
            torch.cuda.empty_cache()

    if not fits(1):
        return None, "measured"
    good, bad = 1, None
    while bad is None:
        if good >= cap:
            return cap, "capped"
        trial = min(2 * good, cap)
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good, "measured"


def _estimated_cpu_batch(run: Callable[[int], None], batch: int, budget: int, cap: int) -> tuple[int | None, str]:
    one, many = _peak_bytes(lambda: run(1)), _peak_bytes(lambda: run(batch))
    if one is None or many is None or batch < 2:
        return None, "unknown"
    per_image = max((many - one) / (batch - 1), 1.0)
    fixed = max(one - per_image, 0.0)
    fits = int((budget - fixed) // per_image)
    return (cap, "capped") if fits >= cap else (max(fits, 0), "estimated")


def _peak_bytes(work: Callable[[], None]) -> int | None:
    """Peak resident memory `work` adds (Linux: VmHWM after resetting it), or None elsewhere."""
    status = Path("/proc/self/status")
    if not sys.platform.startswith("linux") or not status.is_file():
        return None
    _trim_heap()  # freed memory goes back to the system, so reuse shows up as new residency
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    except OSError:
        return None
    before = _status_bytes(status, "VmRSS")
    work()
    return _status_bytes(status, "VmHWM") - before


def _status_bytes(status: Path, field: str) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{status} has no {field}")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks may read low when freed memory is reused
        pass


def _release(device: torch.device) -> None:
    if device.type == "cuda":  # tensors die with their last reference; cached GPU blocks are handed back
        gc.collect()
        torch.cuda.empty_cache()


def write_inference(points: list[InferencePoint], out: Path, title: str) -> tuple[Path, Path]:
    """The table as CSV and Figure 12 as PNG under `out`: (csv path, png path)."""
    import csv
    import io

    from vitrun.evals import figures
    from vitrun.store import write_atomic

    rows = [p.row() for p in points]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, png_path = out / "inference.csv", out / "inference.png"
    write_atomic(csv_path, text.getvalue().encode())
    figures.inference(rows, points[0].unit, title, png_path)
    return csv_path, png_path
