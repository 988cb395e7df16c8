"""`python -m vitrun` (and `torchrun -m vitrun`): the same as the `vitrun` command."""

from vitrun.cli import main

if __name__ == "__main__":
    main()
