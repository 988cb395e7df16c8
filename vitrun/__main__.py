"""`python -m vitrun ...`, the same as the `vitrun` command."""

from vitrun.cli import main
from vitrun.engine.distributed import exit_under_launcher

with exit_under_launcher():
    main(prog_name="vitrun")
