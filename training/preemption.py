"""Preemption: what a run does when its scheduler is about to kill it.

SLURM (at preemption, at ``scancel``, and ``--signal=USR1@SECONDS`` before the time limit),
Kubernetes and most batch systems send SIGTERM or SIGUSR1 some seconds before SIGKILL.
While ``stop_signals()`` is open (pretrain.py's ``main``), either signal only records itself.
After each step ``agree_to_stop`` lets every rank learn whether any rank got one (the same
all-reduce that carries rank 0's ``max_minutes`` clock: one collective per step), so all
ranks finish the same step, write one checkpoint together and leave the loop; the process
then exits with ``PREEMPTED_EXIT``. Under SLURM rank 0 first asks for the job to be requeued
(``requeue_on_preempt``); started again with ``resume=auto``, it continues from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import torch

from utils.distributed import DistEnv, all_reduce_sum

log = logging.getLogger(__name__)

# The exit status of a run stopped by PREEMPT_SIGNALS after writing its checkpoint: 75 is
# EX_TEMPFAIL (sysexits.h, "try again later"). Not 143 (128 + SIGTERM): a shell reports 143
# for a process that SIGTERM killed without writing anything, and a wrapper must tell the two apart.
PREEMPTED_EXIT = 75
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: list[int] = []  # the signals recorded since stop_signals() was entered


def _record(signum: int, _frame: object) -> None:
    _received.append(signum)  # nothing more: the loop acts on it at the end of the step


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGUSR1 are recorded, not fatal; on exit the previous handlers
    return. Only the main thread may set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _record) for sig in PREEMPT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def signalled() -> str | None:
    """The first signal this process recorded (its name), or None."""
    return signal.Signals(_received[0]).name if _received else None


def agree_to_stop(env: DistEnv, late: bool) -> tuple[bool, bool]:
    """(out_of_time, preempted), the same on every rank: ``late`` is this rank's clock (pass
    rank 0's), preempted is any rank's signal. One all-reduce when distributed; one process
    reads its own flags and touches no device."""
    flags = [float(late), float(bool(_received))]
    if env.distributed:
        flags = all_reduce_sum(torch.tensor(flags, device=env.device), env).tolist()
    return flags[0] > 0, flags[1] > 0


def log_preemption(step: int, env: DistEnv) -> None:
    """Rank 0's line (train.log and the console) for a run stopped by a signal."""
    if env.is_main:
        log.warning(
            "preempted (%s) at step %d: checkpoint written; exit status %d (rerun with resume=auto to continue)",
            signalled() or "a signal to another rank",
            step,
            PREEMPTED_EXIT,
        )


def exit_preempted(env: DistEnv, requeue: bool) -> NoReturn:
    """End a preempted run whose checkpoint is written and whose process group is gone: rank 0
    requeues the SLURM job (``requeue``, SLURM_JOB_ID set), then the process exits with
    PREEMPTED_EXIT. From here on SIGTERM / SIGUSR1 are ignored: the checkpoint is written,
    and the signal torchrun sends the other ranks once one exits must not turn their 75 into
    a kill while they shut down (seen about once in four 2-rank runs)."""
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if requeue and env.is_main and os.environ.get("SLURM_JOB_ID"):
        requeue_slurm_job(os.environ["SLURM_JOB_ID"])
    sys.exit(PREEMPTED_EXIT)


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue JOB``: the job goes back to the queue with its command, so a run
    started with ``resume=auto`` continues. A failure (say SLURM already requeues a preempted
    job itself) is a warning: the checkpoint is written either way."""
    try:
        res = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("scontrol requeue %s: %s", job_id, e)
        return False
    if res.returncode:
        log.warning("scontrol requeue %s failed (status %d): %s", job_id, res.returncode, res.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job_id)
    return True
