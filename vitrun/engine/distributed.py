"""Data parallelism on torchrun: which process this is, and the few collectives the runner needs.

`torchrun --nproc-per-node N -m vitrun recipe X.toml` (or `vitrun recipe X.toml
--nproc-per-node N`, which re-executes itself under `torch.distributed.run`) starts N processes
with RANK, WORLD_SIZE and LOCAL_RANK set. `World.from_env()` joins them into one process group:
NCCL on CUDA, gloo on CPU. A single process (no WORLD_SIZE) gets `World()` and touches nothing
in torch.distributed.

Failures: a rank that raises must not leave the others waiting forever in a collective. Every
point where ranks meet goes through `agree()` first, a small all-reduce on a CPU (gloo) group
that says whether any rank failed or was asked to stop; a rank that failed joins that all-reduce
from the runner instead, so the others learn of it at their next meeting point and raise
`PeerFailed`. A rank that dies outright is caught by torchrun (it stops the others); a hang
inside one collective ends at the process group's timeout (`VITRUN_DIST_TIMEOUT`, seconds).
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import sys
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_ENV = "VITRUN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
OK, STOP, FAILED = 0, 1, 2  # agree(): the worst state any rank reports wins


class PeerFailed(RuntimeError):
    """Another rank failed; this one stops its stage too (the failing rank's traceback is what
    rank 0 records)."""


def agreed(err: BaseException) -> BaseException:
    """Mark an exception as already known to every rank (no further agree() for it)."""
    err.vitrun_agreed = True  # type: ignore[attr-defined]
    return err


def is_agreed(err: BaseException) -> bool:
    return bool(getattr(err, "vitrun_agreed", False))


@dataclass
class World:
    """This process's place among the ranks; `World()` is the single-process default."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    _flags: Any = field(default=None, repr=False)  # the gloo group agree() and gathers use

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> "World":
        """Join torchrun's process group when WORLD_SIZE > 1; otherwise the single process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        timeout = dt.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timeout)
        # Flags and Python objects travel on the CPU: no device sync, and gloo takes any size.
        flags = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
        return cls(rank, size, local_rank, flags)

    def device(self, device_type: str) -> str:
        """The device this rank trains on: its own GPU (LOCAL_RANK) under torchrun."""
        return f"cuda:{self.local_rank}" if device_type == "cuda" and self.distributed else device_type

    # -- collectives (each a no-op for one process) ------------------------------------------

    def agree(self, state: int = OK, save: bool = False) -> tuple[int, bool]:
        """(the worst state over all ranks (OK < STOP < FAILED), whether any rank wants a
        checkpoint now): every rank gets the same answer."""
        if not self.distributed:
            return state, save
        import torch
        import torch.distributed as dist

        flag = torch.tensor([state, int(save)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._flags)
        return int(flag[0]), bool(flag[1])

    def check(self, state: int = OK, save: bool = False) -> tuple[int, bool]:
        """agree(), raising PeerFailed when another rank failed; else (OK or STOP, save)."""
        worst, save = self.agree(state, save)
        if worst == FAILED and state != FAILED:
            raise agreed(PeerFailed("another rank failed"))
        return worst, save

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a small picklable value: a decision, a step)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._flags)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self._flags)
        return out

    def sum(self, value):
        """A tensor summed over ranks (in place on a copy); the tensor itself for one process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        return value

    def min(self, value: int) -> int:
        """The smallest of every rank's `value` (an all-reduce on the CPU group)."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        box = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(box, op=dist.ReduceOp.MIN, group=self._flags)
        return int(box[0])

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._flags)

    def close(self) -> None:
        """Leave the process group (at exit; torchrun waits for every rank)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


_CURRENT = World()


def current() -> World:
    """The world this process runs in (set once by `join`); one process until then."""
    return _CURRENT


def join(device_type: str) -> World:
    """Join torchrun's group (once per process) and make it `current()`."""
    global _CURRENT
    if not _CURRENT.distributed:
        _CURRENT = World.from_env(device_type)
        atexit.register(_CURRENT.close)
    return _CURRENT


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """This process was started by torchrun with more than one rank."""
    return env_world_size() > 1


EXIT_FILE_ENV = "VITRUN_EXIT_FILE"


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `vitrun argv…` under torchrun with `nproc` processes; returns rank 0's exit status.

    The ranks exit 0 and rank 0 leaves its status in a file (`exit_under_launcher`): a failed
    stage is then the one line vitrun prints, not also torchrun's ChildFailedError report. A
    rank that crashes outright still fails torchrun, whose status is returned when rank 0's is 0. SIGTERM
    (a scheduler's preemption) is passed on to torchrun, which passes it to every rank.
    """
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vitrun-launch-") as folder:
        status_file = os.path.join(folder, "exit")
        proc = subprocess.Popen(relaunch_argv(nproc, argv), env={**os.environ, EXIT_FILE_ENV: status_file})
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
        try:
            while True:
                try:
                    code = proc.wait()
                    break
                except KeyboardInterrupt:  # Ctrl-C reached the ranks too: wait for their checkpoints
                    continue
        finally:
            signal.signal(signal.SIGTERM, previous)
        ours = 0
        if os.path.isfile(status_file):  # torchrun itself fails after a SIGTERM: vitrun's 130 says more
            with open(status_file) as f:
                ours = int(f.read().strip() or 0)
        return ours or code


class exit_under_launcher:
    """Around `main()`: under `relaunch`, rank 0 writes its exit status to the launcher's file
    and every rank exits 0; anywhere else, nothing changes."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        path = os.environ.get(EXIT_FILE_ENV)
        if kind is not SystemExit or not path or not launched():
            return False
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        if env_rank() == 0:
            with open(path, "w") as f:
                f.write(str(code))
        sys.exit(0)


def relaunch_argv(nproc: int, argv: list[str]) -> list[str]:
    """The command that re-runs `vitrun argv…` under torchrun with `nproc` processes, this node only.

    argv: vitrun's own arguments without `--nproc-per-node`. `--standalone` gives a private
    rendezvous on a free port, so two such runs on one machine do not meet each other.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "vitrun", *argv]


def strip_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


# -- the global batch over ranks and micro-steps ------------------------------------------------

class BatchSplitError(ValueError):
    """A recipe's batch does not split evenly over the processes and micro-steps; str() is one
    line naming the key and a fix."""


AUTO = "auto"  # [run] micro_batch: the largest micro-batch that fits, found before the first step


def micro_batch_setting(micro_batch: int | str | None, device_type: str) -> int | str | None:
    """What `[run] micro_batch` means on this device: an integer as written; "auto" as written,
    and by default on CUDA (a slice that does not fit then runs in micro-steps instead of
    failing); unset on the CPU: the whole slice (running out of memory there is swapping, not
    an error, and the probe costs a few passes of a slow device)."""
    if micro_batch is None and device_type == "cuda":
        return AUTO
    return micro_batch


def device_type(device: str) -> str:
    """"cuda" or "cpu": the kind of device a `[run] device` value trains on here."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.split(":")[0] == "cuda" else "cpu"


@dataclass(frozen=True)
class BatchSplit:
    """`batch` (the recipe's global batch) = micro × world × accumulation; with `auto`, micro and
    accumulation are found before the first step (micro ≤ per_rank, dividing it)."""

    batch: int
    world: int
    micro: int
    accumulation: int
    auto: bool = False

    @property
    def per_rank(self) -> int:
        return self.batch // self.world

    def describe(self) -> str:
        if self.auto:
            return f"auto per device (the largest divisor of {self.per_rank} that fits in memory) × {self.world} devices × auto accumulation = {self.batch} global batch"
        return f"{self.micro} per device × {self.world} devices × {self.accumulation} accumulation = {self.batch} global batch"


def split_batch(batch: int, world: int, micro_batch: int | str | None = None, key: str = "batch_size") -> BatchSplit:
    """Split the global `batch` over `world` ranks, each slice into micro-steps of `micro_batch`
    images (default, or larger than the slice: the whole slice in one step; "auto": decided by
    the loop, engine/micro_batch.py)."""
    if batch % world:
        raise BatchSplitError(f"{key} = {batch} does not split over {world} processes: use a {key} divisible by {world}, or another --nproc-per-node")
    per_rank = batch // world
    if micro_batch == AUTO:
        return BatchSplit(batch, world, per_rank, 1, auto=True)
    micro = min(micro_batch or per_rank, per_rank)
    if per_rank % micro:
        fits = [d for d in range(micro, 0, -1) if per_rank % d == 0][0]
        raise BatchSplitError(
            f"{key} = {batch} over {world} processes is {per_rank} images each, not a multiple of [run] micro_batch = {micro}: "
            f"set micro_batch = {fits}, or a {key} divisible by {world * micro}"
        )
    return BatchSplit(batch, world, micro, per_rank // micro)
