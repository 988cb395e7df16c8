"""The built-in recipes as `vitrun ls` lists them: name, folder, one-line description.

The description is the recipe's own `description` key (also shown in reports); a recipe
without one falls back to its first comment line. Read as plain TOML, never validated, so
`vitrun ls` stays instant and lists a recipe even where its datasets cannot be reached.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from vitrun.recipe import BUILTIN_DIR, builtin_recipes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Entry:
    name: str
    group: str  # "core" (recipes/), "paper" (full scale), "mini" (CPU miniatures)
    description: str
    path: Path


def entries() -> list[Entry]:
    return [Entry(p.stem, _group(p), describe(p), p) for p in builtin_recipes()]


def _group(path: Path) -> str:
    parts = path.relative_to(BUILTIN_DIR).parts
    return parts[0] if len(parts) > 1 else "core"


def describe(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    try:
        description = tomllib.loads(text).get("description")
    except tomllib.TOMLDecodeError:
        description = None
    if isinstance(description, str) and description.strip():
        return description.strip()
    return next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#") and line.lstrip("#").strip()), "")
