"""**Complete.** A checkpoint is complete iff its ``manifest.json`` exists, lists ``state.pt``
and every file it lists is there with its size and sha256. Files added later (evaluate.py's
``evaluate/`` outputs) are not listed and do not matter. The check reads every byte by
default (sha256: about a second per GB); ``ARCFORGE_CHECKPOINT_VERIFY=size`` (or
``verify="size"``) checks sizes only (a stat per file: catches truncated and missing files,
not changed bytes) for runs whose checkpoints are many GB.

**Choosing one** (``newest_checkpoint``): resume=auto, ``checkpoint=<run folder>`` (evaluate,
ttt) and pruning take the newest complete checkpoint; each newer one passed over is logged as
a WARNING naming its folder and why (truncated, changed bytes, no manifest). A new save writes
its manifest before its folder appears, so a ``step_*`` folder without one was damaged by hand
or written before manifests existed (``python -m pipelines.upgrade_checkpoint`` upgrades those).

When no checkpoint of a run folder is usable, resume=auto raises ``CheckpointCorruptError``
listing them (rather than starting afresh over them); a named folder whose manifest does not
match is refused the same way. Pruning (``max_checkpoints``, ``callbacks.keep_best``) never
deletes the checkpoint resume=auto would take, even when every newer one is damaged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from utils.checkpoint.errors import CheckpointCorruptError
from utils.checkpoint.files import (
    COMPLETE,
    INCOMPLETE,
    MANIFEST,
    STATE_FILE,
    UPGRADE_COMMAND,
    VERIFY_ENV,
    VERIFY_MODES,
    list_checkpoints,
)
from utils.io import write_json_atomic

log = logging.getLogger(__name__)


def verify_mode(verify: str | None = None) -> str:
    """``verify``, else ``$ARCFORGE_CHECKPOINT_VERIFY``, else sha256."""
    mode = verify or os.environ.get(VERIFY_ENV) or "sha256"
    if mode not in VERIFY_MODES:
        raise ValueError(f"checkpoint verification {mode!r} ({VERIFY_ENV}): choose one of {', '.join(VERIFY_MODES)}")
    return mode


def file_sha256(path: str, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def write_manifest(folder: str, **info: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json`` (atomically, last): size and sha256 of every file in the
    folder (each fsynced first, so the manifest never names bytes that are not on disk)."""
    files = {}
    for name in sorted(os.listdir(folder)):
        file = os.path.join(folder, name)
        if name == MANIFEST or name.startswith(".") or not os.path.isfile(file):
            continue
        files[name] = {"size": os.path.getsize(file), "sha256": file_sha256(file, fsync=True)}
    manifest = {"format": 1, **info, "files": files}
    write_json_atomic(os.path.join(folder, MANIFEST), manifest, indent=1)
    return manifest


def manifest_problem(folder: str, verify: str | None = None, required: tuple[str, ...] = (STATE_FILE,)) -> str | None:
    """Why ``folder`` does not match its manifest (None: it does). Raises FileNotFoundError
    when there is no manifest."""
    mode = verify_mode(verify)
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            files = json.load(f)["files"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name in required:
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, expect in files.items():
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        size = os.path.getsize(file)
        if size != expect["size"]:
            return f"{name} has {size} bytes, its manifest {expect['size']} (truncated or rewritten)"
    if mode == "sha256":
        for name, expect in files.items():
            if file_sha256(os.path.join(folder, name)) != expect["sha256"]:
                return f"{name} does not match its manifest's sha256 (its bytes changed)"
    return None


def checkpoint_status(path: str, verify: str | None = None) -> tuple[str, str | None]:
    """(COMPLETE, None) or (INCOMPLETE, why)."""
    try:
        problem = manifest_problem(path, verify)
    except FileNotFoundError:
        if os.path.isfile(os.path.join(path, STATE_FILE)):
            return INCOMPLETE, f"no {MANIFEST} (damaged, or written before manifests: `{UPGRADE_COMMAND} {path}`)"
        return INCOMPLETE, f"no {MANIFEST} and no {STATE_FILE}"
    return (COMPLETE, None) if problem is None else (INCOMPLETE, problem)


def check_named(path: str, verify: str | None = None) -> None:
    """A checkpoint folder named explicitly: refused (CheckpointCorruptError) when its files
    do not match its manifest."""
    status, why = checkpoint_status(path, verify)
    if status == INCOMPLETE:
        raise CheckpointCorruptError(f"checkpoint {path} is damaged: {why}")


def newest_checkpoint(
    root: str, verify: str | None = None, purpose: str = "resume=auto", quiet: bool = False, trusted: str | None = None
) -> str | None:
    """The newest complete checkpoint of ``root``; None when it holds no checkpoint. Each newer
    folder passed over is logged as a WARNING naming it and why (``quiet``: not logged).
    CheckpointCorruptError when checkpoints exist but none is usable. ``trusted``: a folder
    known complete (just sealed by save_checkpoint), not read again."""
    found = list_checkpoints(root)
    skipped: list[tuple[str, str]] = []
    chosen = None
    for _, path in reversed(found):
        status, why = (COMPLETE, None) if path == trusted else checkpoint_status(path, verify)
        if status == COMPLETE:
            chosen = path
            break
        skipped.append((path, why or ""))
    if not quiet:
        for path, why in skipped:
            log.warning("%s: skipping checkpoint %s: %s", purpose, path, why)
        if skipped and chosen is not None:
            log.warning("%s: taking %s, the newest complete checkpoint", purpose, chosen)
    if chosen is None and found:
        reasons = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in skipped)
        raise CheckpointCorruptError(
            f"{purpose}: none of the {len(found)} checkpoints in {root} is complete "
            f"({reasons}). Move them away (or delete them) to start afresh"
        )
    return chosen
