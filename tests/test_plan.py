"""Planning: content-addressed keys, shared pre-training, shards."""

from __future__ import annotations

from tests.tiny import TINY
from vitrun.plan import plan, shard
from vitrun.recipe import load


def _stages(write_recipe, text=TINY, overrides=()):
    return plan(load(str(write_recipe(text)), overrides).variants)


def test_counts_and_order(write_recipe):
    stages = _stages(write_recipe)
    kinds = [s.kind for s in stages]
    # 2 models × 2 sizes pre-trainings, each feeding 2 datasets × (finetune + one fewshot)
    assert kinds.count("pretrain") == 4 and kinds.count("finetune") == 8 and kinds.count("fewshot") == 8
    seen = set()
    for stage in stages:
        assert set(stage.parents) <= seen, "a parent must come before its children"
        seen.add(stage.key)


def test_same_config_same_key(write_recipe):
    a = [s.key for s in _stages(write_recipe)]
    b = [s.key for s in _stages(write_recipe)]
    assert a == b
    assert len(set(a)) == len(a)


def test_changed_config_changes_only_affected_keys(write_recipe):
    base = {s.key for s in _stages(write_recipe)}
    ft = _stages(write_recipe, overrides=["finetune.lr=0.03"])
    changed = [s for s in ft if s.key not in base]
    assert changed and all(s.kind == "finetune" for s in changed), "only fine-tuning stages depend on finetune.lr"
    pre = _stages(write_recipe, overrides=["pretrain.lr=0.002"])
    assert not ({s.key for s in pre} & base), "a new pre-training changes every key below it"


def test_run_settings_do_not_change_keys(write_recipe):
    base = [s.key for s in _stages(write_recipe)]
    assert [s.key for s in _stages(write_recipe, overrides=["run.log_every=1", 'run.device="cpu"'])] == base


def test_one_pretraining_feeds_all_transfer_stages(write_recipe):
    stages = _stages(write_recipe)
    pretrain_keys = {s.key for s in stages if s.kind == "pretrain"}
    for stage in stages:
        if stage.kind != "pretrain":
            assert len(stage.parents) == 1 and stage.parents[0] in pretrain_keys


def test_adding_a_dataset_adds_only_new_stages(write_recipe):
    base = {s.key for s in _stages(write_recipe)}
    more = _stages(write_recipe, TINY.replace("[sweep]", '[[transfer]]\ndata = "digits"\nname = "digits-again"\n\n[sweep]'))
    new = [s for s in more if s.key not in base]
    assert len(new) == 8 and {s.data for s in new} == {"digits-again"}


def test_shards_partition_and_keep_trees_together(write_recipe):
    stages = _stages(write_recipe)
    parts = [shard(stages, i, 3) for i in (1, 2, 3)]
    keys = [s.key for part in parts for s in part]
    assert sorted(keys) == sorted(s.key for s in stages)
    for part in parts:
        mine = {s.key for s in part}
        assert all(set(s.parents) <= mine for s in part)


def test_variant_names_the_swept_values(write_recipe):
    loaded = load(str(write_recipe()), ["sweep.finetune.lr=[0.01, 0.03]", "sweep.seed=[0, 1]"])
    swept = loaded.swept_keys()
    assert swept == ["finetune.lr", "seed"], "model and size have columns of their own"
    stages = plan(loaded.variants)
    finetune = next(s for s in stages if s.kind == "finetune")
    assert finetune.variant(swept) == "lr=0.01 seed=0"
    pretrain = next(s for s in stages if s.kind == "pretrain")
    assert pretrain.variant(swept) == "seed=0", "a key the stage lacks is left out"


def test_learning_rate_grid_plans_dev_trials(write_recipe):
    """A list of rates: one `finetune_dev` trial per rate (scored on the dev split), then the
    final fine-tuning, whose parents are the pre-training and the trials."""
    stages = _stages(write_recipe, TINY.replace("lr = 0.01\n", ""))  # the default: the paper's grid
    trials = [s for s in stages if s.kind == "finetune_dev"]
    finals = [s for s in stages if s.kind == "finetune"]
    assert len(finals) == 8 and len(trials) == 8 * 4
    assert sorted({t.config["finetune"]["lr"] for t in trials}) == [0.001, 0.003, 0.01, 0.03]
    by_key = {s.key: s for s in stages}
    for final in finals:
        assert final.config["finetune"]["lr"] == [0.001, 0.003, 0.01, 0.03]
        pretrain, *mine = final.parents
        assert by_key[pretrain].kind == "pretrain" and len(mine) == 4
        assert all(by_key[k].kind == "finetune_dev" and by_key[k].parents == (pretrain,) for k in mine)
        assert {by_key[k].data for k in mine} == {final.data}
    one = _stages(write_recipe, TINY.replace("lr = 0.01\n", "lr = [0.01]\n"))
    assert [s.key for s in one] == [s.key for s in _stages(write_recipe)], "a list of one rate is that rate"
    parts = [shard(stages, i, 2) for i in (1, 2)]
    for part in parts:
        mine = {s.key for s in part}
        assert all(set(s.parents) <= mine for s in part), "trials go with their pre-training's shard"


def test_scratch_is_one_initialisation_per_model(write_recipe):
    scratch = TINY.replace("[pretrain]", '[pretrain]\nobjective = "scratch"').replace('columns = "pretrain.size"', 'columns = "data"')  # no sizes without data
    stages = _stages(write_recipe, scratch)
    pretrains = [s for s in stages if s.kind == "pretrain"]
    assert len(pretrains) == 2, "no data, no size: both sizes share one random initialisation"
    assert all(p.config["pretrain"] == {"objective": "scratch", "image_size": 16, "steps": 0} for p in pretrains)
    assert len([s for s in stages if s.kind == "finetune"]) == 4
    assert pretrains[0].data == "random init" and pretrains[0].size is None


def test_masked_patch_options_only_key_masked_patch(write_recipe):
    plain = _stages(write_recipe)
    assert all("mask_rate" not in s.config["pretrain"] for s in plain), "older results keep their keys"
    ignored = _stages(write_recipe, overrides=["pretrain.mask_rate=0.15"])
    assert [s.key for s in ignored] == [s.key for s in plain], "a mask option does not key a supervised run"
    vit_only = TINY.replace('model = ["ViT-Mu/4", "R14x0.25"]', 'model = ["ViT-Mu/4"]')
    masked = _stages(write_recipe, vit_only, overrides=['pretrain.objective="masked-patch"'])
    p = next(s for s in masked if s.kind == "pretrain").config["pretrain"]
    assert (p["objective"], p["mask_rate"], p["mask_target"]) == ("masked-patch", 0.5, "mean-color")


def test_keys_are_stable_across_versions(write_recipe):
    # Pinned: a change to the schema or plan that moves these keys makes every existing
    # result unreachable; bump plan.KEY_VERSION on purpose and update them if it must.
    stages = _stages(write_recipe)
    assert stages[0].key == "pretrain-353ff7b9197a"
    assert next(s.key for s in stages if s.kind == "finetune") == "finetune-fa0b6edbcaa5"


def test_pretraining_set_name_is_shown_and_keyed_only_when_set(write_recipe):
    named = _stages(write_recipe, overrides=['pretrain.name="FractalDB-4"'])
    pretrain = named[0]
    assert pretrain.data == "FractalDB-4" and pretrain.config["pretrain"]["name"] == "FractalDB-4"
    assert pretrain.key != "pretrain-353ff7b9197a"


def test_scratch_needs_no_steps(write_recipe):
    text = TINY.replace("[pretrain]", '[pretrain]\nobjective = "scratch"').replace("steps = 6\n", "").replace('columns = "pretrain.size"', 'columns = "data"')
    stages = _stages(write_recipe, text)
    assert {s.config["pretrain"]["steps"] for s in stages if s.kind == "pretrain"} == {0}


def test_shards_deal_out_stages_whose_parents_are_done(write_recipe):
    """After the pre-trainings: the transfer stages spread over every job, not one per tree."""
    stages = _stages(write_recipe)
    pretrains = {s.key for s in stages if s.kind == "pretrain"}
    leaves = [s for s in stages if s.key not in pretrains]
    parts = [shard(stages, i, 8, done=pretrains) for i in range(1, 9)]
    dealt = [[s for s in part if s.key not in pretrains] for part in parts]
    # 4 trees over 8 jobs: before, 4 jobs got nothing; now each job has leaves to run
    assert all(part for part in dealt)
    assert {s.key for part in dealt for s in part} == {s.key for s in leaves}
    trees = [shard(stages, i, 8) for i in range(1, 9)]
    for part, tree in zip(parts, trees):
        assert {s.key for s in tree} <= {s.key for s in part}, "a stage never leaves its tree's shard"


def test_a_generator_past_version_1_is_in_the_stage_key(monkeypatch):
    """Results drawn from older pixels (shapes v1) must re-run, never mix with the new ones;
    version-1 generators (fractal) leave the keys of existing results as they were."""
    from vitrun.data import fractal, shapes
    from vitrun.plan import with_generator_version

    assert fractal.VERSION == 1 and with_generator_version({"data": "fractal"}, "fractal") == {"data": "fractal"}
    assert with_generator_version({"data": "shapes"}, "shapes") == {"data": "shapes", "data_version": shapes.VERSION}
    assert with_generator_version({"data": "digits"}, "digits") == {"data": "digits"}  # a real set: no version
    monkeypatch.setattr(shapes, "VERSION", shapes.VERSION + 1)
    assert with_generator_version({"data": "shapes"}, "shapes")["data_version"] == shapes.VERSION
