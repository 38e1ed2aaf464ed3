"""**Writing** (``save_checkpoint``). Every rank writes into ``.step_00001234.tmp`` (each file
flushed and fsynced); once every rank has written, rank 0 hashes the files, writes
``manifest.json`` (a temp file, then rename) and renames the folder into place. A folder
named ``step_*`` written by this code therefore always has its manifest. When a write fails
on any rank (a full disk: ENOSPC or EDQUOT; a file-size limit: EFBIG; or any other OSError,
also where torch.save wraps it in a RuntimeError of its own) every rank stops: the
temp folder is removed, earlier checkpoints are left untouched, and ``CheckpointWriteError``
says what happened and names the newest intact checkpoint (resume=auto continues from it)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch

from utils.checkpoint.errors import CheckpointError, CheckpointWriteError
from utils.checkpoint.files import DISK_FULL, SCORE_FILE, STATE_FILE, list_checkpoints, plain_types
from utils.checkpoint.manifest import newest_checkpoint, write_manifest
from utils.distributed import DistEnv, all_reduce_sum, barrier
from utils.io import fsync_dir, write_json_atomic
from utils.monitor import best_first

log = logging.getLogger(__name__)


def write_torch(path: str, obj: Any) -> None:
    """torch.save through a Python file, flushed and fsynced; a full disk or a file-size limit
    raises the OSError (ENOSPC, EDQUOT, EFBIG) naming ``path``. torch.save's writer meets that
    error in the file's ``write`` and then fails itself ("enforce fail at
    inline_container.cc", a RuntimeError over it): the OSError is raised in its place."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        failed_write = e if isinstance(e, OSError) else _os_error_under(e)
        if failed_write is None:
            raise
        raise OSError(failed_write.errno, failed_write.strerror, path) from e


def _os_error_under(error: BaseException) -> OSError | None:
    """The OSError that ``error`` was raised over (its __cause__ / __context__ chain), if any."""
    seen = error.__cause__ or error.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen


class _OtherRank(Exception):
    """Another rank's write failed (that rank's error says why)."""


def _together(env: DistEnv, action: Callable[[], None]) -> BaseException | None:
    """Run ``action`` on this rank, then agree with every rank whether all succeeded (an
    all-reduce, which is also a barrier): this rank's exception, _OtherRank() when only
    another rank failed, or None."""
    error: BaseException | None = None
    try:
        action()
    except Exception as e:
        error = e
    failed = float(error is not None)
    if env.distributed:
        failed = all_reduce_sum(torch.tensor([failed], device=env.device), env).item()
    if failed and error is None:
        return _OtherRank()
    return error


def replace_folder(tmp: str, final: str) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed
    after, so there is never a moment without either."""
    parent, name = os.path.split(final)
    old = os.path.join(parent, f".{name}.old")
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def write_failure(
    root: str, what: str, error: BaseException, env: DistEnv, left: str = "Nothing half-written is left"
) -> BaseException:
    """The exception to raise for a failed write into run folder ``root`` (a checkpoint, the
    metrics log): CheckpointWriteError naming the newest intact checkpoint for an OSError or
    another rank's failure; any other error as it is. ``left``: what the failure left behind."""
    if not isinstance(error, (OSError, _OtherRank)):
        return error
    try:
        newest = newest_checkpoint(root, quiet=True) if env.is_main else None
    except (CheckpointError, OSError):
        newest = None
    if env.is_main:
        kept = f"the newest intact checkpoint is {newest}" if newest else f"there is no intact checkpoint in {root} yet"
    else:
        kept = "rank 0's error names the newest intact checkpoint"
    if isinstance(error, _OtherRank):
        return CheckpointWriteError(
            f"{what} was not written: another rank failed to write its part (its error says "
            f"why); nothing half-written is left and {kept}",
            newest,
        )
    if error.errno in DISK_FULL:
        try:
            free = f", {_size(shutil.disk_usage(root).free)} free"
        except OSError:
            free = ""
        cause = f"the disk is full ({os.strerror(error.errno)}{free})"
        todo = "free space (or lower max_checkpoints) and run again with resume=auto"
    elif error.errno == errno.EFBIG:
        cause = (
            f"{error.filename or 'a file'} reached the largest size allowed "
            f"({os.strerror(error.errno)}: the file-size limit, `ulimit -f`, or the filesystem's largest file)"
        )
        todo = "raise that limit and run again with resume=auto"
    else:
        cause = f"{error.strerror or error} ({getattr(error, 'filename', None) or root})"
        todo = "fix that and run again with resume=auto"
    return CheckpointWriteError(
        f"{what} could not be written to {root}: {cause}. {left}; {kept}: {todo}", newest, error.errno in DISK_FULL
    )


def save_checkpoint(
    root: str,
    step: int,
    shared: dict[str, Any],
    per_rank: dict[str, Any],
    env: DistEnv,
    keep: int = 0,
    score: float | None = None,
    keep_best: int = 0,
    mode: str = "min",
) -> str:
    """Write ``step_<N>/`` atomically (a temp folder with its manifest, then rename), with
    ``score.json`` when a monitored metric is given; then keep the newest ``keep`` (0: all)
    plus the ``keep_best`` best-scored checkpoints. A failed write (a full disk...) removes
    the temp folder and raises CheckpointWriteError on every rank."""
    name = f"step_{step:08d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".{name}.tmp")

    def start() -> None:
        if env.is_main:
            os.makedirs(root, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)

    def write() -> None:
        write_torch(os.path.join(tmp, f"rank{env.rank}.pt"), plain_types(per_rank))
        if env.is_main:
            write_torch(os.path.join(tmp, STATE_FILE), plain_types(shared))
            if score is not None:
                write_json_atomic(os.path.join(tmp, SCORE_FILE), {"score": float(score)})

    def seal() -> None:
        if env.is_main:
            write_manifest(tmp, step=step, world_size=env.world_size)
            replace_folder(tmp, final)

    error = _together(env, start) or _together(env, write) or _together(env, seal)
    if error is not None:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(root, f"checkpoint {name}", error, env)
        if failure is error:
            raise error
        raise failure from (None if isinstance(error, _OtherRank) else error)
    if env.is_main:
        prune_checkpoints(root, keep, keep_best, mode, trusted=final)
    barrier(env)
    return final


def checkpoint_score(path: str) -> float | None:
    file = os.path.join(path, SCORE_FILE)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return float(json.load(f)["score"])


def prune_checkpoints(
    root: str, keep: int, keep_best: int = 0, mode: str = "min", verify: str | None = None, trusted: str | None = None
) -> list[str]:
    """Delete all but the newest ``keep`` (0: keep everything) and the ``keep_best`` best
    scored checkpoints, never the one resume=auto would take (``newest_checkpoint``;
    ``trusted``: the folder just saved, known complete); returns the kept folders, oldest
    first."""
    found = [path for _, path in list_checkpoints(root)]
    if keep <= 0:
        return found
    kept = set(found[-keep:])
    scored = best_first([(s, path) for path in found if (s := checkpoint_score(path)) is not None], mode)
    kept.update(path for _, path in scored[:keep_best])
    try:
        usable = newest_checkpoint(root, verify, quiet=True, trusted=trusted)
    except CheckpointError:
        usable = None
    if usable is not None and usable not in kept:
        log.warning(
            "keeping %s beyond max_checkpoints=%d: the newer checkpoints are damaged and it is the newest complete one",
            usable,
            keep,
        )
        kept.add(usable)
    for path in found:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)
    return [path for path in found if path in kept]
