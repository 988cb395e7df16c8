"""Fuzz the built-in recipes (keys, types, values, bytes) through `vitrun validate` and
`vitrun recipe --dry-run`: never a traceback, exit 0 or 2, nothing written.

The default run tries a few dozen cases per test; `pytest -m slow` runs a bigger profile and
adds the recipes whose data sources need a (cached) download check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitrun.cli import main
from vitrun.recipe import builtin_recipes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OFFLINE = ["quickstart", "ablations", "masked_patch"]  # embedded data: checks need no network
ALL = [p.stem for p in builtin_recipes()]
QUICK = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LONG = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _small_timing_steps():
    """`--dry-run` times one training step of each model it plans: here at 2 images, not about
    3e10 FLOPs of them. A fuzzed recipe that is still valid can name models no earlier example
    timed, and each then cost a second or more; the step (build, forward, backward) still runs."""
    from vitrun import estimate

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(estimate, "MEASURE_FLOPS", 0)  # the batch falls to MEASURE_BATCH's floor
        yield


def test_the_builtin_recipes_are_found():
    assert set(OFFLINE) <= set(ALL), "the fuzz targets must exist: a glob that finds nothing checks nothing"


def _dotted_keys(tree, prefix=""):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted_keys(value, name + ".")
        else:
            yield name


def _keys(name: str) -> list[str]:
    raw = tomllib.loads((builtin_recipes()[ALL.index(name)]).read_text())
    return sorted(set(_dotted_keys({k: v for k, v in raw.items() if k != "report"})))


# TOML texts of every type, the edges included: what `--set KEY=VALUE` reads.
values = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.sampled_from(["0", "-1", "1", "9223372036854775807", "inf", "-inf", "nan", "1e308", "1e-320", "0.0", "true", "false", "[]", "{}", '""', '"../escape"', '"/abs"', '"a/b"', '"."', '".."', '"folder:/etc"', '"hf:"', '"torchvision:"', "[0, 1]", "[1e999]", '["x", 1]', '{a = 1}']),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x).replace("inf", "inf").replace("nan", "nan")),
    st.text(max_size=12).map(json.dumps),
    st.lists(st.integers(min_value=-5, max_value=10**6), max_size=4).map(str),
    st.text(max_size=8),  # not TOML: taken as a string
)


def _check(result, folder: Path, before: set[Path]) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    assert set(folder.rglob("*")) == before, "nothing written"


def _run_both(folder: Path, recipe: str, overrides: list[str]) -> None:
    before = set(folder.rglob("*"))
    sets = [arg for item in overrides for arg in ("--set", item)]
    validated = CliRunner().invoke(main, ["validate", recipe, *sets])
    _check(validated, folder, before)
    planned = CliRunner().invoke(main, ["recipe", recipe, "--dry-run", "--results", str(folder / "results"), *sets])
    _check(planned, folder, before)
    if "warning:" in planned.output:  # --dry-run only warns where validate stops: a hub dataset out of reach
        assert "cannot be downloaded here" in planned.output or "not in the local Hugging Face cache" in planned.output, planned.output
        return
    assert (validated.exit_code == 0) == (planned.exit_code == 0), (validated.output, planned.output)


@st.composite
def overrides(draw, names=OFFLINE):
    name = draw(st.sampled_from(names))
    known = _keys(name)
    key = draw(st.one_of(st.sampled_from(known), st.sampled_from(known).map(lambda k: k + "x"), st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True), st.sampled_from(["name", "seed", "sweep.seed", "sweep.pretrain.lr", "run.threads", "transfer", "model"])))
    return name, [f"{key}={draw(values)}" for _ in range(draw(st.integers(1, 3)))]


@QUICK
@given(case=overrides())
def test_fuzzed_values_and_keys(tmp_path, case):
    name, items = case
    _run_both(tmp_path, name, items)


@st.composite
def damaged_bytes(draw, names=OFFLINE):
    name = draw(st.sampled_from(names))
    data = bytearray(builtin_recipes()[ALL.index(name)].read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        else:
            del data[at:]
    return bytes(data)


@QUICK
@given(data=damaged_bytes())
def test_fuzzed_bytes(tmp_path, data):
    path = tmp_path / "fuzzed.toml"
    path.write_bytes(data)
    _run_both(tmp_path, str(path), [])


@pytest.mark.slow
@LONG
@given(case=overrides(ALL))
def test_fuzzed_values_and_keys_long(tmp_path, case):
    name, items = case
    _run_both(tmp_path, name, items)


@pytest.mark.slow
@LONG
@given(data=damaged_bytes(ALL))
def test_fuzzed_bytes_long(tmp_path, data):
    path = tmp_path / "fuzzed.toml"
    path.write_bytes(data)
    _run_both(tmp_path, str(path), [])
