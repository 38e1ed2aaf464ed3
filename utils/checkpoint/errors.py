"""What goes wrong with checkpoints, as exceptions: each message is one line naming the file
or folder. CheckpointError and its kinds are configuration errors (exit status 2);
CheckpointWriteError stops a run that cannot write (exit status 3)."""

from __future__ import annotations

import logging

from utils.errors import ConfigError

log = logging.getLogger(__name__)


class CheckpointError(ConfigError):
    """A checkpoint that must not be loaded (damaged, unsafe) or a run folder another run
    holds: found before training starts, so entry points end with one ``error:`` line."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint whose files do not match its manifest, or cannot be read."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would run code when unpickled (weights_only refuses it)."""


class RunLockError(CheckpointError):
    """Another live run holds the run folder."""


class RunFolderError(CheckpointError):
    """A run folder that cannot be created or written: a read-only folder or filesystem, a
    file where a folder should be."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (``disk_full``: ENOSPC/EDQUOT); nothing half-written
    is left and ``newest`` is the newest intact checkpoint (None: there is none)."""

    def __init__(self, message: str, newest: str | None = None, disk_full: bool = False):
        super().__init__(message)
        self.newest, self.disk_full = newest, disk_full
