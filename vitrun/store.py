"""Stage directories under `results/<experiment>/<stage-key>/`.

`stage.json` is written last and atomically (temp file, fsync, rename): a directory
without it is unfinished and resumes from its checkpoint. A lock file per stage lets
several runners (shards, nodes) share one results directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

STAGE_FILE = "stage.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "weights.pt"
RECIPE_FILE = "recipe.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
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


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@dataclass(frozen=True)
class StageDir:
    path: Path

    @property
    def stage_file(self) -> Path:
        return self.path / STAGE_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_FILE

    def status(self) -> str:
        """'done' (stage.json present), 'partial' (started), or 'todo'."""
        if self.stage_file.is_file():
            return "done"
        if self.checkpoint_file.is_file() or self.metrics_file.is_file():
            return "partial"
        return "todo"

    def read(self) -> dict[str, Any]:
        return json.loads(self.stage_file.read_text())

    def finish(self, record: dict[str, Any]) -> None:
        """Mark the stage done; the checkpoint is no longer needed once weights are final."""
        write_json_atomic(self.stage_file, record)
        with contextlib.suppress(FileNotFoundError):
            self.checkpoint_file.unlink()

    @contextlib.contextmanager
    def lock(self, on_wait=None) -> Iterator[None]:
        """Hold this stage's lock; another runner on the same stage waits, then finds it done."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class Store:
    """The results directory: one folder per experiment, one per stage inside it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def stage(self, experiment: str, key: str) -> StageDir:
        return StageDir(self.root / experiment / key)

    def write_recipe(self, experiment: str, record: dict[str, Any]) -> None:
        """Keep the resolved recipe beside its results, so `vitrun report` knows its tables."""
        write_json_atomic(self.root / experiment / RECIPE_FILE, record)

    def recipe(self, experiment: str) -> dict[str, Any] | None:
        path = self.root / experiment / RECIPE_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def experiments(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob(f"*/{STAGE_FILE}")))

    def records(self, experiment: str | None = None) -> Iterator[dict[str, Any]]:
        """Every finished stage's record (unreadable ones skipped: a report never crashes on one)."""
        for name in [experiment] if experiment else self.experiments():
            for path in sorted((self.root / name).glob(f"*/{STAGE_FILE}")):
                try:
                    yield json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
