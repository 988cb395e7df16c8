"""The one training loop and what it needs: schedules, checkpoints, device placement."""


class Interrupted(Exception):
    """SIGTERM or Ctrl-C during training; the checkpoint has been written."""
