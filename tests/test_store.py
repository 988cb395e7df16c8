"""The store: atomic writes, stage status, locks."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from vitrun.store import Store, write_atomic, write_json_atomic


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "stage.json"
    write_json_atomic(path, {"x": 1})
    write_json_atomic(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["stage.json"], "no temp files left behind"


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "stage.json"
    write_atomic(path, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]


def test_status_lifecycle(tmp_path):
    sd = Store(tmp_path).stage("exp", "pretrain-abc")
    assert sd.status() == "todo"
    sd.path.mkdir(parents=True)
    sd.metrics_file.write_text('{"step": 1}\n')
    sd.checkpoint_file.write_bytes(b"x")
    assert sd.status() == "partial"
    sd.finish({"key": "pretrain-abc", "metrics": {"accuracy": 0.5}})
    assert sd.status() == "done"
    assert not sd.checkpoint_file.exists(), "the checkpoint is dropped once the stage is done"
    assert Store(tmp_path).experiments() == ["exp"]
    assert [r["key"] for r in Store(tmp_path).records()] == ["pretrain-abc"]


def test_records_skip_unreadable(tmp_path):
    store = Store(tmp_path)
    store.stage("exp", "a").finish({"key": "a"})
    (tmp_path / "exp" / "b").mkdir()
    (tmp_path / "exp" / "b" / "stage.json").write_text("{broken")
    assert [r["key"] for r in store.records("exp")] == ["a"]


def test_lock_excludes_second_runner(tmp_path):
    sd = Store(tmp_path).stage("exp", "k")
    events = []

    def second():
        with sd.lock(on_wait=lambda: events.append("waited")):
            events.append("second")

    with sd.lock():
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        events.append("first done")
    thread.join(5)
    assert events == ["waited", "first done", "second"]
