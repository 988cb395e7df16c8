"""TOML recipe → validated, sweep-expanded `Recipe` objects.

Every problem is raised as one `RecipeError` line, `FILE: key.path: what is wrong
(did you mean X?)`, before anything runs or is written.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from vitrun import epochs
from vitrun.schema import ModelConfig, Recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Built-in recipes: the checkout's recipes/ (editable installs), else the copy installed as package data.
_HERE = Path(__file__).resolve().parent
BUILTIN_DIR = next((d for d in (_HERE.parent / "recipes", _HERE / "recipes") if d.is_dir()), _HERE / "recipes")
# The sweep key "model" is short for "model.name": `model = ["ViT-B/16", "R50x1"]`.
SWEEP_ALIASES = {"model": "model.name"}


class RecipeError(Exception):
    """A recipe problem, already phrased as the one line the user sees."""


@dataclass(frozen=True)
class LoadedRecipe:
    path: Path
    name: str
    raw: dict[str, Any]  # the file after --set overrides, sweep included
    sweeps: list[dict[str, list[Any]]]  # one per [sweep] table: canonical dotted key -> values
    variants: list[Recipe]  # the union of each sweep table's Cartesian product, validated
    overrides: tuple[str, ...] = ()  # the --set items applied, as given
    warnings: tuple[str, ...] = ()  # problems a dry run or smoke run goes on with (an unreachable hub dataset)
    notes: tuple[str, ...] = ()  # conversions made on load, e.g. epochs to steps

    @property
    def run_label(self) -> str:
        """Which run of the experiment this is, for reports: "" as written, else its --set items."""
        return " ".join(f"--set {item}" for item in self.overrides)

    def swept_keys(self, shown_elsewhere: tuple[str, ...] = ("model.name", "pretrain.size")) -> list[str]:
        """Dotted keys that tell variants apart, in recipe order, minus those shown on their own."""
        keys = dict.fromkeys(k for sweep in self.sweeps for k in sweep)
        return [k for k in keys if k not in shown_elsewhere]


def builtin_recipes() -> list[Path]:
    """Every built-in recipe: recipes/*.toml, then the full-scale recipes/paper/ and the CPU
    miniatures recipes/mini/ (names are unique across folders: a recipe is found by name)."""
    return sorted(BUILTIN_DIR.rglob("*.toml"), key=lambda p: (len(p.relative_to(BUILTIN_DIR).parts), str(p.parent), p.name))


def builtin(name: str) -> Path | None:
    """The built-in recipe called `name` (with or without `.toml`), in any of its folders."""
    stem = name[:-5] if name.endswith(".toml") else name
    return next((p for p in builtin_recipes() if p.stem == stem), None)


def resolve_path(name_or_path: str) -> Path:
    """A path, or the name of a built-in recipe with or without `.toml`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".toml") else path.name
    found = builtin(stem)
    if path.parent == Path(".") and found is not None:
        return found
    names = [p.stem for p in builtin_recipes()]
    raise RecipeError(f"{name_or_path}: no such file or built-in recipe{_suggest(stem, names)}; `vitrun ls` lists the built-in ones")


def load(name_or_path: str, overrides: typing.Sequence[str] = (), smoke: bool = False, offline: bool = False) -> LoadedRecipe:
    """Read, override, expand and validate a recipe.

    smoke: shrink it first (`vitrun recipe --smoke`, see vitrun/smoke.py).
    offline: a remote dataset that cannot be reached is a warning, not an error (--dry-run,
    --smoke: they read no data); local paths that do not exist still stop the load.
    """
    path = resolve_path(name_or_path)
    raw = _read_toml(path)
    for item in overrides:
        _apply_override(path, raw, item)
    raw.setdefault("name", path.stem)
    if smoke:
        from vitrun import smoke as smoke_mode

        raw = smoke_mode.shrink(raw)
    warnings: list[str] | None = [] if offline or smoke else None  # None: every source problem is an error
    sweeps = _read_sweeps(path, raw)
    body = {k: v for k, v in raw.items() if k != "sweep"}
    variants, seen, notes = [], set(), []
    for label, sweep in sweeps:
        for values in itertools.product(*sweep.values()):
            variant = copy.deepcopy(body)
            for key, value in zip(sweep, values):
                _set_dotted(variant, key.split("."), value)
            try:
                notes += epochs.resolve(variant)
            except epochs.EpochsError as err:
                raise RecipeError(f"{path}: {err}") from None
            fingerprint = json.dumps(variant, sort_keys=True, default=str)
            if fingerprint not in seen:  # [[sweep]] tables may overlap: each variant once
                seen.add(fingerprint)
                variants.append(_validate(path, variant, sweep, label, warnings))
    loaded = LoadedRecipe(path=path, name=str(raw["name"]), raw=raw, sweeps=[s for _, s in sweeps], variants=variants, overrides=tuple(overrides),
                          warnings=tuple(dict.fromkeys(warnings or ())), notes=tuple(dict.fromkeys(notes)))
    _check_report_columns(loaded)
    return loaded


def _check_report_columns(loaded: LoadedRecipe) -> None:
    """Every column a [[report.tables]] names exists in what the plan will record: a misspelt
    `columns = "shots"` stops here, with the right name, not after hours of training."""
    from vitrun import columns, plan  # no pandas: validation stays fast

    tables = loaded.variants[0].report.tables
    if not tables:
        return
    known = columns.planned_columns(plan.plan(loaded.variants))
    for i, spec in enumerate(tables):
        try:
            columns.check_spec(spec, known, f"report.tables[{i}]")
        except columns.ReportError as err:
            raise RecipeError(f"{loaded.path}: {err}") from None


# -- reading ---------------------------------------------------------------------------

def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecipeError(f"{path}: cannot read the file ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (a recipe is UTF-8 TOML); start from `vitrun cp quickstart {path.name}`") from None
    if not text.strip():
        raise RecipeError(f"{path}: the file is empty; start from `vitrun cp quickstart {path.name}`")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: TOML syntax error: {err}") from None


def _apply_override(path: Path, raw: dict[str, Any], item: str) -> None:
    """`--set KEY=VALUE`: VALUE is read as TOML, else taken as a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {item}: expected KEY=VALUE, e.g. --set pretrain.steps=100")
    value = toml_value(text)
    tables = _sweep_tables(raw)
    if key.startswith("sweep."):
        for table in tables or [raw.setdefault("sweep", {})]:  # a sweep key joins every [[sweep]] table
            table[key[len("sweep."):]] = value
        return
    canonical = SWEEP_ALIASES.get(key, key)
    replaced = False
    for table in tables:
        for k in [k for k in table if SWEEP_ALIASES.get(k, k) == canonical]:
            if isinstance(value, list):
                table[k] = value  # a list for a swept key replaces the sweep's values
                replaced = True
            else:
                del table[k]  # a single value fixes a swept key
    if not replaced:
        _set_dotted(raw, canonical.split("."), value)


def toml_value(text: str) -> Any:
    """A command-line value read as TOML (numbers, booleans, lists), else taken as text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _sweep_tables(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe's sweep tables: `[sweep]` is one, `[[sweep]]` a list of them."""
    sweep = raw.get("sweep", {})
    if isinstance(sweep, dict):
        return [sweep] if sweep else []
    return [t for t in sweep if isinstance(t, dict)] if isinstance(sweep, list) else []


def _read_sweeps(path: Path, raw: dict[str, Any]) -> list[tuple[str, dict[str, list[Any]]]]:
    """(label, {canonical key: values}) per sweep table; one empty table when there is no sweep.

    `[sweep]` is one Cartesian product; `[[sweep]]` (an array of tables) is the union of
    several, for grids with holes such as the paper's Table 8.
    """
    sweep = raw.get("sweep", {})
    if isinstance(sweep, dict):
        return [("sweep", _read_sweep_table(path, "sweep", sweep))]
    if not isinstance(sweep, list) or not sweep or not all(isinstance(t, dict) for t in sweep):
        raise RecipeError(f"{path}: sweep: expected a table of dotted keys to lists, e.g. [sweep] seed = [0, 1], or [[sweep]] tables")
    return [(f"sweep[{i}]", _read_sweep_table(path, f"sweep[{i}]", t)) for i, t in enumerate(sweep)]


def _read_sweep_table(path: Path, label: str, sweep: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key, values in sweep.items():
        canonical = SWEEP_ALIASES.get(key, key)
        problem = _unknown_path(canonical.split("."))
        if problem:
            raise RecipeError(f"{path}: {label}.{key}: {problem}")
        if not isinstance(values, list):
            raise RecipeError(f"{path}: {label}.{key}: expected a list of values, e.g. {key} = [{values!r}]")
        if not values:
            raise RecipeError(f"{path}: {label}.{key}: the list is empty; give at least one value or remove the key")
        if canonical in out:
            raise RecipeError(f"{path}: {label}.{key}: swept twice (as {key!r} and as {canonical!r})")
        out[canonical] = values
    return out


def _set_dotted(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{'.'.join(parts)}: {part} is not a table")
        tree = child
    tree[parts[-1]] = value


# -- validation ------------------------------------------------------------------------

def _validate(path: Path, variant: dict[str, Any], sweep: dict[str, list[Any]], label: str = "sweep", warnings: list[str] | None = None) -> Recipe:
    try:
        recipe = Recipe.model_validate(variant)
    except ValidationError as err:
        raise RecipeError(f"{path}: {_describe(err, sweep, label)}") from None
    _check_sources(path, recipe, warnings)
    _check_shots(path, recipe)
    _check_train_sizes(path, recipe)
    return recipe


def _check_train_sizes(path: Path, recipe: Recipe) -> None:
    """A `train_size` larger than a dataset vitrun knows the size of fails here, not after pre-training."""
    from vitrun.data import known

    for i, transfer in enumerate(recipe.transfer):
        holds = known.lookup(transfer.data)
        if transfer.train_size is None or holds is None or transfer.per_class is not None or transfer.classes or transfer.train_split or transfer.config:
            continue
        if transfer.train_size > holds.train_images:
            raise RecipeError(f"{path}: transfer[{i}].train_size: {transfer.train_size:,} images, but {transfer.label} has {holds.train_images:,} to train on; lower train_size")


def _check_shots(path: Path, recipe: Recipe) -> None:
    """Few-shot needs `max(shots)` training images in every class: checked here where the count
    is known without loading (generators, `per_class`, local folders), not after pre-training."""
    if not recipe.fewshot:
        return
    for i, transfer in enumerate(recipe.transfer):
        k = max(transfer.shots or recipe.fewshot.shots)
        have = _images_per_class_at_least(transfer, k)
        if have is not None and have < k:
            key = f"transfer[{i}].shots" if transfer.shots else "fewshot.shots"
            raise RecipeError(f"{path}: {key}: {k} shots per class, but transfer[{i}] ({transfer.label}) has only {have} training images in a class; "
                              f"lower the shots (for this dataset alone: [[transfer]] shots = [...]) or give the class more images")


def _images_per_class_at_least(transfer, k: int) -> int | None:
    """The smallest class's training images, counted up to `k` (None: unknown before loading)."""
    from vitrun import data

    if transfer.train_size is not None:
        return None  # a random subset: how many of each class it holds is known only after loading
    if transfer.per_class is not None:
        return transfer.per_class
    generator = data.GENERATORS.get(transfer.data)
    if generator is not None:
        return generator.DEFAULT_PER_CLASS
    if transfer.data == "digits":
        from vitrun.data.digits import TRAIN_MIN_PER_CLASS

        return TRAIN_MIN_PER_CLASS
    if transfer.data.startswith("folder:"):
        from vitrun.data import folder

        try:
            splits = folder.layout(Path(transfer.data.removeprefix("folder:")).expanduser(), data.SourceOptions.of(transfer.model_dump()))
        except data.SourceError:
            return None  # reported by the source check
        # One tree: a test share is carved out of it later, so this count is an upper bound.
        return min(folder.count_images(splits["train"] / name, k) for name in folder.classes(splits["train"]))
    from vitrun.data import known

    holds = known.lookup(transfer.data)
    if holds is not None and not (transfer.train_split or transfer.config):  # its default training split
        return holds.min_per_class
    return None


def _check_sources(path: Path, recipe: Recipe, warnings: list[str] | None = None) -> None:
    """Every data source of the recipe exists and opens here (see vitrun/data/sources.py).

    Runs for `vitrun validate` and before `vitrun recipe` writes anything: local files are
    checked by reading metadata, a dataset to download by a cache lookup or a probe of a
    few seconds. Results are cached, so a sweep of many variants checks each source once.
    """
    from vitrun import data

    sections = [("pretrain", recipe.pretrain)] + [(f"transfer[{i}]", t) for i, t in enumerate(recipe.transfer)]
    sections += [(f"analysis[{i}]", a) for i, a in enumerate(recipe.analysis) if a.data]
    for where, section in sections:
        try:
            data.check(section.data, data.SourceOptions.of(section.model_dump()), os.environ.get("VITRUN_CACHE"))
        except data.SourceError as err:
            if warnings is not None and _remote(section.data):
                warnings.append(f"{path}: {where}.{err.key}: {err} (a real run stops here)")
                continue
            raise RecipeError(f"{path}: {where}.{err.key}: {err}") from None


def _remote(source: str) -> bool:
    """A dataset fetched over the network (hub id, torchvision download), not a local path."""
    kind, _, target = source.partition(":")
    if kind == "torchvision":
        return True
    return kind == "hf" and not target.startswith(("/", ".", "~")) and not Path(target.split(":")[0]).expanduser().exists()


def _describe(err: ValidationError, sweep: dict[str, list[Any]], label: str) -> str:
    first = err.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    if not loc:  # a whole-recipe rule: its message names the keys
        return first["msg"].removeprefix("Value error, ")
    where = _format_loc(first["loc"])
    swept = next((k for k in sweep if where == k or where.startswith(k + ".")), None)
    if swept:
        where = f"{label}.{swept}"
    kind = first["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        return f"{where}: unknown key{_suggest(loc[-1], valid)}"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = first["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind == "literal_error":
        message = f"{message}, got {first['input']!r}"
    return f"{where}: {message}"


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The schema class inside an annotation, looking through Optional[...] and list[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def _section_types() -> dict[str, type[BaseModel]]:
    return {name: cls for name, field in Recipe.model_fields.items() if (cls := _model_in(field.annotation))}


def _fields_at(loc: list[str]) -> list[str]:
    """Valid keys of the table at `loc` (list indices skipped), for 'did you mean' hints."""
    cls: type[BaseModel] | None = Recipe
    for part in loc:
        if part.isdigit() or cls is None:
            continue
        field = cls.model_fields.get(part)
        cls = _model_in(field.annotation) if field else None
    if cls is None:
        return []
    return list(cls.model_fields) + (["sweep"] if cls is Recipe else [])


def _unknown_path(parts: list[str]) -> str:
    """Why a dotted sweep key names nothing in the schema ('' when it is fine)."""
    top = parts[0]
    if top not in Recipe.model_fields or top in ("sweep", "report", "run", "expect"):
        valid = [k for k in Recipe.model_fields if k not in ("report", "run", "transfer", "expect")]
        return f"unknown key{_suggest(top, valid)}"
    section = _section_types().get(top)
    if section is None:
        return "" if len(parts) == 1 else f"{top} is not a table"
    if top == "transfer":
        return "the [[transfer]] list cannot be swept; list every dataset in it instead"
    if len(parts) == 1:
        return f"{top} is a table; sweep one of its keys, e.g. {top}.{next(iter(section.model_fields))}"
    if section is ModelConfig:
        return ""  # model options are checked by the model registry per variant
    if parts[1] not in section.model_fields or len(parts) > 2:
        return f"unknown key{_suggest('.'.join(parts), [f'{top}.{f}' for f in section.model_fields])}"
    return ""


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
