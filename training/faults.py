"""Fault injection for tests of restarts, each at training step N:

- ``ARCFORGE_FAULT_KILL_AT_STEP=N``: a rank SIGKILLs itself right after step N, before anything
  else happens at that step (no log line, no checkpoint) -- as abrupt as a lost node or the OOM
  killer;
- ``ARCFORGE_FAULT_PREEMPT_AT_STEP=N``: a rank sends itself SIGUSR1 right after step N (a
  scheduler's preemption notice landing in that step; the trainer's handler acts on it);
- ``ARCFORGE_FAULT_KILL_IN_EVAL_AT_STEP=N``: a rank SIGKILLs itself as the evaluation after
  step N starts (that step's checkpoint, if due, is written; the evaluation is not).

``ARCFORGE_FAULT_RANK=R`` limits them to rank R (default: every rank). Under torchrun it fires
on the first attempt only (``TORCHELASTIC_RESTART_COUNT`` 0), so a job restarted by
``--max-restarts`` runs through; a plain ``python pretrain.py`` has no attempt count and
meets it at step N every time. Unset, the loop compares the step with None: nothing else runs."""

from __future__ import annotations

import os
import signal

from utils.distributed import DistEnv

KILL_AT_STEP = "ARCFORGE_FAULT_KILL_AT_STEP"
PREEMPT_AT_STEP = "ARCFORGE_FAULT_PREEMPT_AT_STEP"
KILL_IN_EVAL_AT_STEP = "ARCFORGE_FAULT_KILL_IN_EVAL_AT_STEP"
FAULT_RANK = "ARCFORGE_FAULT_RANK"


def kill_step(env: DistEnv, variable: str = KILL_AT_STEP) -> int | None:
    """The step at which this rank meets the fault ``variable`` names, or None (no fault
    asked for this rank and attempt)."""
    step = os.environ.get(variable)
    if not step or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return None
    rank = os.environ.get(FAULT_RANK)
    return int(step) if rank is None or int(rank) == env.rank else None


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def preempt_self() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)
