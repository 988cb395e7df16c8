"""Checkpoints written on a thread (`checkpoint.BackgroundWriter`): the file holds the state as
it was when saved, whatever training does meanwhile; a writer's error reaches the loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitrun.engine import checkpoint


def test_background_checkpoint_holds_the_state_at_save_time(tmp_path):
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    writer = checkpoint.BackgroundWriter()
    path = tmp_path / "checkpoint.pt"
    writer.save(path, model, optimizer, 1, {"loss_sum": 0.5}, keep=2)
    with torch.no_grad():  # training goes on, in place, while the file is written
        for p in model.parameters():
            p.add_(1.0)
    writer.wait()
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["step"] == 1 and saved["loop"] == {"loss_sum": 0.5}
    assert all(torch.equal(saved["model"][k], v) for k, v in expected.items())
    assert [p.name for p in checkpoint.history(path)] == ["checkpoint-000000001.pt"]
    restored = nn.Linear(4, 3)
    optimizer2 = torch.optim.AdamW(restored.parameters(), lr=0.1)
    assert checkpoint.restore(path, restored, optimizer2)[0] == 1
    assert torch.equal(restored.weight, expected["weight"])


def test_a_writer_error_is_raised_by_the_next_wait(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    writer = checkpoint.BackgroundWriter()
    model = nn.Linear(2, 2)
    writer.save(blocker / "checkpoint.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), 3)
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # reported once
