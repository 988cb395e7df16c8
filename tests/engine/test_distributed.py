"""Data parallelism (engine/distributed.py, engine/loop.py): the global batch split over ranks
and micro-steps gives the same training, and a failure on one rank stops every rank.

The multi-process tests start real gloo process groups on the CPU with torch.multiprocessing.
"""

from __future__ import annotations

import socket
from pathlib import Path
import traceback

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from vitrun.engine import distributed
from vitrun.engine.device import place
from vitrun.engine.distributed import BatchSplitError, World, split_batch
from vitrun.engine.loop import LoopSettings, decay_groups, supervised, train
from vitrun.store import StageDir

GLOBAL_BATCH = 16
STEPS = 8


# -- the split arithmetic ----------------------------------------------------------------------

def test_split_defaults_to_the_whole_slice_per_device():
    split = split_batch(4096, 8)
    assert (split.micro, split.accumulation, split.per_rank) == (512, 1, 512)
    assert split.describe() == "512 per device × 8 devices × 1 accumulation = 4096 global batch"


def test_split_with_micro_batch_accumulates():
    split = split_batch(512, 2, micro_batch=64)
    assert (split.micro, split.accumulation) == (64, 4)
    assert split_batch(512, 2, micro_batch=1000).accumulation == 1  # larger than the slice: the slice


@pytest.mark.parametrize("batch, world, micro, words", [
    (10, 3, None, ["batch_size = 10", "3 processes", "divisible by 3"]),
    (96, 2, 20, ["48 images each", "micro_batch = 20", "micro_batch = 16", "divisible by 40"]),
])
def test_uneven_split_is_one_line_naming_the_key_and_a_fix(batch, world, micro, words):
    with pytest.raises(BatchSplitError) as caught:
        split_batch(batch, world, micro)
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_single_process_world_needs_no_process_group():
    world = World()
    assert not world.distributed and world.is_main()
    assert world.agree(distributed.STOP, True) == (distributed.STOP, True)
    assert world.broadcast({"a": 1}) == {"a": 1} and world.gather(3) == [3]


# -- the same training on 1 process, 2 processes, 1 process × 2 micro-steps ---------------------

def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 3))


def _global_batch(step):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(GLOBAL_BATCH, 8, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _train(root, world: World, accumulation: int, fail_at: int | None = None, nan_at: int | None = None, memory: int | None = None, stop_at: int | None = None, steps_seen: list | None = None):
    """Train the tiny model on this rank's slice of each global batch; rank 0's weights.
    The last rank raises at step `fail_at`, or sees a NaN input at step `nan_at`; `memory`:
    micro_batch "auto", more than `memory` images (halved on the last rank) raise out-of-memory;
    every rank is interrupted (Ctrl-C) after step `stop_at`; `steps_seen` collects the steps asked for."""
    per_rank = GLOBAL_BATCH // world.size
    objective = supervised(F.cross_entropy)
    if memory:
        cap = memory // 2 if world.rank == world.size - 1 else memory

        def objective(model, images, labels, plain=objective):
            if len(images) > cap:
                raise torch.OutOfMemoryError(f"faked above {cap} images")
            return plain(model, images, labels)

    def batch_at(step):
        if steps_seen is not None:
            steps_seen.append(step)
        last = world.rank == world.size - 1
        if step == fail_at and last:
            raise ValueError(f"bad data on rank {world.rank}")
        x, y = _global_batch(step)
        x, y = x[world.rank * per_rank : (world.rank + 1) * per_rank], y[world.rank * per_rank : (world.rank + 1) * per_rank]
        if step == nan_at and last:
            x[0, 0] = float("nan")
        return x, y

    model = _model()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    settings = LoopSettings(steps=STEPS, warmup_steps=2, schedule="linear", grad_clip=1.0, log_every=4, checkpoint_seconds=1e9, accumulation=accumulation, auto_micro_batch=bool(memory))
    sd = StageDir(Path(root))
    sd.path.mkdir(parents=True, exist_ok=True)
    def stop(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt

    summary = train(model, optimizer, batch_at, objective, settings, place("cpu"), sd, seed=0, world=world, on_step=stop)
    return {k: v.clone() for k, v in model.state_dict().items()}, summary.get("parallel")


def _rank_main(rank: int, world_size: int, port: int, root: str, out: dict):
    """One rank: a clean run, then (in the same process group) a run whose last rank fails."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.environ[distributed.TIMEOUT_ENV] = "60"
    torch.set_num_threads(1)
    world = World.from_env("cpu")
    from vitrun.engine import micro_batch

    micro_batch.method = lambda device: "search"  # the CUDA path (out-of-memory errors faked), in this child only
    try:
        scenarios = (("clean", 1, None, None, None, None), ("failing", 1, 3, None, None, None), ("diverging", 1, None, 5, None, None),
                     ("auto", 1, None, None, 7, None), ("micro2", 4, None, None, None, None), ("stopped", 1, None, None, None, 5))
        for name, accumulation, fail_at, nan_at, memory, stop_at in scenarios:
            try:
                out[name, rank] = ("ok", *_train(f"{root}/{name}", world, accumulation, fail_at, nan_at, memory, stop_at))
            except Exception as err:  # the test reads what each rank raised
                out[name, rank] = ("raised", type(err).__name__, str(err), traceback.format_exc())
    finally:
        world.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, dict]:
    """Both scenarios on one pair of spawned processes (each start costs seconds of imports)."""
    root = tmp_path_factory.mktemp("ddp")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank_main, args=(2, _free_port(), str(root), out), nprocs=2, join=True, start_method="fork")  # fork: no re-import of torch per rank
        return root, dict(out)


def test_two_processes_and_accumulation_train_like_one_process(tmp_path, two_ranks):
    one, _ = _train(tmp_path / "one", World(), 1)
    accumulated, _ = _train(tmp_path / "acc", World(), 2)
    root, out = two_ranks
    ranks = {rank: out["clean", rank] for rank in (0, 1)}
    assert ranks[0][0] == "ok" and ranks[1][0] == "ok", ranks
    for name, weights in one.items():
        assert torch.allclose(accumulated[name], weights, atol=1e-5), name
        assert torch.allclose(ranks[0][1][name], weights, atol=1e-5), name
        assert torch.equal(ranks[1][1][name], ranks[0][1][name]), name  # DDP keeps the replicas identical
    assert not torch.equal(one["0.weight"], _model().state_dict()["0.weight"])  # it trained
    # rank 0 alone wrote the log, with the global mean loss of a 1-process run
    assert (root / "clean" / "metrics.jsonl").read_text().count("\n") == STEPS // 4


def test_ranks_agree_on_the_smallest_micro_batch_that_fits(two_ranks):
    """Rank 0 fits 7 images (its 8 do not: 4), rank 1 fits 3 (2): both take 2, and train bit for
    bit as with micro_batch = 2 set."""
    auto = {rank: two_ranks[1]["auto", rank] for rank in (0, 1)}
    explicit = two_ranks[1]["micro2", 0]
    for rank in (0, 1):
        assert auto[rank][0] == "ok", auto[rank]
        assert auto[rank][2]["micro_batch"] == 2 and auto[rank][2]["accumulation"] == 4
    assert "4 here, 2 on another rank" in auto[0][2]["micro_batch_auto"]
    assert all(torch.equal(auto[0][1][k], explicit[1][k]) for k in explicit[1])


def test_a_two_process_run_resumes_on_one_process_with_the_same_data_order(tmp_path, two_ranks):
    """Stopped after step 5 on 2 processes, finished on 1: steps 5… are asked for in order, and
    the weights end as an uninterrupted 1-process run's (to fp32 summation order)."""
    root, out = two_ranks
    assert [out["stopped", rank][1] for rank in (0, 1)] == ["Interrupted", "Interrupted"], out["stopped", 0]
    seen = []
    resumed, _ = _train(root / "stopped", World(), 1, steps_seen=seen)
    one, _ = _train(tmp_path / "one", World(), 1)
    assert seen == list(range(5, STEPS))
    for name, weights in one.items():
        assert torch.allclose(resumed[name], weights, atol=1e-5), name


def test_failure_on_one_rank_stops_every_rank(two_ranks):
    ranks = {rank: two_ranks[1]["failing", rank] for rank in (0, 1)}
    assert ranks[1][:3] == ("raised", "ValueError", "bad data on rank 1")
    assert ranks[0][:2] == ("raised", "PeerFailed")  # told at the step's meeting point, no hang


def test_a_non_finite_loss_on_one_rank_diverges_every_rank_at_its_step(two_ranks):
    ranks = {rank: two_ranks[1]["diverging", rank] for rank in (0, 1)}
    for rank in (0, 1):  # read back at the log step (8), reported at the step it appeared
        assert ranks[rank][:2] == ("raised", "Diverged") and "at step 5" in ranks[rank][2], ranks[rank]


# -- resume: on other software warns; checkpoints by step, the last N kept ------------------------

def test_resume_on_other_software_warns_and_keeps_the_last_checkpoints(tmp_path):
    from vitrun.engine import Interrupted, checkpoint

    model = _model()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.05)
    settings = LoopSettings(steps=STEPS, warmup_steps=2, schedule="linear", grad_clip=1.0, log_every=4, checkpoint_seconds=1e9, checkpoint_steps=2, keep_checkpoints=2)
    sd = StageDir(tmp_path)

    def stop_at_5(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        train(model, optimizer, _global_batch, supervised(F.cross_entropy), settings, place("cpu"), sd, seed=0, on_step=stop_at_5)
    # steps 2 and 4 by cadence, 5 at the interruption: the last two kept beside checkpoint.pt
    assert [p.name for p in checkpoint.history(sd.checkpoint_file)] == ["checkpoint-000000004.pt", "checkpoint-000000005.pt"]
    state = torch.load(sd.checkpoint_file, weights_only=True)
    assert state["step"] == 5 and state["loop"]["env"]["torch"] == torch.__version__
    state["loop"]["env"]["torch"] = "0.0.1"  # as if the stage had started on another torch
    torch.save(state, sd.checkpoint_file)
    notices = []
    train(_model(), torch.optim.AdamW(decay_groups(_model(), 0.1), lr=0.05), _global_batch, supervised(F.cross_entropy), settings, place("cpu"), sd, seed=0, on_notice=notices.append)
    assert len(notices) == 1 and f"torch {torch.__version__} (started on 0.0.1)" in notices[0] and "step 5" in notices[0]


def test_channels_last_only_for_convnets():
    from vitrun.engine.device import Placement, is_convnet

    resnet_like = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    vit_like = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten())
    assert is_convnet(resnet_like) and not is_convnet(vit_like)
    cpu = Placement(torch.device("cpu"), None, False)
    assert not cpu.prepare(resnet_like) and cpu.fused  # CPU: plain memory format, fused optimizer kernels
    assert not Placement(torch.device("meta"), None, False).fused  # a device without fused kernels: foreach
    x = cpu.images(torch.zeros(2, 3, 8, 8), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)


# -- the launcher ------------------------------------------------------------------------------

def test_relaunch_command_drops_the_option_and_keeps_the_rest():
    argv = ["recipe", "x.toml", "--nproc-per-node", "4", "--set", "pretrain.steps=5", "--nproc-per-node=4"]
    assert distributed.strip_option(argv, "--nproc-per-node") == ["recipe", "x.toml", "--set", "pretrain.steps=5"]
    command = distributed.relaunch_argv(4, ["recipe", "x.toml"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "vitrun", "recipe", "x.toml"]


@pytest.mark.parametrize("rank, code, written", [("0", 1, "1"), ("0", None, "0"), ("1", 2, None)])
def test_ranks_under_the_launcher_exit_0_and_rank_0_leaves_its_status(tmp_path, monkeypatch, rank, code, written):
    status = tmp_path / "exit"
    monkeypatch.setenv(distributed.EXIT_FILE_ENV, str(status))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as caught:
        with distributed.exit_under_launcher():
            raise SystemExit(code)
    assert caught.value.code == 0
    assert (status.read_text() if status.exists() else None) == written


def test_outside_the_launcher_exit_status_is_untouched(monkeypatch):
    monkeypatch.delenv(distributed.EXIT_FILE_ENV, raising=False)
    with pytest.raises(SystemExit) as caught:
        with distributed.exit_under_launcher():
            raise SystemExit(2)
    assert caught.value.code == 2
