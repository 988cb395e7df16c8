"""The store: atomic writes, sealed records, statuses, locks, permissions, orphaned temp files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from vitrun import durable, lock
from vitrun.store import BrokenRecord, Store, write_atomic, write_json_atomic


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "stage.json"
    write_json_atomic(path, {"x": 1})
    write_json_atomic(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["stage.json"], "no temp files left behind"


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "stage.json"
    write_atomic(path, b"old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]


def test_files_readable_by_others_respecting_umask(tmp_path):
    store = Store(tmp_path / "results")
    sd = store.stage("exp", "k")
    sd.finish({"key": "k"})
    assert oct(sd.stage_file.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert oct(sd.path.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    old = os.umask(0o077)
    try:
        sd.finish({"key": "k"})
    finally:
        os.umask(old)
    assert sd.stage_file.stat().st_mode & 0o777 == 0o600, "a private umask stays private"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_status_lifecycle(tmp_path):
    sd = Store(tmp_path).stage("exp", "pretrain-abc")
    assert sd.status() == "todo"
    sd.path.mkdir(parents=True)
    sd.metrics_file.write_text('{"step": 1}\n')
    sd.checkpoint_file.write_bytes(b"x")
    assert sd.status() == "partial"
    sd.finish({"key": "pretrain-abc", "status": "done", "metrics": {"accuracy": 0.5}})
    assert sd.status() == "done"
    assert not sd.checkpoint_file.exists(), "the checkpoint is dropped once the stage is done"
    assert Store(tmp_path).experiments() == ["exp"]
    assert [r["key"] for r in Store(tmp_path).records()] == ["pretrain-abc"]
    for status in ("failed", "diverged"):
        sd.finish({"key": "pretrain-abc", "status": status})
        assert sd.status() == status


@pytest.mark.parametrize("damage", [
    lambda text: b"",
    lambda text: text[: len(text) // 2],
    lambda text: text.replace(b"0.5", b"0.9"),  # parses, but the checksum no longer matches
    lambda text: json.dumps(json.loads(text), indent=4).encode(),  # the same record re-indented: not the bytes sealed
    lambda text: text.replace(b'"format": 3', b'"format": 2'),  # format 2's checksum covers other bytes
    lambda text: text[:10] + b"\xff" + text[11:],
    lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k not in ("checksum", "format")}).encode(),  # format 1
    lambda text: b"[1, 2]",
])
def test_damaged_record_is_broken_and_reported(tmp_path, damage):
    store = Store(tmp_path)
    store.stage("exp", "a").finish({"key": "a", "status": "done", "metrics": {"accuracy": 0.5}})
    sd = store.stage("exp", "b")
    sd.finish({"key": "b", "status": "done", "metrics": {"accuracy": 0.5}})
    sd.stage_file.write_bytes(damage(sd.stage_file.read_bytes()))
    assert sd.status() == "broken"
    with pytest.raises(BrokenRecord, match="stage.json: "):
        sd.read()
    scan = store.scan("exp")
    assert [r["key"] for r in scan.records] == ["a"]
    assert [p.path for p in scan.problems] == [sd.stage_file]
    assert "\n" not in str(scan.problems[0])


def test_format_2_records_still_verify_and_nan_parses(tmp_path):
    """Records sealed before format 3 (checksum of a compact re-serialisation) stay done;
    NaN (which json writes and orjson refuses) is read as json reads it."""
    import hashlib
    import math

    from vitrun.store import canonical

    sd = Store(tmp_path).stage("exp", "old")
    sd.path.mkdir(parents=True)
    body = {"key": "old", "status": "done", "metrics": {"accuracy": 0.5, "final_loss": float("nan")}, "format": 2}
    sd.stage_file.write_text(json.dumps({**body, "checksum": hashlib.sha256(canonical(body)).hexdigest()}, indent=2, sort_keys=True))
    assert sd.status() == "done" and math.isnan(sd.read()["metrics"]["final_loss"])
    new = Store(tmp_path).stage("exp", "new")
    new.finish({"key": "new", "status": "done", "metrics": {"final_loss": float("nan")}})
    assert new.read()["format"] == 3 and math.isnan(new.read()["metrics"]["final_loss"])
    assert new.stage_file.read_bytes().endswith(b'"\n}\n')


def test_unreadable_record_is_broken(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    sd = Store(tmp_path).stage("exp", "a")
    sd.finish({"key": "a"})
    sd.stage_file.chmod(0)
    assert sd.status() == "broken"
    assert "cannot read it" in str(Store(tmp_path).scan().problems[0])


def test_weights_checksum(tmp_path):
    sd = Store(tmp_path).stage("exp", "a")
    sd.path.mkdir(parents=True)
    sd.weights_file.write_bytes(b"weights" * 1000)
    sd.finish({"key": "a"})
    assert sd.verified_weights() == sd.weights_file
    raw = bytearray(sd.weights_file.read_bytes())
    raw[100] ^= 0x01  # one flipped bit
    sd.weights_file.write_bytes(bytes(raw))
    with pytest.raises(BrokenRecord, match="weights.pt: fails its sha256 checksum"):
        sd.verified_weights()
    assert sd.status() == "done", "the record itself still verifies; the weights are checked when loaded"


def test_lock_excludes_second_runner_and_names_holder(tmp_path):
    sd = Store(tmp_path).stage("exp", "k")
    events = []

    def second():
        with sd.lock(on_wait=lambda who: events.append(f"waited for {who}")):
            events.append("second")

    with sd.lock():
        assert lock.holder(sd.path / ".lock") == (durable.HOST, os.getpid())
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.8)
        events.append("first done")
    thread.join(5)
    assert events == [f"waited for PID {os.getpid()} on {durable.HOST}", "first done", "second"]


def test_lock_of_a_dead_holder_is_taken_over(tmp_path):
    """A killed runner's data worker can keep the flock; its recorded PID is dead: take over."""
    path = tmp_path / "stage" / ".lock"
    path.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    code = f"import fcntl, os, sys, time; f = open({str(path)!r}, 'w'); fcntl.flock(f, fcntl.LOCK_EX); f.write('{durable.HOST} {dead.stdout.strip()}\\n'); f.flush(); print('held', flush=True); time.sleep(30)"
    keeper = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert keeper.stdout.readline().strip() == "held"
        assert lock.is_held(path) and lock.is_stale(path)
        started = time.monotonic()
        with lock.hold(path, on_wait=lambda who: pytest.fail("a dead holder is not waited for")):
            assert lock.holder(path) == (durable.HOST, os.getpid())
        assert time.monotonic() - started < 2
    finally:
        keeper.kill()
        keeper.wait()


def test_orphaned_temps_of_dead_writers_are_removed(tmp_path):
    sd = Store(tmp_path).stage("exp", "k")
    sd.path.mkdir(parents=True)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout.strip()
    orphan = sd.path / f".checkpoint.pt.{durable.HOST}.{dead_pid}.abc123.tmp"
    live = sd.path / f".checkpoint.pt.{durable.HOST}.{os.getpid()}.def456.tmp"
    other_host = sd.path / f".checkpoint.pt.elsewhere.{dead_pid}.xyz.tmp"
    for path in (orphan, live, other_host):
        path.write_bytes(b"partial")
    assert sd.clean() == [orphan]
    assert not orphan.exists() and live.exists() and other_host.exists()
