"""Stage directories under `results/<experiment>/<stage-key>/`, and the integrity of their records.

`stage.json` is written last and atomically: a directory without it is unfinished and resumes
from its checkpoint. The record carries the sha256 of its own canonical content (`checksum`)
and of the stage's weights (`files`), so a stage counts as done only when its record parses
and verifies, and a child never loads weights that changed on disk.

Record format 3 (`"format": 3`): the record's body as written (indented, keys sorted), then
`checksum`, the sha256 of those very bytes, as its last key: a report verifies 10,000 records
by hashing their files, with nothing re-serialised. Format 2 records (the checksum of a compact
re-serialisation) still verify; records without a checksum (format 1, vitrun before the
integrity work) count as broken and their stages re-run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from vitrun import lock
from vitrun.durable import remove_orphaned_temps, sha256_file, write_atomic, write_stream_atomic

__all__ = ["Store", "StageDir", "BrokenRecord", "Problem", "write_atomic", "write_stream_atomic", "write_json_atomic"]

STAGE_FILE = "stage.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "weights.pt"
ERROR_FILE = "error.log"
LOCK_FILE = ".lock"
RECIPE_FILE = "recipe.json"
RECORD_FORMAT = 3
_SEALED_BY = b',\n  "checksum": "'  # the last key of a format-3 record, then 64 hex digits and b'"\n}\n'
# A record's outcome; only "done" lets children run. "diverged" is a result (the loss went
# non-finite: deterministic, kept); "failed" (the stage raised) is retried by the next run.
FINISHED = ("done", "diverged")


class BrokenRecord(Exception):
    """A stage.json that cannot be trusted; str() is one line naming the file and why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Problem:
    """A stage whose record is missing from a report: its file and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, in order; a line torn by a full disk or a kill (or any
    other line that is not a JSON object) is skipped. Empty when the file is absent."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a format-2 record's checksum covers: every key but `checksum`, sorted, compact."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sealed_bytes(record: dict[str, Any]) -> bytes:
    """`record` as stage.json: its body (indented, keys sorted, ASCII), then the sha256 of the
    body's bytes as a last `checksum` key."""
    body = json.dumps({**{k: v for k, v in record.items() if k != "checksum"}, "format": RECORD_FORMAT}, indent=2, sort_keys=True, ensure_ascii=True).encode()
    return body[:-2] + _SEALED_BY + hashlib.sha256(body).hexdigest().encode() + b'"\n}\n'  # body ends b"\n}"


def _sealed(raw: bytes) -> bool:
    """Whether format-3 bytes carry the sha256 of their own body (see `sealed_bytes`)."""
    at = raw.rfind(_SEALED_BY)
    end = at + len(_SEALED_BY)
    if at < 0 or raw[end + 64 :] != b'"\n}\n':
        return False
    return hashlib.sha256(raw[:at] + b"\n}").hexdigest().encode() == raw[end : end + 64]


def parse_record(path: Path) -> dict[str, Any]:
    """The verified record at `path`; raises BrokenRecord (one line) for anything else."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BrokenRecord(path, f"cannot read it ({err.strerror})") from None
    try:
        record = orjson.loads(raw)  # twice as fast as json: a report reads 10,000 records
    except orjson.JSONDecodeError:  # damage, or NaN/Infinity (json writes them, orjson refuses)
        record = _parse_slowly(path, raw)
    if not isinstance(record, dict):
        raise BrokenRecord(path, "not a stage record (expected a JSON object)")
    form = record.get("format")
    if form not in (2, RECORD_FORMAT) or "checksum" not in record:
        raise BrokenRecord(path, f"record format {form or 1!r} without a valid checksum (vitrun wants format {RECORD_FORMAT}); the stage will re-run")
    if not (_sealed(raw) if form == RECORD_FORMAT else hashlib.sha256(canonical(record)).hexdigest() == record["checksum"]):
        raise BrokenRecord(path, "checksum mismatch (the file was changed or damaged after it was written)")
    return record


def _parse_slowly(path: Path, raw: bytes) -> Any:
    """`raw` parsed by json, or BrokenRecord saying why it is not JSON (with line and column)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BrokenRecord(path, "not UTF-8 text (damaged)") from None
    if not text.strip():
        raise BrokenRecord(path, "empty (a write was cut short)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BrokenRecord(path, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; truncated or damaged)") from None


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

    @property
    def error_file(self) -> Path:
        return self.path / ERROR_FILE

    def status(self) -> str:
        """The stage's state: its record's status ('done', 'diverged', 'failed') when the record
        verifies; 'broken' when a record is there but cannot be trusted; else 'partial' (started)
        or 'todo'. Only 'done' lets child stages run."""
        if self.stage_file.exists():
            try:
                return str(self.read().get("status", "done"))
            except BrokenRecord:
                return "broken"
        if self.checkpoint_file.is_file() or self.metrics_file.is_file():
            return "partial"
        return "todo"

    def read(self) -> dict[str, Any]:
        """The verified record; raises BrokenRecord naming the file and the reason."""
        return parse_record(self.stage_file)

    def finish(self, record: dict[str, Any]) -> None:
        """Seal and write the record (with the weights' sha256 when the stage wrote weights);
        the checkpoint is no longer needed once the stage has ended."""
        files = {}
        if self.weights_file.is_file():
            files[WEIGHTS_FILE] = {"sha256": sha256_file(self.weights_file), "bytes": self.weights_file.stat().st_size}
        write_atomic(self.stage_file, sealed_bytes({**record, "files": files}))
        with contextlib.suppress(FileNotFoundError):
            self.checkpoint_file.unlink()

    def verified_weights(self) -> Path:
        """The weights file, after checking it against the record; raises BrokenRecord otherwise."""
        expected = self.read().get("files", {}).get(WEIGHTS_FILE)
        if not expected:
            raise BrokenRecord(self.stage_file, f"records no {WEIGHTS_FILE} (the stage wrote no weights)")
        if not self.weights_file.is_file():
            raise BrokenRecord(self.weights_file, "missing")
        if sha256_file(self.weights_file) != expected["sha256"]:
            raise BrokenRecord(self.weights_file, "fails its sha256 checksum (changed or damaged since the stage finished)")
        return self.weights_file

    def set_aside(self, file: Path, why: str = "broken") -> Path:
        """Rename a file that cannot be used to `<name>.<why>-<UTC time>`: kept for inspection,
        out of the way of the re-run."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        target = file.with_name(f"{file.name}.{why}-{stamp}")
        os.replace(file, target)
        return target

    def clean(self) -> list[Path]:
        """Remove temp files of dead writers (a killed run's half-written checkpoint)."""
        return remove_orphaned_temps(self.path)

    def running_elsewhere(self) -> bool:
        """A live process holds this stage's lock now (another runner is training it)."""
        path = self.path / LOCK_FILE
        return lock.is_held(path) and not lock.is_stale(path)

    @contextlib.contextmanager
    def lock(self, on_wait: Callable[[str], None] | None = None, wait: bool = True) -> Iterator[None]:
        """Hold this stage's lock; another runner on the same stage waits (told who holds it),
        then finds it done; `wait=False` raises lock.Busy instead of waiting."""
        with lock.hold(self.path / LOCK_FILE, on_wait, wait):
            yield


@dataclass
class Scan:
    """What a results directory holds for a report: trusted records, and what is missing."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class Store:
    """The results directory: one folder per experiment, one per stage inside it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def stage(self, experiment: str, key: str) -> StageDir:
        return StageDir(self.root / experiment / key)

    def write_recipe(self, experiment: str, record: dict[str, Any]) -> None:
        """Keep the resolved recipe beside its results, so `vitrun report` knows its tables
        (rewritten only when it changed: a run with nothing new writes nothing)."""
        path = self.root / experiment / RECIPE_FILE
        if self.recipe(experiment) != record:
            write_json_atomic(path, record)

    def recipe(self, experiment: str) -> dict[str, Any] | None:
        """The saved recipe, or None when absent or unreadable (the report then uses defaults)."""
        path = self.root / experiment / RECIPE_FILE
        try:
            record = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def experiments(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob(f"*/{STAGE_FILE}")))

    def scan(self, experiment: str | None = None) -> Scan:
        """Every verified record (any status), and a Problem for each stage.json that does not verify."""
        out = Scan()
        for name in [experiment] if experiment else self.experiments():
            for path in self.stage_files(name):
                try:
                    out.records.append(parse_record(Path(path)))
                except BrokenRecord as err:
                    out.problems.append(Problem(err.path, err.reason))
        return out

    def stage_files(self, experiment: str) -> list[str]:
        """The stage.json of every stage folder, in key order (one directory read and plain
        strings: 10,000 stages are listed in milliseconds)."""
        folder = os.path.join(self.root, experiment)
        try:
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [path for path in (os.path.join(folder, name, STAGE_FILE) for name in names) if os.path.lexists(path)]

    def records(self, experiment: str | None = None) -> Iterator[dict[str, Any]]:
        """Every verified record; see `scan` for the ones that do not verify."""
        yield from self.scan(experiment).records

