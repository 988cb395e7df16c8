"""Several stage runners on one machine (`[run] jobs`, `--jobs N`): the same command N times.

The runners share the plan through the stage locks: each takes the next stage nobody holds,
and a stage whose parent another runner is training waits for it (runner.py `_decide`). Why:
small models use two CPU threads badly (ViT-Mu/4 at 24 px: 121 ms a step on one thread, 127 ms
on two; R14x0.25 1.24× faster on two), so two one-thread runners do nearly twice the work of
one two-thread runner. The extra runners are children of the command the user started: their
output goes to a log file (named when one fails), the parent prints the report once all are
done. A GPU has one device to share: there `--shard` (one runner per GPU) is the tool.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHILD_ENV = "VITRUN_JOB"  # set in the extra runners: they never start runners of their own


def is_child() -> bool:
    return os.environ.get(CHILD_ENV) is not None


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    return max(1, cores() // jobs)


@dataclass
class Helper:
    process: subprocess.Popen
    log: Path


def start(argv: list[str], jobs: int, threads: int) -> list[Helper]:
    """Start `jobs - 1` runners of `vitrun <argv>` with `threads` intra-op threads each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    folder = Path(tempfile.mkdtemp(prefix="vitrun-jobs-"))
    helpers = []
    for index in range(2, jobs + 1):
        log = folder / f"runner-{index}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "vitrun", *argv],
                env={**env, CHILD_ENV: str(index)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        helpers.append(Helper(process, log))
    return helpers


def finish(helpers: list[Helper]) -> list[str]:
    """Wait for every helper; one line for each that did not end cleanly (its log kept), and
    the logs of the others removed."""
    problems = []
    for helper in helpers:
        code = helper.process.wait()
        if code == 0:
            helper.log.unlink(missing_ok=True)
        else:
            problems.append(f"runner {helper.log.stem.split('-')[-1]} exited with status {code}; its output: {helper.log}")
    if helpers and not problems:
        helpers[0].log.parent.rmdir()
    return problems


def stop(helpers: list[Helper]) -> None:
    """Pass a stop on (Ctrl-C, SIGTERM): each helper checkpoints and exits, as the parent does."""
    for helper in helpers:
        if helper.process.poll() is None:
            helper.process.terminate()
    for helper in helpers:
        helper.process.wait()
