from __future__ import annotations

import pytest

from vitrun.engine.schedules import warmup_then_decay


def test_linear_warmup_then_linear_decay():
    values = [warmup_then_decay(s, 100, 10, "linear") for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] == pytest.approx(1 / 90)


def test_cosine_is_half_at_middle_of_decay():
    assert warmup_then_decay(55, 100, 10, "cosine") == pytest.approx(0.5)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        warmup_then_decay(50, 100, 10, "step")
