"""Recipe loading: sweeps, overrides, and one-line errors that name file, key and fix."""

from __future__ import annotations

import pytest

from tests.tiny import TINY
from vitrun.recipe import RecipeError, builtin_recipes, load


def test_sweep_is_cartesian_product(write_recipe):
    loaded = load(str(write_recipe()))
    assert len(loaded.variants) == 4
    combos = {(v.model.name, v.pretrain.size) for v in loaded.variants}
    assert combos == {("ViT-Mu/4", 16), ("ViT-Mu/4", 32), ("R14x0.25", 16), ("R14x0.25", 32)}


def test_lists_outside_sweep_are_plain_values(write_recipe):
    loaded = load(str(write_recipe(TINY.replace("shots = [2]", "shots = [2, 3]"))))
    assert all(v.fewshot.shots == [2, 3] for v in loaded.variants)
    assert len(loaded.variants) == 4


def test_set_overrides_value_and_sweep(write_recipe):
    path = str(write_recipe())
    assert all(v.pretrain.steps == 3 for v in load(path, ["pretrain.steps=3"]).variants)
    fixed = load(path, ["model=R14x0.25"])
    assert {v.model.name for v in fixed.variants} == {"R14x0.25"}
    assert len(load(path, ["pretrain.size=[16]"]).variants) == 2
    assert len(load(path, ["sweep.seed=[0, 1, 2]"]).variants) == 12


def test_experiment_name_defaults_to_file_stem(write_recipe):
    path = write_recipe(TINY.replace('name = "tiny"', ""), name="my_exp.toml")
    assert load(str(path)).name == "my_exp"


BROKEN = {
    "syntax": ("[pretrain\nsteps = 1", "TOML syntax error"),
    "unknown top key": (TINY + "\nlearning_rate = 3\n", "learning_rate: unknown key"),
    "unknown nested key with hint": (TINY.replace("warmup_steps = 2", "warmup_step = 2"), "pretrain.warmup_step: unknown key (did you mean 'warmup_steps'?)"),
    "unknown key in list item": (TINY.replace('data = "digits"', 'data = "digits"\ncolour = 1'), "transfer[0].colour: unknown key"),
    "unknown report key": (TINY.replace('kind = "finetune"', 'kind = "finetune"\nrowz = "x"'), "report.tables[0].rowz: unknown key (did you mean 'rows'?)"),
    "wrong type": (TINY.replace("steps = 6", 'steps = "six"'), "pretrain.steps: Input should be a valid integer"),
    "negative size": (TINY.replace('"pretrain.size" = [16, 32]', '"pretrain.size" = [16, -5]'), "sweep.pretrain.size: Input should be greater than 0"),
    "unknown model": (TINY.replace('"R14x0.25"]', '"ViT-Q/16"]'), "unknown model 'ViT-Q/16'"),
    "unknown data": (TINY.replace('data = "digits"', 'data = "digts"'), "transfer[0].data: unknown data source 'digts' (did you mean 'digits'?)"),
    "unknown sweep key": (TINY.replace('"pretrain.size"', '"pretrain.sise"'), "sweep.pretrain.sise: unknown key (did you mean 'pretrain.size'?)"),
    "empty sweep": (TINY.replace('"pretrain.size" = [16, 32]', '"pretrain.size" = []'), "sweep.pretrain.size: the list is empty"),
    "sweep not a list": (TINY.replace('"pretrain.size" = [16, 32]', '"pretrain.size" = 16'), "sweep.pretrain.size: expected a list"),
    "missing required": (TINY.replace("steps = 6\n", ""), "pretrain: steps is missing: give the number of pre-training steps"),
    "empty file": ("", "the file is empty"),
    "more shots than digits has": (TINY.replace("shots = [2]", "shots = [200]"), "fewshot.shots: 200 shots per class, but transfer[0] (digits) has only 116 training images in a class"),
    "misspelt report column": (TINY.replace('columns = "pretrain.size"', 'columns = "shots"'), "report.tables[0]: unknown column 'shots' (did you mean 'fewshot.shots'?)"),
    "unknown report value": (TINY.replace('columns = "pretrain.size"', 'columns = "pretrain.size"\nvalues = "acc"'), "report.tables[0]: unknown column 'acc' (did you mean 'accuracy'?)"),
    "repeated rates": (TINY.replace("lr = 0.01\n", "lr = [0.01, 0.03, 0.01]\n"), "finetune.lr: values must be distinct, got [0.01, 0.03, 0.01]"),
    "masked-patch on a ResNet": (TINY.replace("[pretrain]", '[pretrain]\nobjective = "masked-patch"'), 'pretrain.objective = "masked-patch" needs a ViT; R14x0.25 is a resnet model'),
    "scratch with init": (TINY.replace('name = "ViT-Mu/4"', 'name = "ViT-Mu/4"\ninit = "timm:vit_tiny_patch16_224"').replace("[pretrain]", '[pretrain]\nobjective = "scratch"'), 'pretrain.objective = "scratch" starts from random weights, but model.init'),
    "unknown objective": (TINY.replace("[pretrain]", '[pretrain]\nobjective = "mae"'), "pretrain.objective: Input should be 'supervised', 'masked-patch' or 'scratch'"),
    "mask rate of 1": (TINY.replace("[pretrain]", '[pretrain]\nmask_rate = 1.0'), "pretrain.mask_rate: Input should be less than 1"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_recipes_give_one_line(write_recipe, case):
    text, expected = BROKEN[case]
    path = write_recipe(text)
    with pytest.raises(RecipeError) as info:
        load(str(path))
    message = str(info.value)
    assert message.startswith(str(path) + ":")
    assert expected in message
    assert "\n" not in message


def test_binary_file(tmp_path):
    path = tmp_path / "blob.toml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RecipeError, match="not a text file"):
        load(str(path))


def test_bad_set_is_reported(write_recipe):
    with pytest.raises(RecipeError, match=r"pretrain.stepz: unknown key \(did you mean 'steps'\?\)"):
        load(str(write_recipe()), ["pretrain.stepz=3"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load(str(write_recipe()), ["pretrain.steps"])


def test_missing_file_suggests_builtin():
    with pytest.raises(RecipeError, match="did you mean 'quickstart'"):
        load("quickstrat")


def test_builtin_recipes_all_validate(monkeypatch):
    """Every key of every built-in recipe is valid. Whether a download source can be reached
    depends on the machine (this one has no network): those probes are stubbed here, and
    the real probes must fail with the one-line "cannot be downloaded here" error."""
    from vitrun.data import sources, tv

    paths = builtin_recipes()
    assert paths, "no built-in recipes found: the glob checked nothing"
    for path in paths:
        sources.check.cache_clear()
        try:
            assert load(path.stem).variants
        except RecipeError as err:
            assert "cannot be downloaded here" in str(err) and "\n" not in str(err), str(err)
    monkeypatch.setattr(sources, "_check_hf", lambda source, options: None)
    monkeypatch.setattr(tv, "check", lambda name, options, cache_dir=None: None)
    sources.check.cache_clear()
    for path in paths:
        assert load(path.stem).variants
    sources.check.cache_clear()


SWEEP_UNION = TINY.replace('''[sweep]
model = ["ViT-Mu/4", "R14x0.25"]
"pretrain.size" = [16, 32]''', '''[[sweep]]
model = ["ViT-Mu/4", "R14x0.25"]
"pretrain.size" = [16]

[[sweep]]
model = ["ViT-Mu/4"]
"pretrain.size" = [16, 32]''')


def test_sweep_tables_are_a_union_of_products(write_recipe):
    loaded = load(str(write_recipe(SWEEP_UNION)))
    combos = [(v.model.name, v.pretrain.size) for v in loaded.variants]
    # (ViT-Mu/4, 16) is in both products and appears once
    assert combos == [("ViT-Mu/4", 16), ("R14x0.25", 16), ("ViT-Mu/4", 32)]


def test_set_reaches_every_sweep_table(write_recipe):
    path = str(write_recipe(SWEEP_UNION))
    assert [v.seed for v in load(path, ["sweep.seed=[0, 1]"]).variants] == [0, 1, 0, 1, 0, 1]
    fixed = load(path, ["pretrain.size=8"])
    assert [(v.model.name, v.pretrain.size) for v in fixed.variants] == [("ViT-Mu/4", 8), ("R14x0.25", 8)]
    replaced = load(path, ["pretrain.size=[64]"])
    assert {v.pretrain.size for v in replaced.variants} == {64}


def test_sweep_table_errors_name_the_table(write_recipe):
    with pytest.raises(RecipeError, match=r"sweep\[1\]\.pretrain\.size: Input should be greater than 0"):
        load(str(write_recipe(SWEEP_UNION.replace('"pretrain.size" = [16, 32]', '"pretrain.size" = [16, -1]'))))
    with pytest.raises(RecipeError, match=r"sweep\[0\]\.pretrain\.sise: unknown key"):
        load(str(write_recipe(SWEEP_UNION.replace('"pretrain.size" = [16]', '"pretrain.sise" = [16]'))))
