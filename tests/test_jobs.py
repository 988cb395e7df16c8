"""Several runners on one machine (`--jobs`, `[run] jobs`): helpers started and ended, and a
stage whose parent another runner is training waits for it instead of being skipped."""

from __future__ import annotations

import contextlib
import io
import threading
import time

import pytest

from rich.console import Console

from vitrun import jobs, lock, runner
from vitrun.plan import make_stage
from vitrun.store import Store


def _pair(tmp_path):
    store = Store(tmp_path)
    parent = make_stage("pretrain", {"model": {"name": "m"}, "pretrain": {"steps": 1}})
    child = make_stage("finetune", {"model": {"name": "m"}, "finetune": {"steps": 1}}, (parent.key,))
    return store, parent, child


def _decide(store, child, wait):
    out = io.StringIO()
    with contextlib.ExitStack() as held:
        decision = runner._decide(child, store.stage("x", child.key), store, "x", held, wait, Console(file=out))
    return decision, out.getvalue()


def _other_runner(store, parent, finish: bool):
    """Holds the parent's lock as another runner would, and lets go after 0.5 s (with the
    parent done, or not)."""
    held = threading.Event()

    def run():
        sd = store.stage("x", parent.key)
        with lock.hold(sd.path / ".lock"):
            held.set()
            time.sleep(0.5)
            if finish:
                sd.finish({"key": parent.key, "kind": "pretrain", "status": "done", "metrics": {}})

    thread = threading.Thread(target=run)
    thread.start()
    held.wait(10)
    return thread


def test_a_child_of_a_stage_another_runner_trains_waits_for_it(tmp_path):
    store, parent, child = _pair(tmp_path)
    thread = _other_runner(store, parent, finish=True)
    assert _decide(store, child, wait=False)[0] == ("later",)  # first visit: on to other stages
    decision, said = _decide(store, child, wait=True)  # back at the end: wait, then run it
    thread.join()
    assert decision == ("run", "todo") and "waiting for" in said and parent.key in said


def test_a_parent_the_other_runner_did_not_finish_blocks_its_child(tmp_path):
    store, parent, child = _pair(tmp_path)
    thread = _other_runner(store, parent, finish=False)
    decision, _ = _decide(store, child, wait=True)
    thread.join()
    assert decision == ("blocked", parent.key, "todo")
    assert _decide(store, child, wait=False)[0] == ("blocked", parent.key, "todo")  # nobody runs it: skipped


def test_helpers_run_the_same_command_and_report_only_failures(tmp_path, monkeypatch):
    ok = jobs.start(["--help"], 2, threads=1)
    assert len(ok) == 1 and jobs.finish(ok) == [] and not ok[0].log.exists()
    bad = jobs.start(["no-such-command"], 3, threads=1)
    problems = jobs.finish(bad)
    assert len(problems) == 2 and all("exited with status 2" in p for p in problems)
    assert all(h.log.exists() and "No such command" in h.log.read_text() for h in bad)


def test_threads_are_shared_out_and_children_start_no_runners(monkeypatch):
    monkeypatch.setattr(jobs, "cores", lambda: 8)
    assert jobs.threads_per_job(2) == 4 and jobs.threads_per_job(16) == 1
    monkeypatch.delenv(jobs.CHILD_ENV, raising=False)
    assert not jobs.is_child()
    monkeypatch.setenv(jobs.CHILD_ENV, "2")
    assert jobs.is_child()


@pytest.mark.slow
def test_two_runners_finish_every_stage_of_a_recipe(tmp_path):
    """The CLI path: `--jobs 2` starts one more runner; between them every stage is done and
    verified, and the report is printed once, by the runner the user started."""
    import json

    from click.testing import CliRunner

    from vitrun.cli import main

    from tests.tiny import TINY

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(tmp_path / "r"), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "2 runners side by side" in result.output and result.output.count("transfer") == 1  # one report
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "tiny").glob("*/stage.json")]
    assert len(records) == 20 and all(r["status"] == "done" for r in records)
    assert Store(tmp_path / "r").scan().problems == []

