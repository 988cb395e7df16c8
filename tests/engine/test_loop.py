"""The training loop: learns, raises on NaN, and a killed run resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitrun.engine import Diverged, Interrupted
from vitrun.engine.device import place
from vitrun.engine.loop import LoopSettings, decay_groups, supervised, train
from vitrun.store import StageDir

SETTINGS = LoopSettings(steps=12, warmup_steps=2, schedule="linear", grad_clip=1.0, log_every=2, checkpoint_seconds=0.0)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.GELU(), nn.Linear(16, 3))


def _batch_at(step):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(32, 8, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _run(tmp_path, name, on_step=None, model=None, settings=SETTINGS):
    model = model or _model()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    sd = StageDir(tmp_path / name)
    sd.path.mkdir(parents=True, exist_ok=True)
    summary = train(model, optimizer, _batch_at, supervised(F.cross_entropy), settings, place("cpu"), sd, seed=0, on_step=on_step)
    return model, summary, sd


def test_learns_and_logs(tmp_path):
    _, summary, sd = _run(tmp_path, "a")
    rows = [json.loads(line) for line in sd.metrics_file.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert summary["steps"] == 12


def test_killed_run_resumes_to_identical_weights(tmp_path):
    straight, _, _ = _run(tmp_path, "straight")

    def kill_at_7(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="stopped at step 7"):
        _run(tmp_path, "killed", on_step=kill_at_7)
    assert (tmp_path / "killed" / "checkpoint.pt").is_file()
    resumed, _, sd = _run(tmp_path, "killed", model=_model())
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in sd.metrics_file.read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12], "no log line lost or repeated across the resume"


def test_nan_loss_raises(tmp_path):
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(Diverged, match="loss became nan at step 0") as caught:
        _run(tmp_path, "nan", model=model)
    assert caught.value.step == 0


def _rows(sd):
    return [json.loads(line) for line in sd.metrics_file.read_text().splitlines()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_step_finishes_the_step_then_stops_exactly(tmp_path, signum):
    """The signal lands inside the forward pass of step 5 (0-based: the 6th step): that step
    completes, is checkpointed as step 6, and the resumed run matches an uninterrupted one,
    weights and logged averages alike (log_every 4 does not divide 6)."""
    settings = LoopSettings(steps=12, warmup_steps=2, schedule="linear", grad_clip=1.0, log_every=4, checkpoint_seconds=1e9)
    straight, straight_summary, straight_sd = _run(tmp_path, "straight", settings=settings)

    def signalling_batch(step):
        if step == 5 and not (tmp_path / "sent").exists():
            (tmp_path / "sent").touch()
            os.kill(os.getpid(), signum)
        return _batch_at(step)

    model = _model()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    sd = StageDir(tmp_path / "signalled")
    sd.path.mkdir()
    with pytest.raises(Interrupted, match="stopped at step 6 of 12"):
        train(model, optimizer, signalling_batch, supervised(F.cross_entropy), settings, place("cpu"), sd, seed=0)
    assert torch.load(sd.checkpoint_file, weights_only=True)["step"] == 6
    assert signal.getsignal(signum) is not None and signal.getsignal(signal.SIGTERM) != signal.SIG_IGN
    resumed, summary, sd = _run(tmp_path, "signalled", model=_model(), settings=settings)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert _rows(sd) == _rows(straight_sd)
    assert summary == straight_summary


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
    def kill_at_7(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        _run(tmp_path, "torn", on_step=kill_at_7)
    sd = StageDir(tmp_path / "torn")
    with open(sd.metrics_file, "a") as f:
        f.write('{"step": 8, "loss": 0.1')  # a full disk cut the line
    _, _, sd = _run(tmp_path, "torn", model=_model())
    assert [r["step"] for r in _rows(sd)] == [2, 4, 6, 8, 10, 12]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run, shared by the tests that compare against it."""
    model, _, _ = _run(tmp_path_factory.mktemp("straight"), "straight")
    return model


@pytest.mark.parametrize("content", [pytest.param(b"", id="empty"), pytest.param(b"PK\x03\x04 torn zip", id="torn")])
def test_unreadable_checkpoint_is_set_aside_and_the_stage_starts_over(tmp_path, content, straight):
    sd = StageDir(tmp_path / "bad")
    sd.path.mkdir()
    sd.checkpoint_file.write_bytes(content)
    notices = []
    model = _model()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    train(model, optimizer, _batch_at, supervised(F.cross_entropy), SETTINGS, place("cpu"), sd, seed=0, on_notice=notices.append)
    (notice,) = notices
    assert "checkpoint.pt: unreadable checkpoint" in notice and "starts over" in notice
    assert [p.name.startswith("checkpoint.pt.unreadable-") for p in sd.path.iterdir() if p.name.startswith("checkpoint.pt.")] == [True]
    for a, b in zip(straight.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_weight_decay_only_on_kernels():
    decay, plain = decay_groups(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0
