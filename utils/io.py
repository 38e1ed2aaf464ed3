"""Atomic file output: a reader sees the old file or the new one, never half of one; and
reading the one file written by appending, a JSON-lines log, whose last line a crash or a
full disk may have torn."""

from __future__ import annotations

import json
import logging
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


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] when it does not exist). A torn last line (what a
    crash or a full disk leaves) is dropped with a warning; a bad line before it is an error."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for n, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n < len(lines) - 1:
                raise ValueError(f"{path}: line {n + 1} is not JSON ({e})") from e
            logging.getLogger(__name__).warning("%s: dropped a torn last line (%d characters)", path, len(line))
    return records


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
