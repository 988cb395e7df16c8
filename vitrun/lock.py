"""One runner per stage: an `flock` on `<stage>/.lock`, which records its holder's host and PID.

The kernel drops an flock when every descriptor on it closes, so a killed runner's lock is
free at once. A lock can outlive its runner when a child process (a data-loading worker)
inherited the descriptor; then the recorded PID is dead, and a waiting runner on the same
host takes the lock over by replacing the file (a new inode: the old lock no longer matters).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from vitrun.durable import HOST, file_mode, pid_alive

POLL_SECONDS = 0.5


def holder(path: Path) -> tuple[str, int] | None:
    """(host, pid) recorded in lock file `path`, or None when empty or unreadable."""
    try:
        host, pid = path.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def describe_holder(path: Path) -> str:
    found = holder(path)
    return f"PID {found[1]} on {found[0]}" if found else "an unknown process"


def is_stale(path: Path) -> bool:
    """The recorded holder is a dead process on this host."""
    found = holder(path)
    return found is not None and found[0] == HOST and not pid_alive(found[1])


def is_held(path: Path) -> bool:
    """Someone holds the flock on `path` now (tested without waiting)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Busy(Exception):
    """Another live process holds the lock (`hold(wait=False)`); str() names it."""


@contextlib.contextmanager
def hold(path: Path, on_wait: Callable[[str], None] | None = None, wait: bool = True) -> Iterator[None]:
    """Hold the lock at `path`; while another process holds it, call `on_wait(who)` once and wait
    (or, `wait=False`, raise Busy at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            inode = os.fstat(fd).st_ino
            os.close(fd)
            if is_stale(path):
                _take_over(path, inode)
                continue
            if not wait:
                raise Busy(describe_holder(path))
            if not waited and on_wait:
                on_wait(describe_holder(path))
            waited = True
            time.sleep(POLL_SECONDS)
            continue
        if _same_file(path, fd):
            break
        os.close(fd)  # the file was replaced while we locked it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{HOST} {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _take_over(path: Path, inode: int) -> None:
    """Remove a stale lock file, unless another waiter has already replaced it."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
