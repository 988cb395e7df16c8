"""No host sync in the training step (engine/loop.py): between log steps nothing in vitrun reads a
tensor back on the host (`.item()`, `float(t)`, `int(t)`, `bool(t)`, `.tolist()`, `.nonzero()`,
`.cpu()`): on a GPU each such read waits for the device. The NaN check and the loss come
back only every `log_every` steps. Counted here by wrapping those methods; only calls made
from vitrun's own code count (torch's optimizers read CPU step counters, which costs nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vitrun
from vitrun import models
from vitrun.engine.device import place
from vitrun.engine.extras import StageExtras
from vitrun.engine.loop import LoopSettings, decay_groups, supervised, train
from vitrun.store import StageDir

PACKAGE = str(Path(vitrun.__file__).parent)
READS = ("item", "tolist", "nonzero", "cpu", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture()
def host_reads(monkeypatch) -> list[str]:
    """Every host read made from vitrun's code, as 'file:line method'."""
    seen = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, __name=name, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(PACKAGE):
                seen.append(f"{Path(caller.co_filename).name}:{caller.co_name} {__name}")
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


def test_the_step_reads_nothing_back_between_log_steps(tmp_path, host_reads):
    model = models.create("ViT-Mu/4", num_classes=3, image_size=16)
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=1e-3)
    extras = StageExtras(model, 4, 4, ema=0.99).loop  # Polyak averaging rides every step

    def batch_at(step):
        gen = torch.Generator().manual_seed(step)
        return torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 3, (4,), generator=gen)

    per_step = {}

    def on_step(step, loss):
        per_step[step] = list(host_reads)
        host_reads.clear()

    settings = LoopSettings(steps=4, warmup_steps=1, schedule="cosine", grad_clip=1.0, log_every=2, checkpoint_seconds=1e9, accumulation=2)
    host_reads.clear()  # building the model reads its drop-path rates: not a step
    train(model, optimizer, batch_at, supervised(F.cross_entropy), settings, place("cpu"), StageDir(tmp_path), seed=0, on_step=on_step, extras=extras)
    assert {step: reads for step, reads in per_step.items() if step % 2} == {1: [], 3: []}
    assert per_step[2] and per_step[4]  # the count sees the reads it is meant to: the log steps'
