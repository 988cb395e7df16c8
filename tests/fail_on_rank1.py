"""`vitrun` whose pre-training raises on rank 1 only, mid-training (a torchrun entry point for
tests/test_distributed_cli.py)."""

import os

from vitrun import stages
from vitrun.cli import main

real_train = stages._train


def _train(stage, ctx, model, optimizer, batch_at, *args, **kwargs):
    def broken(step):
        if step == 3 and os.environ["RANK"] == "1":
            raise RuntimeError("broken on rank 1")
        return batch_at(step)

    return real_train(stage, ctx, model, optimizer, broken, *args, **kwargs)


stages._train = _train

if __name__ == "__main__":
    main(prog_name="vitrun")
