"""Where a device error points (engine/device.py `place`), and which warnings ranks other than 0 keep."""

from __future__ import annotations

import warnings

import pytest
import torch

from vitrun.engine.device import FLAG_SETTING, DeviceError, place
from vitrun.engine.distributed import World


@pytest.mark.parametrize("setting, named, fix", [(None, "[run] device", 'set [run] device = "auto"'), (FLAG_SETTING, "--device", "use --device auto")])
@pytest.mark.parametrize("device", ["gpu0", "cuda:7"])
def test_a_device_that_cannot_be_used_names_where_it_came_from(device, setting, named, fix):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(DeviceError) as caught:
        place(device, **({"setting": setting} if setting else {}))
    message = str(caught.value)
    assert message.startswith(f"{named} {device!r}") and fix in message and "\n" not in message, message


def test_the_recipe_device_error_is_a_usage_error_naming_the_recipe(tmp_path):
    from click.testing import CliRunner

    from tests.tiny import TINY
    from vitrun.cli import main

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--results", str(tmp_path / "r"), "--set", "run.device=gpu0"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert f"{recipe}: [run] device 'gpu0' is not a device torch knows" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.json")), "a run that cannot start writes nothing"


def test_ranks_other_than_0_hide_warnings_about_a_whole_source_only():
    from vitrun.data.options import SourceWarning
    from vitrun.runner import hide_shared_warnings

    for rank, expected in ((0, {"source", "image"}), (1, {"image"})):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            hide_shared_warnings(World(rank=rank, size=2))
            warnings.warn("source", SourceWarning)
            warnings.warn("image", UserWarning)
        assert {str(w.message) for w in seen} == expected, rank
