"""Where a run's messages go: the console handler of an entry point, and wandb (one
``init_wandb`` for the trainer's run log and the pipelines).

Library code logs through ``logging.getLogger(__name__)`` and never prints; an entry point
that is not a Hydra app (Hydra configures logging itself) shows the messages of its own
packages with ``console_logging()`` for the duration of the command."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

# The loggers of ARCForge's packages and entry modules (the dataset builder logs as arcforge.build).
PACKAGES = ("evaluate", "evaluators", "pipelines", "dataset", "arcforge")


@contextmanager
def console_logging(
    names: tuple[str, ...] = PACKAGES, level: int = logging.INFO, stream: IO[str] | None = None
) -> Iterator[logging.Handler]:
    """Messages of the loggers ``names`` (and their children) at ``level`` and above, as plain
    lines on ``stream`` (default: the current stdout, as Hydra's console does), until the
    block ends; levels are restored after it."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False  # once, here, not again through a root handler
    try:
        yield handler
    finally:
        for logger, (old_level, propagate) in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate
        handler.flush()


def init_wandb(
    config: Any,
    name: str | None,
    directory: str,
    run_config: dict[str, Any],
    *,
    run_id: str | None = None,
    resumable: bool = False,
):
    """A wandb run for a run config (``config.wandb``, ``config.project_name``), or None when
    wandb is disabled (the ``WANDB_MODE`` variable wins over ``wandb.mode``). ``resumable``:
    the run gets an id (``run_id``, else a new one; ``run.id``) that a resumed run passes
    back to continue it."""
    mode = os.environ.get("WANDB_MODE", config.wandb.mode)
    if mode == "disabled":
        return None
    import wandb

    kwargs: dict[str, Any] = {}
    if resumable:  # a new run gets its id from wandb (run.id); a resumed one passes it back
        kwargs = {"id": run_id, "resume": "allow"} if run_id else {"resume": "allow"}
    # create_new: a pipeline's run stays active beside its trainers' runs (by default a second
    # init returned the pipeline's run, and the trainer's finish() ended it under the pipeline).
    return wandb.init(
        project=config.wandb.project or config.project_name,
        entity=config.wandb.entity,
        name=name,
        mode=mode,
        config=run_config,
        dir=directory,
        reinit="create_new",
        **kwargs,
    )
