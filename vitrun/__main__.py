"""`python -m vitrun ...`, the same as the `vitrun` command."""

from vitrun.cli import main

main(prog_name="vitrun")
