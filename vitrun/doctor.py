"""`vitrun doctor`: what this machine offers (versions, devices, caches) and what a results
directory holds that needs attention, with what `--fix` does about it.

Findings in a results directory, and the fix for each:
* broken      a stage.json that does not parse or verify        set aside (`stage.json.broken-<time>`): the stage re-runs
* bad weights a weights.pt that fails the record's sha256       record set aside: the stage re-runs
* failed      a stage that raised (traceback in error.log)      none: the next run retries it
* unfinished  a checkpoint or log without stage.json            none: the next run resumes it
* orphaned    a temp file of a dead writer on this host         removed
* stale lock  a lock file naming a dead process on this host    removed
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from vitrun import lock
from vitrun.durable import orphaned_temps
from vitrun.store import LOCK_FILE, BrokenRecord, StageDir

FIXES = {
    "broken": "set the record aside; the stage re-runs",
    "bad weights": "set the record aside; the stage re-runs",
    "orphaned": "remove it",
    "stale lock": "remove it",
}


@dataclass(frozen=True)
class Finding:
    kind: str  # one of the kinds above
    path: Path
    detail: str

    @property
    def fix(self) -> str | None:
        return FIXES.get(self.kind)


def versions() -> list[tuple[str, str]]:
    out = [("python", platform.python_version())]
    for name in ("vitrun", "torch", "torchvision", "timm", "pydantic", "numpy", "datasets"):
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def devices() -> list[str]:
    import torch

    found = [f"cpu: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        found.append("cuda: none")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps: available")
    return found


def caches(cache_dir: str | None) -> list[tuple[str, Path, int | None]]:
    """(what, path, bytes or None when absent) for each cache vitrun reads."""
    vitrun_cache = Path(cache_dir or os.environ.get("VITRUN_CACHE") or Path.home() / ".cache" / "vitrun").expanduser()
    hf = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    torch_hub = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch").expanduser()
    return [(what, path, _size(path) if path.is_dir() else None) for what, path in (("vitrun datasets", vitrun_cache), ("hugging face", hf), ("torch hub", torch_hub))]


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def scan(results: Path, check_weights: bool = True) -> list[Finding]:
    """Everything under `results` that needs attention (see the module docstring)."""
    findings: list[Finding] = []
    if not results.is_dir():
        return findings
    for experiment in sorted(p for p in results.iterdir() if p.is_dir()):
        findings += [Finding("orphaned", p, "temp file of a killed writer") for p in orphaned_temps(experiment)]
        for folder in sorted(p for p in experiment.iterdir() if p.is_dir()):
            findings += _scan_stage(StageDir(folder), check_weights)
    return findings


def _scan_stage(sd: StageDir, check_weights: bool) -> list[Finding]:
    out = [Finding("orphaned", p, "temp file of a killed writer") for p in orphaned_temps(sd.path)]
    lock_file = sd.path / LOCK_FILE
    if lock_file.is_file() and lock.is_stale(lock_file) and not lock.is_held(lock_file):
        out.append(Finding("stale lock", lock_file, f"names {lock.describe_holder(lock_file)}, which is dead"))
    if not sd.stage_file.exists():
        if sd.checkpoint_file.exists() or sd.metrics_file.exists():
            out.append(Finding("unfinished", sd.path, "started, no stage.json: the next run resumes it"))
        return out
    try:
        record = sd.read()
    except BrokenRecord as err:
        return out + [Finding("broken", sd.stage_file, err.reason)]
    if record.get("status") == "failed":
        out.append(Finding("failed", sd.path, f"{record.get('error', 'failed')} (traceback: {sd.error_file})"))
    if check_weights and record.get("files", {}).get("weights.pt"):
        try:
            sd.verified_weights()
        except BrokenRecord as err:
            out.append(Finding("bad weights", err.path, err.reason))
    return out


def fix(finding: Finding) -> str:
    """Apply the fix for one finding; returns what was done."""
    if finding.kind in ("orphaned", "stale lock"):
        finding.path.unlink(missing_ok=True)
        return f"removed {finding.path}"
    if finding.kind in ("broken", "bad weights"):
        sd = StageDir(finding.path.parent)
        if sd.stage_file.exists():
            moved = sd.set_aside(sd.stage_file, "broken" if finding.kind == "broken" else "bad-weights")
            return f"set aside {sd.stage_file} as {moved.name}"
        return f"nothing to do for {finding.path}"
    return "no fix needed"


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

