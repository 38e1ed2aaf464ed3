"""When and where the trainer writes checkpoints: every ``checkpoint_interval_steps`` steps, at
evaluations (``checkpoint_every_eval``, early stopping, the monitor's score for keep_best) and
once at the end of every run, however it stopped. The files themselves: utils/checkpoint/."""

from __future__ import annotations

import logging
import os

from training.state import TrainState
from utils.distributed import DistEnv

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, state: TrainState, root: str, env: DistEnv, resumed: str | None):
        self.state, self.root, self.env = state, root, env
        # A resume from this run folder already has its step on disk; one from elsewhere does not.
        same_run = resumed is not None and os.path.dirname(os.path.abspath(resumed)) == os.path.abspath(root)
        self.saved_step: int | None = state.step if same_run else None

    def due(self) -> bool:
        """Whether the step just taken is one of ``checkpoint_interval_steps``'."""
        interval = self.state.config.checkpoint_interval_steps
        return bool(interval) and self.state.step % interval == 0

    def save(self, score: float | None = None) -> None:
        """Write ``<root>/step_<N>/`` (``score``: the monitor's value, for keep_best)."""
        path = self.state.save(self.root, self.env, score)
        self.saved_step = self.state.step
        if self.env.is_main:
            log.info("checkpoint: %s", path)

    def save_final(self) -> None:
        """Every run ends with its weights on disk, unless this step is already there."""
        if self.saved_step != self.state.step:
            self.save()
