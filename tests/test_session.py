"""The test session itself (tests/conftest.py): fixtures of every scope see the session's
dataset cache, never the user's home, and torch runs on the session's thread count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cache_seen_by_a_module_fixture():
    """Module fixtures run before any per-test fixture: the cache must be set before them."""
    return os.environ.get("VITRUN_CACHE")


def test_module_fixtures_use_the_session_cache(cache_seen_by_a_module_fixture, tmp_path_factory):
    assert cache_seen_by_a_module_fixture == str(tmp_path_factory.getbasetemp() / "cache")
    assert not Path(cache_seen_by_a_module_fixture).is_relative_to(Path.home() / ".cache")


def test_a_test_can_still_choose_its_own_cache(monkeypatch, tmp_path):
    from vitrun.data.cache import cache_root

    monkeypatch.setenv("VITRUN_CACHE", str(tmp_path))
    assert cache_root(None) == tmp_path / "data"


def test_torch_runs_on_the_session_threads():
    import torch

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"]), "a test left torch on other threads: restore them after it"
