"""Loop extras: Polyak averaging, evaluation during training / early stopping, TensorBoard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.engine.test_loop import _batch_at, _model
from vitrun.engine import Interrupted
from vitrun.engine.device import place
from vitrun.engine.early_stop import EvalCurve
from vitrun.engine.ema import PolyakAverage
from vitrun.engine.extras import StageExtras
from vitrun.engine.loop import LoopSettings, decay_groups, supervised, train
from vitrun.store import StageDir

SETTINGS = LoopSettings(steps=12, warmup_steps=2, schedule="linear", grad_clip=1.0, log_every=2, checkpoint_seconds=0.0)


class _Scalar(nn.Module):
    """One weight and an integer counter: the smallest model an average can be checked on."""

    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value]))
        self.register_buffer("count", torch.tensor(0))


def _set(model: _Scalar, value: float, count: int = 0) -> None:
    with torch.no_grad():
        model.w.fill_(value)
        model.count.fill_(count)


def test_polyak_average_by_hand():
    model = _Scalar(1.0)
    average = PolyakAverage(model, decay=0.5)
    _set(model, 3.0, count=1)
    average.after_step(1, model)  # 0.5·1 + 0.5·3
    assert average.average["w"].item() == 2.0 and average.average["count"].item() == 1
    _set(model, 5.0, count=2)
    average.after_step(2, model)  # 0.5·2 + 0.5·5
    assert average.average["w"].item() == 3.5 and average.average["count"].item() == 2, "integers are copied, not averaged"
    with average.swapped_in(model):
        assert model.w.item() == 3.5
    assert model.w.item() == 5.0, "the model's own weights come back"
    average.copy_to(model)
    assert model.w.item() == 3.5


def _run(tmp_path, name, extras_for, on_step=None):
    model = _model()
    extras = extras_for(model)
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    sd = StageDir(tmp_path / name)
    sd.path.mkdir(parents=True, exist_ok=True)
    train(model, optimizer, _batch_at, supervised(F.cross_entropy), SETTINGS, place("cpu"), sd, seed=0, on_step=on_step, extras=extras.loop)
    return model, extras


def _held_out_accuracy(model: nn.Module) -> float:
    x, y = _batch_at(10_000)
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def _extras(model):
    return StageExtras(model, SETTINGS.steps, 32, ema=0.9, eval_every=5, keep="best", evaluate=_held_out_accuracy)


def test_average_and_curve_resume_bit_identical(tmp_path):
    straight, straight_extras = _run(tmp_path, "straight", _extras)

    def kill_at_7(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        _run(tmp_path, "killed", _extras, on_step=kill_at_7)
    resumed, resumed_extras = _run(tmp_path, "killed", _extras)
    assert [p[0] for p in resumed_extras.curve.curve] == [5, 10, 12], "every 5 steps and the last"
    assert resumed_extras.curve.curve == straight_extras.curve.curve
    for name, value in straight_extras.average.average.items():
        assert torch.equal(value, resumed_extras.average.average[name]), name
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    kept_straight, kept_resumed = straight_extras.finish(straight), resumed_extras.finish(resumed)
    assert kept_straight == kept_resumed
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b), "the kept (best, averaged) weights agree too"


def test_early_stopping_keeps_the_best_step_weights():
    model = _Scalar(0.0)
    scores = {2: 0.2, 4: 0.6, 6: 0.4, 8: 0.6, 9: 0.5}  # a tie at 8: the earlier step wins
    curve = EvalCurve(lambda m: scores[int(m.w.item())], every=2, steps=9, keep_best=True)
    extras = StageExtras(model, 9, 1, eval_every=2, keep="best", evaluate=curve.evaluate)
    for step in range(1, 10):
        _set(model, float(step))
        extras.curve.after_step(step, model)
    assert extras.curve.curve == [[2, 0.2], [4, 0.6], [6, 0.4], [8, 0.6], [9, 0.5]]
    summary = extras.finish(model)
    assert (summary["best_step"], summary["best_accuracy"], summary["kept_step"]) == (4, 0.6, 4)
    assert model.w.item() == 4.0, "the stage keeps (tests, saves, passes on) the best step's weights"


def test_early_stopping_scores_and_keeps_the_averaged_weights():
    model = _Scalar(0.0)
    extras = StageExtras(model, 2, 1, ema=0.5, eval_every=1, keep="best", evaluate=lambda m: -abs(m.w.item() - 1.0))
    for step, value in ((1, 2.0), (2, 8.0)):  # averages 1.0, then 4.5; raw weights 2.0, 8.0
        _set(model, value)
        for extra in extras.loop:
            extra.after_step(step, model)
    assert extras.curve.curve == [[1, 0.0], [2, -3.5]]
    extras.finish(model)
    assert model.w.item() == 1.0


def test_keep_last_with_average_keeps_the_average():
    model = _Scalar(0.0)
    extras = StageExtras(model, 1, 1, ema=0.75)
    _set(model, 4.0)
    extras.average.after_step(1, model)
    assert extras.finish(model) == {} and model.w.item() == 1.0


def test_tensorboard_writes_training_and_eval_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _model()
    board = tmp_path / "tensorboard"
    extras = StageExtras(model, SETTINGS.steps, 32, eval_every=6, evaluate=_held_out_accuracy, tensorboard_dir=board)
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    sd = StageDir(tmp_path / "stage")
    sd.path.mkdir()
    train(model, optimizer, _batch_at, supervised(F.cross_entropy), SETTINGS, place("cpu"), sd, seed=0, extras=extras.loop)
    extras.finish(model)
    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s", "eval/accuracy"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [6, 12]


def test_tensorboard_missing_is_a_validation_error(write_recipe, monkeypatch):
    from tests.tiny import TINY
    from vitrun.engine import tblog
    from vitrun.recipe import RecipeError, load

    monkeypatch.setattr(tblog, "available", lambda: False)
    with pytest.raises(RecipeError, match=r"run.tensorboard: .*pip install 'vitrun\[tensorboard\]'"):
        load(str(write_recipe(TINY)), ["run.tensorboard=true"])
    assert load(str(write_recipe(TINY)), ["run.tensorboard=false"]).variants
