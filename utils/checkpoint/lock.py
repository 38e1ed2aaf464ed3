"""**One writer per run folder** (``run_lock``): rank 0 holds ``fcntl.flock`` on
``<root>/.lock`` (which names its host and pid) while the run lives; a second run on the
same folder is refused with ``RunLockError`` naming the holder, and a folder that cannot be
created or written (read-only, a file in the way) with ``RunFolderError`` naming it and why. The kernel drops the lock
when its process dies, however it dies, so a killed run never blocks the next (a lock file
naming a dead holder is taken over with a WARNING). On NFS, Linux implements flock with
NFS byte-range locks: they hold across hosts (NFSv4; v3 with lockd) and the server frees
those of a dead client when its lease expires (NFSv4: ~90 s). A mount with ``nolock`` or
``local_lock=flock|all`` keeps locks local to one host: a run on another host is then only
noticed by the name in the file and warned about, not refused. Where flock is not supported
at all (ENOLCK, EOPNOTSUPP) the file alone decides: a live pid on this host refuses, a dead
one is taken over, another host's refuses until the file is deleted."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from utils.checkpoint.errors import CheckpointError, RunFolderError, RunLockError
from utils.checkpoint.files import LOCK_FILE
from utils.distributed import DistEnv

log = logging.getLogger(__name__)


def _holder(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "a run that has not yet written its name"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _ours(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def _why_unwritable(root: str, error: OSError) -> str:
    """Why creating or writing the folder ``root`` failed with ``error``, naming the path: a
    file in the way (itself or a parent), else the system's words (read-only, permission)."""
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        path = os.path.abspath(root)
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            return f"{path} is a file, not a folder"
    return f"{error.filename or root}: {error.strerror}"


class RunLock:
    """``<root>/.lock``, held with ``fcntl.flock`` by the run writing into ``root`` (see the
    module docstring); ``acquire`` raises RunLockError naming a live holder."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, LOCK_FILE)
        self.fd: int | None = None

    def _read(self, fd: int) -> str:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip()

    def _refuse(self, holder: dict[str, Any] | None, hint: str = "") -> RunLockError:
        return RunLockError(
            f"{self.root} is in use by another run ({_describe(holder)}; {self.path}): two runs "
            f"writing one checkpoint folder would overwrite each other's checkpoints. Wait for it "
            f"to end, or choose another run_name / checkpoint_path{hint}"
        )

    def acquire(self) -> RunLock:
        try:
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(
                f"run folder {self.root} (checkpoint_path) cannot be written: "
                f"{_why_unwritable(self.root, e)}; choose another checkpoint_path"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refuse(_holder(self._read(fd))) from None
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                locked = False  # a filesystem without locks: the file alone decides
            text = self._read(fd)
            holder = _holder(text)
            if holder is not None and not _ours(holder):
                same_host = holder.get("host") == socket.gethostname()
                alive = same_host and _pid_alive(int(holder["pid"]))
                if not locked and (alive or not same_host):
                    hint = "" if alive else f" (if that run is dead, delete {self.path})"
                    raise self._refuse(holder, hint)
                if same_host and not alive:
                    log.warning("%s: taking over the lock of %s, which is no longer running", self.root, _describe(holder))
                else:
                    log.warning(
                        "%s: %s names %s, which did not release it (killed?); taking it over. If that run "
                        "is still writing here (a filesystem whose locks do not reach across hosts), stop "
                        "one of the two",
                        self.root,
                        self.path,
                        _describe(holder),
                    )
            me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode() + b"\n", 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        """Clear the holder's name, unlock and close (the file stays: unlinking a lock file
        races with a process about to lock it)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def run_lock(root: str, env: DistEnv | None = None) -> Iterator[RunLock | None]:
    """Hold ``root``'s lock for the ``with`` block: rank 0 takes it (the others get None);
    when it is held by another live run every rank raises RunLockError, when the folder
    cannot be created or written RunFolderError (ConfigErrors: the entry points end with one
    ``error:`` line). Released on leaving the block, and by the kernel if the process dies."""
    lock, error = None, None
    if env is None or env.is_main:
        try:
            lock = RunLock(root).acquire()
        except CheckpointError as e:  # RunLockError, RunFolderError
            error = e
    if env is not None and env.distributed:
        import torch.distributed as dist

        message = [(type(error).__name__, str(error)) if error is not None else None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and error is None:
            kind, text = message[0]
            error = (RunFolderError if kind == RunFolderError.__name__ else RunLockError)(text)
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
