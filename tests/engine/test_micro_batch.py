"""`[run] micro_batch = "auto"` (engine/micro_batch.py): the search for the largest divisor that
fits, with out-of-memory errors faked on the CPU; the CPU estimate from activation bytes; the chosen
value trains bit for bit as the same explicit value; the plan shows "auto".
(Ranks agreeing on the smallest answer: tests/engine/test_distributed.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitrun.engine import micro_batch
from vitrun.engine.device import place
from vitrun.engine.distributed import AUTO, micro_batch_setting, split_batch
from vitrun.engine.loop import LoopSettings, decay_groups, supervised, train
from vitrun.store import StageDir


@pytest.mark.parametrize("per_rank, cap, expected, tries", [
    (16, 100, 16, [16]),
    (16, 5, 4, [16, 8, 4]),  # halving: 8 is a divisor, 4 fits, nothing between 4 and 8
    (12, 5, 4, [12, 6, 3, 4]),  # 3 fits after 6 did not: 4 (between) is tried and kept
    (96, 40, 32, [96, 48, 24, 32]),
    (7, 6, 1, [7, 1]),  # a prime slice: its only smaller divisor
])
def test_search_lands_on_the_largest_divisor_that_fits(per_rank, cap, expected, tries):
    tried = []

    def fits(m):
        tried.append(m)
        return m <= cap

    assert micro_batch.search(per_rank, fits) == expected
    assert tried == tries


def test_search_says_so_when_not_even_one_image_fits():
    with pytest.raises(MemoryError, match="not even 1 image"):
        micro_batch.search(8, lambda m: False)


def test_cpu_estimate_takes_the_largest_divisor_whose_activations_fit():
    probed = []

    def activations(m):  # 100 bytes per image
        probed.append(m)
        return 100 * m

    assert micro_batch.estimate(16, activations, budget=650).micro == 4  # 6 fit: the largest divisor ≤ 6
    assert probed == [4]  # one pass of CPU_PROBE images
    assert micro_batch.estimate(16, activations, budget=10**6).micro == 16
    assert micro_batch.estimate(3, activations, budget=10**6).micro == 3 and probed[-1] == 3  # a small slice probed whole
    assert micro_batch.estimate(16, activations, budget=0).micro == 1


def test_saved_bytes_count_activations_not_parameters():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))

    def run(m):
        model(torch.ones(m, 64)).sum().backward()

    one, four = micro_batch.saved_bytes(run, 1, model), micro_batch.saved_bytes(run, 4, model)
    assert one == 2 * 64 * 4  # the input and the ReLU's output (saved by the ReLU and the second layer: once), fp32 (1, 64)
    assert four == 4 * one


def test_auto_is_the_default_on_cuda_only_and_an_integer_wins():
    assert micro_batch_setting(None, "cuda") == AUTO and micro_batch_setting(None, "cpu") is None
    assert micro_batch_setting(8, "cuda") == 8 and micro_batch_setting(AUTO, "cpu") == AUTO
    assert split_batch(512, 2, AUTO).describe() == "auto per device (the largest divisor of 256 that fits in memory) × 2 devices × auto accumulation = 512 global batch"


def test_optimizer_state_is_counted_until_the_optimizer_holds_it():
    model = nn.Linear(10, 10)  # 110 fp32 parameters: 440 bytes
    adam = torch.optim.AdamW(model.parameters())
    assert micro_batch.optimizer_state_bytes(adam) == 880
    assert micro_batch.optimizer_state_bytes(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)) == 440
    assert micro_batch.optimizer_state_bytes(torch.optim.SGD(model.parameters(), lr=0.1)) == 0
    model(torch.ones(1, 10)).sum().backward()
    adam.step()
    assert micro_batch.optimizer_state_bytes(adam) == 0  # a resumed run's state is already there


# -- through the loop: bit for bit the explicit value -------------------------------------------

BATCH, STEPS = 12, 6


def _model():
    torch.manual_seed(0)  # BatchNorm statistics and dropout's random state: the probe must leave them alone
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.2), nn.GELU(), nn.Linear(16, 3))


def _batch(step):
    x = torch.randn(BATCH, 8, generator=torch.Generator().manual_seed(step))
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _train(root: Path, accumulation: int = 1, auto: bool = False, objective=None, notices=None, stop_at: int | None = None):
    model = _model()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    settings = LoopSettings(steps=STEPS, warmup_steps=1, schedule="linear", grad_clip=1.0, log_every=3, checkpoint_seconds=1e9, accumulation=accumulation, auto_micro_batch=auto)
    root.mkdir(parents=True, exist_ok=True)

    def stop(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt

    summary = train(model, optimizer, _batch, objective or supervised(F.cross_entropy), settings, place("cpu"), StageDir(root), seed=0, on_step=stop, on_notice=notices.append if notices is not None else None)
    return model.state_dict(), summary


def _out_of_memory_above(cap: int):
    loss = supervised(F.cross_entropy)

    def objective(model, images, labels):
        if len(images) > cap:
            raise torch.OutOfMemoryError(f"CUDA out of memory (faked above {cap} images)")
        return loss(model, images, labels)

    return objective


def test_auto_with_out_of_memory_trains_bit_for_bit_as_the_explicit_micro_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(micro_batch, "method", lambda device: "search")  # the CUDA path, on the CPU
    notices = []
    auto, summary = _train(tmp_path / "auto", auto=True, objective=_out_of_memory_above(5), notices=notices)
    explicit, _ = _train(tmp_path / "explicit", accumulation=3)  # 12 images in micro-steps of 4
    assert summary["parallel"] == {"micro_batch": 4, "accumulation": 3, "micro_batch_auto": "probed on cpu"}
    assert all(torch.equal(auto[k], explicit[k]) for k in explicit)
    whole, _ = _train(tmp_path / "whole")
    assert not all(torch.equal(whole[k], explicit[k]) for k in explicit)  # the comparison can tell splits apart
    assert len(notices) == 1 and 'micro_batch = "auto": 4 images per micro-step × 3 accumulation' in notices[0]


def test_a_resumed_stage_keeps_its_micro_batch_while_it_fits(tmp_path, monkeypatch):
    from vitrun.engine import Interrupted

    monkeypatch.setattr(micro_batch, "method", lambda device: "search")
    uninterrupted, _ = _train(tmp_path / "whole", auto=True, objective=_out_of_memory_above(5))
    with pytest.raises(Interrupted):
        _train(tmp_path / "resumed", auto=True, objective=_out_of_memory_above(5), stop_at=2)
    resumed, summary = _train(tmp_path / "resumed", auto=True, objective=_out_of_memory_above(100))  # more memory now
    assert summary["parallel"]["micro_batch"] == 4 and "from the 4 the stage started with" in summary["parallel"]["micro_batch_auto"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    tighter = tmp_path / "tighter"  # less memory on resume: it goes lower
    with pytest.raises(Interrupted):
        _train(tighter, auto=True, objective=_out_of_memory_above(5), stop_at=2)
    assert _train(tighter, auto=True, objective=_out_of_memory_above(3))[1]["parallel"]["micro_batch"] == 3


def test_auto_on_the_cpu_keeps_a_slice_that_fits_and_changes_nothing(tmp_path):
    auto, summary = _train(tmp_path / "auto", auto=True)
    whole, _ = _train(tmp_path / "whole")
    assert summary["parallel"]["micro_batch"] == BATCH and summary["parallel"]["accumulation"] == 1
    assert all(torch.equal(auto[k], whole[k]) for k in whole)


def test_dry_run_shows_auto_and_the_stage_records_what_it_chose(tmp_path):
    from click.testing import CliRunner

    from tests.test_distributed_cli import RECIPE
    from vitrun.cli import main

    text = RECIPE.replace("steps = 12", "steps = 3") + 'micro_batch = "auto"\n'
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(text[: text.index("[finetune]")] + text[text.index("[run]") :])  # one pre-training stage
    invoke = lambda *args: CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(tmp_path / "r"), *args], catch_exceptions=False)
    dry = invoke("--dry-run", "--nproc-per-node", "2")
    assert dry.exit_code == 0, dry.output
    assert "pretrain.batch_size: auto per device (the largest divisor of 8 that fits in memory) × 2 devices × auto accumulation = 16 global batch" in dry.output
    ran = invoke()
    assert ran.exit_code == 0, ran.output
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("ddp/pretrain-*/stage.json")]
    assert record["micro_batch"] == 16 and record["accumulation"] == 1 and record["micro_batch_auto"], record
    assert record["micro_batch_auto"] in " ".join(ran.output.split()) and "parallel" not in record["metrics"]
