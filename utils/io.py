"""Atomic file output: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_json_atomic(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then os.replace it into place."""
    _write_atomic(path, lambda f: json.dump(obj, f, **dump_kwargs))


def write_text_atomic(path: str, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text))


def _write_atomic(path: str, write: Callable[[IO[str]], Any]) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_dir(path: str) -> None:
    """fsync a folder, so a rename or a new file inside it survives a crash of the host (a
    no-op where the platform cannot open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and platforms) refuse fsync on a folder: best effort
    finally:
        os.close(fd)
