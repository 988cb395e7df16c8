"""The one training loop and what it needs: schedules, checkpoints, device placement."""


class Interrupted(Exception):
    """SIGTERM or Ctrl-C during training; the checkpoint has been written."""


class Diverged(FloatingPointError):
    """The training loss went non-finite: a result of the stage's settings (deterministic, so a
    re-run would diverge again), recorded as `"status": "diverged"`."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}; lower the learning rate or set grad_clip")
        self.step, self.loss = step, loss
