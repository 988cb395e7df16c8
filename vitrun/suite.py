"""`vitrun recipe FOLDER`: every recipe of a folder, one after another (`vitrun recipe mini`).

A suite is nothing but a folder of recipes: no file lists its members, so adding a miniature to
recipes/mini/ adds it to the suite. Members run in name order, each as its own experiment (its
own folder under --results and its own report), so `vitrun report --experiment NAME` and a
re-run of one member work as for any recipe; finished stages are skipped as always, so a
suite that was stopped resumes where it was. Every member is validated before the first one
starts: a mistake in the last recipe is reported before an hour of the others has run.
"""

from __future__ import annotations

import typing
from pathlib import Path

from vitrun.recipe import BUILTIN_DIR, RecipeError, load


def members(name_or_path: str) -> list[Path] | None:
    """The recipes of the folder `name_or_path` names (a path, else a built-in folder such as
    "mini"), in name order; None when it names no folder (a single recipe)."""
    path = Path(name_or_path)
    if not path.is_dir():
        builtin = BUILTIN_DIR / name_or_path
        if path.parent != Path(".") or not builtin.is_dir():
            return None
        path = builtin
    found = sorted(path.glob("*.toml"))
    if not found:
        raise RecipeError(f"{path}: a folder with no recipes (*.toml) in it; give a recipe file, or a folder of them")
    return found


def validate(paths: typing.Sequence[Path], overrides: typing.Sequence[str] = (), smoke: bool = False, offline: bool = False) -> None:
    """Load every member as `vitrun recipe` would; raises the first RecipeError (its message names the file)."""
    names: dict[str, Path] = {}
    for path in paths:
        loaded = load(str(path), overrides, smoke=smoke, offline=offline)
        if loaded.name in names:  # two members would write one experiment's folder
            raise RecipeError(f"{path}: name = {loaded.name!r} is also {names[loaded.name]}'s; give each recipe of a suite its own name")
        names[loaded.name] = path
