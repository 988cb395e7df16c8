"""Shared fixtures: a tiny recipe that runs the real pipeline in seconds, and a session that
never touches the user's home nor stalls on a shared CPU."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.tiny import TINY, FinishedRun, run_recipe

# One intra-op thread per process (subprocesses inherit it), set before anything imports torch.
# The tests' models are tiny: a second thread gains little on an idle machine (vitrun/jobs.py:
# ViT-Mu/4 121 ms a step on one thread, 127 ms on two), and on a shared CPU two OpenMP threads
# spin-wait on each other: the tiny recipe took 136 s instead of 14 s at load 2.5 on 2 cores.
# `OMP_NUM_THREADS=2 pytest` still runs the suite on more threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Generated datasets go to one per-session cache, never the user's home: set for the whole
    session, so module- and session-scoped fixtures (which run before any per-test fixture) use
    it too, and each set is generated once. A test's own `monkeypatch.setenv` still overrides it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITRUN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> FinishedRun:
    """One real run of TINY through the CLI (20 stages: both model families, two pre-training
    sizes, two transfer sets), shared by every test that reads finished results: run it once
    per session, never again per module. Read it as it is; a test that changes results works
    on a copy (`shutil.copytree(tiny_run.results, tmp_path / ...)`)."""
    return run_recipe(tmp_path_factory.mktemp("tiny-run"), TINY)


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str = TINY, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
