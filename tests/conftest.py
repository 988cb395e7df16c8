"""Shared fixtures: a tiny recipe that runs the real pipeline in seconds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.tiny import TINY


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated datasets go to one per-session cache, never the user's home."""
    monkeypatch.setenv("VITRUN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str = TINY, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
