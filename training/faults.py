"""Fault injection for tests of restarts: ``ARCFORGE_FAULT_KILL_AT_STEP=N`` makes a rank
SIGKILL itself right after training step N, before anything else happens at that step
(no log line, no checkpoint) -- a crash as abrupt as a lost node or the OOM killer.
``ARCFORGE_FAULT_RANK=R`` limits it to rank R (default: every rank). Under torchrun it fires
on the first attempt only (``TORCHELASTIC_RESTART_COUNT`` 0), so a job restarted by
``--max-restarts`` runs through; a plain ``python pretrain.py`` has no attempt count and
dies at step N every time. Unset, the loop compares the step with None: nothing else runs."""

from __future__ import annotations

import os
import signal

from utils.distributed import DistEnv

KILL_AT_STEP = "ARCFORGE_FAULT_KILL_AT_STEP"
FAULT_RANK = "ARCFORGE_FAULT_RANK"


def kill_step(env: DistEnv) -> int | None:
    """The step after which this rank kills itself, or None (no fault asked for this rank
    and attempt)."""
    step = os.environ.get(KILL_AT_STEP)
    if not step or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return None
    rank = os.environ.get(FAULT_RANK)
    return int(step) if rank is None or int(rank) == env.rank else None


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
