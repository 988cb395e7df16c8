"""Writes that readers see whole or not at all, readable by other accounts, and the temp files
they leave when their writer is killed.

Every write goes to `.<name>.<host>.<pid>.<random>.tmp` beside its target, is fsynced and renamed
over it; the writer's host and PID in the name let a later run (or `vitrun doctor`) tell the
temp file of a killed writer from one still being written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

CHUNK = 1 << 20  # bytes per read when hashing: weights can be gigabytes
HOST = socket.gethostname().replace(".", "_") or "host"
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def file_mode() -> int:
    """0644 under the usual umask 022: what `open()` would give a new file (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class _HashingWriter:
    """A file wrapper that hashes what goes through it (torch.save writes to any object with write)."""

    def __init__(self, file: IO[bytes]):
        self.file, self.digest = file, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def write_stream_atomic(path: Path, produce: Callable[[Any], None]) -> str:
    """Atomically write what `produce(file)` writes to `path`; returns its sha256 (hex).

    Readers see the old file or the whole new one, never a part; on any error (full disk,
    Ctrl-C) the temp file is removed and the old file stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{HOST}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _HashingWriter(f)
            produce(writer)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return writer.digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> str:
    """Write `data` so that readers see the old file or the whole new one; returns its sha256."""
    return write_stream_atomic(path, lambda f: f.write(data))


def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file, read in chunks so gigabyte weights need no gigabyte of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a process of another account counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_writer(path: Path) -> tuple[str, int] | None:
    """(host, pid) of the writer of temp file `path`, or None if it is not one of ours."""
    match = _TEMP.match(path.name)
    return (match["host"], int(match["pid"])) if match else None


def orphaned_temps(folder: Path) -> list[Path]:
    """Temp files in `folder` whose writer was on this host and is dead (killed mid-write).

    Temp files of writers on other hosts are left alone: their PIDs mean nothing here.
    """
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob(".*.tmp")):
        writer = temp_writer(path)
        if writer and writer[0] == HOST and not pid_alive(writer[1]):
            out.append(path)
    return out


def remove_orphaned_temps(folder: Path) -> list[Path]:
    removed = []
    for path in orphaned_temps(folder):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
