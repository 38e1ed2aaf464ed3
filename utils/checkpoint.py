"""Whole-state checkpoints: one folder per step, written atomically, checked before use,
loaded without running code.

    <checkpoint_path>/
        .lock              the run writing here: host and pid (run_lock)
        step_00001234/
            state.pt       model, optimizers, EMA, step, data position, resolved config,
                           identifiers hash, world size (rank 0 writes it)
            rank<r>.pt     that rank's carry (``model.carry_state``: a recursive model's examples
                           in flight; None for the others) and RNG states
            score.json     the monitored evaluation metric, when one was given (callbacks)
            manifest.json  each file above with its size and sha256; written last

**Writing** (``save_checkpoint``). Every rank writes into ``.step_00001234.tmp`` (each file
flushed and fsynced); once every rank has written, rank 0 hashes the files, writes
``manifest.json`` (a temp file, then rename) and renames the folder into place. A folder
named ``step_*`` written by this code therefore always has its manifest. When a write fails
on any rank (a full disk: ENOSPC or EDQUOT; a file-size limit: EFBIG; or any other OSError,
also where torch.save wraps it in a RuntimeError of its own) every rank stops: the
temp folder is removed, earlier checkpoints are left untouched, and ``CheckpointWriteError``
says what happened and names the newest intact checkpoint (resume=auto continues from it).

**Complete.** A checkpoint is complete iff its ``manifest.json`` exists, lists ``state.pt``
and every file it lists is there with its size and sha256. Files added later (evaluate.py's
``evaluate/`` outputs) are not listed and do not matter. The check reads every byte by
default (sha256: about a second per GB); ``ARCFORGE_CHECKPOINT_VERIFY=size`` (or
``verify="size"``) checks sizes only (a stat per file: catches truncated and missing files,
not changed bytes) for runs whose checkpoints are many GB.

**Choosing one** (``newest_checkpoint``): resume=auto, ``checkpoint=<run folder>`` (evaluate,
ttt) and pruning take the newest complete checkpoint; each newer one passed over is logged as
a WARNING naming its folder and why (truncated, changed bytes, no manifest). Checkpoints
written before manifests existed (``step_*`` with ``state.pt`` and no ``manifest.json``:
*legacy*) are

- loaded as before when named explicitly (``resume=<folder>``, ``checkpoint=<folder>``,
  ``init_from``);
- taken by resume=auto only when the run folder holds no complete manifest-bearing
  checkpoint: then the newest legacy one, with a WARNING that it is unverified. (Since a
  new save writes its manifest before its folder appears, a manifest-less ``step_*`` is
  legacy or damaged by hand, never a save cut short.)

When no checkpoint of a run folder is usable, resume=auto raises ``CheckpointCorruptError``
listing them (rather than starting afresh over them); a named folder whose manifest does not
match is refused the same way. Pruning (``max_checkpoints``, ``callbacks.keep_best``) never
deletes the checkpoint resume=auto would take, even when every newer one is damaged.

**Loading never runs code.** Every file goes through ``load_file``: ``torch.load`` with
``weights_only=True`` (tensors, plain containers, str/int/float/bool/None; numpy scalars of
older files allowed: they only rebuild numbers), or safetensors. Anything else (a pickled
object whose ``__reduce__`` would call a function) is refused with ``UnsafeCheckpointError``
naming the file and the global it wanted, before anything is called. ``save_checkpoint``
writes numpy scalars as Python numbers, so new files need no allowance at all.

**Exports** (``write_export``, ``load_export``): ``model.safetensors`` (weights, EMA applied),
``config.json`` (the resolved run config), ``checkpoint.json`` (source, step, puzzle
identifiers) and ``manifest.json``, written as a folder atomically. Every loader
(evaluate.py, init_from, ttt) takes the folder or the ``.safetensors`` file.

**One writer per run folder** (``run_lock``): rank 0 holds ``fcntl.flock`` on
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
one is taken over, another host's refuses until the file is deleted.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from utils.distributed import DistEnv, all_reduce_sum, barrier
from utils.errors import ConfigError
from utils.io import fsync_dir, write_json_atomic
from utils.monitor import best_first

log = logging.getLogger(__name__)

SCORE_FILE = "score.json"  # the monitored evaluation metric of a checkpoint (callbacks)
METRICS_FILE = "metrics.jsonl"  # in the run folder: every logged record of the run (training/run_log.py)
MANIFEST = "manifest.json"
STATE_FILE = "state.pt"
LOCK_FILE = ".lock"
STEP_DIR = re.compile(r"^step_(\d+)$")
VERIFY_ENV = "ARCFORGE_CHECKPOINT_VERIFY"
VERIFY_MODES = ("sha256", "size")
# An exported model (evaluate.py export=safetensors)
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_INFO = "checkpoint.json"
EXPORT_FORMAT = "arcforge-export"
COMPLETE, LEGACY, INCOMPLETE = "complete", "legacy", "incomplete"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


def identifiers_hash(dataset_paths: list[str]) -> str:
    """SHA-256 over the datasets' identifiers.json: puzzle embeddings are indexed by it, so
    weights trained on one dataset are meaningless on another with different identifiers."""
    h = hashlib.sha256()
    for path in dataset_paths:
        with open(os.path.join(path, "identifiers.json"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Every ``step_*`` folder of ``root``, oldest first, complete or not
    (``newest_checkpoint`` picks a usable one)."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root) if (m := STEP_DIR.match(name))]
    return sorted(found)


# --- manifests ------------------------------------------------------------------------------


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
    """(COMPLETE, None), (LEGACY, why) for a checkpoint written before manifests, or
    (INCOMPLETE, why)."""
    try:
        problem = manifest_problem(path, verify)
    except FileNotFoundError:
        if os.path.isfile(os.path.join(path, STATE_FILE)):
            return LEGACY, f"no {MANIFEST} (written before manifests: unverified)"
        return INCOMPLETE, f"no {MANIFEST} and no {STATE_FILE}"
    return (COMPLETE, None) if problem is None else (INCOMPLETE, problem)


def check_named(path: str, verify: str | None = None) -> None:
    """A checkpoint folder named explicitly: refused (CheckpointCorruptError) when its files
    do not match its manifest; a legacy one (no manifest) is accepted."""
    status, why = checkpoint_status(path, verify)
    if status == INCOMPLETE:
        raise CheckpointCorruptError(f"checkpoint {path} is damaged: {why}")
    if status == LEGACY:
        log.info("%s: %s", path, why)


def newest_checkpoint(
    root: str, verify: str | None = None, purpose: str = "resume=auto", quiet: bool = False, trusted: str | None = None
) -> str | None:
    """The newest complete checkpoint of ``root``, else (no complete manifest-bearing one)
    its newest legacy one; None when it holds no checkpoint. Each newer folder passed over
    is logged as a WARNING naming it and why (``quiet``: not logged). CheckpointCorruptError
    when checkpoints exist but none is usable. ``trusted``: a folder known complete (just
    sealed by save_checkpoint), not read again."""
    found = list_checkpoints(root)
    skipped: list[tuple[str, str]] = []
    legacy = None
    chosen = None
    for _, path in reversed(found):
        status, why = (COMPLETE, None) if path == trusted else checkpoint_status(path, verify)
        if status == COMPLETE:
            chosen = path
            break
        if status == LEGACY and legacy is None:
            legacy = path
        skipped.append((path, why or ""))
    if chosen is None and legacy is not None:
        chosen = legacy
        skipped = skipped[: [p for p, _ in skipped].index(legacy)]
    if not quiet:
        for path, why in skipped:
            log.warning("%s: skipping checkpoint %s: %s", purpose, path, why)
        if skipped and chosen is not None and chosen != legacy:
            log.warning("%s: taking %s, the newest complete checkpoint", purpose, chosen)
        if chosen is not None and chosen == legacy:
            log.warning(
                "%s: %s has no %s (written before manifests): taking it unverified, as no checkpoint "
                "of %s has a manifest that matches",
                purpose,
                chosen,
                MANIFEST,
                root,
            )
    if chosen is None and found:
        reasons = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in skipped)
        raise CheckpointCorruptError(
            f"{purpose}: none of the {len(found)} checkpoints in {root} is complete "
            f"({reasons}). Move them away (or delete them) to start afresh"
        )
    return chosen


# --- writing --------------------------------------------------------------------------------


def plain_types(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers (what weights_only loads without any
    allowance); containers without any are returned as they are (the same object)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = {k: plain_types(v) for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)  # keeps the type and its attributes (a state dict's _metadata)
        out.update(items)
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain_types(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*items)
        return type(obj)(items)
    return obj


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


def _replace_folder(tmp: str, final: str) -> None:
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
    full = getattr(error, "errno", None) in DISK_FULL
    if full:
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
    return CheckpointWriteError(f"{what} could not be written to {root}: {cause}. {left}; {kept}: {todo}", newest, full)


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
            _replace_folder(tmp, final)

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


def resolve_resume(resume: str, checkpoint_root: str, verify: str | None = None, env: DistEnv | None = None) -> str | None:
    """The checkpoint folder to resume from: none, the newest complete one (auto; see the
    module docstring for damaged and legacy ones), or a given folder (refused when damaged).
    With a distributed ``env`` rank 0 decides (and logs) and every rank gets its answer."""
    if env is not None and env.distributed:
        import torch.distributed as dist

        answer: list[Any] = [None]
        if env.is_main:
            try:
                answer = [("ok", resolve_resume(resume, checkpoint_root, verify))]
            except (CheckpointError, FileNotFoundError) as e:
                answer = [("error", type(e).__name__, str(e))]
        dist.broadcast_object_list(answer, src=0)
        if answer[0][0] == "error":
            raise (FileNotFoundError if answer[0][1] == "FileNotFoundError" else CheckpointError)(answer[0][2])
        return answer[0][1]
    if resume == "none":
        return None
    if resume == "auto":
        return newest_checkpoint(checkpoint_root, verify)
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise FileNotFoundError(f"resume={resume}: no checkpoint there (expected {resume}/{STATE_FILE})")
    check_named(resume, verify)
    return resume


# --- loading --------------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """What rebuilds numpy scalars (a dtype and raw bytes: no code), under the names numpy
    1 and 2 pickle them with."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype, *dtypes]


SAFE_GLOBALS = _numpy_safe_globals()


# torch's own words around a weights_only refusal: advice to turn the protection off, links
TORCH_ADVICE = re.compile(r"weights_only|trust|documentation|file an issue|two options|Alternatively", re.IGNORECASE)


def _refused(message: str) -> str:
    """What torch's weights_only unpickler refused, in a few words: the global the file asked
    for ("GLOBAL x was not an allowed global", "GLOBAL x whose module ... is blocked"), else
    the unpickler's own reason; never torch's page of advice around it."""
    found = re.search(r"GLOBAL (\S+)", message)
    if found:
        return f"a reference to {found.group(1)}"
    reasons = [
        line.replace("Weights only load failed.", "").replace("WeightsUnpickler error:", "").strip()
        for line in message.splitlines()
    ]
    reason = next((r for r in reasons if r and not TORCH_ADVICE.search(r)), None)
    return (
        f"an object beyond tensors, containers and numbers ({reason})"
        if reason
        else "an object beyond tensors, containers and numbers"
    )


def load_file(path: str) -> Any:
    """A checkpoint or weights file, without running code: ``.safetensors`` through
    safetensors, anything else ``torch.load(weights_only=True)`` onto the CPU.
    UnsafeCheckpointError when the file holds objects beyond tensors, plain containers and
    numbers (naming the file and the global it asked for); CheckpointCorruptError when it
    cannot be read."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointCorruptError(f"{path} cannot be read as safetensors: {e}") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds {_refused(str(e))}, which unpickling would call. Checkpoints are "
            f"loaded with torch.load(weights_only=True) (tensors, plain containers, numbers, strings) so that a file "
            f"never runs code; if you trust it, re-save its state dict with plain types"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointCorruptError(f"{path} cannot be read ({first}): truncated or not a torch file") from None


def load_shared(path: str) -> dict[str, Any]:
    return load_file(os.path.join(path, STATE_FILE))


def load_rank(path: str, rank: int) -> dict[str, Any] | None:
    file = os.path.join(path, f"rank{rank}.pt")
    if not os.path.isfile(file):
        return None
    return load_file(file)


def load_weights(path: str, verify: str | None = None) -> dict[str, Any]:
    """Weights to start from or evaluate, as a dict with ``model`` (a state dict) and, when
    the source has them, ``ema``, ``identifiers``, ``identifiers_sha256``, ``config``:
    a checkpoint folder (its ``state.pt``; refused when damaged), an export folder or
    ``.safetensors`` file (``load_export``), or a torch file (ours, or a
    TinyRecursiveModels/HRM state dict). FileNotFoundError when ``path`` is none of them."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, STATE_FILE)):
            check_named(path, verify)
            return load_shared(path)
        if os.path.isfile(os.path.join(path, EXPORT_WEIGHTS)):
            return load_export(path, verify)
        raise FileNotFoundError(f"{path}: neither a checkpoint ({STATE_FILE}) nor an export ({EXPORT_WEIGHTS})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.endswith(".safetensors"):
        return load_export(path, verify)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) == STATE_FILE and os.path.isfile(os.path.join(folder, MANIFEST)):
        check_named(folder, verify)
    source = load_file(path)
    if not isinstance(source, dict):
        raise CheckpointCorruptError(f"{path} holds a {type(source).__name__}, not a state dict")
    return source if "model" in source else {"model": source}


# --- safetensors exports --------------------------------------------------------------------


def write_export(out_dir: str, weights: dict[str, torch.Tensor], config: dict[str, Any] | None, info: dict[str, Any]) -> str:
    """Write ``out_dir/``: ``model.safetensors`` (``weights``), ``config.json`` (``config``,
    the resolved run config), ``checkpoint.json`` (``info``: source, step, identifiers...)
    and ``manifest.json``, into a temp folder renamed into place; CheckpointWriteError when
    it cannot be written (nothing half-written is left)."""
    from safetensors.torch import save_file

    out_dir = os.path.normpath(out_dir)
    parent, name = os.path.split(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f".{name}.tmp")
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        # safetensors wants contiguous tensors that share no memory
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
        save_file(tensors, os.path.join(tmp, EXPORT_WEIGHTS), metadata={"format": "pt", "producer": EXPORT_FORMAT})
        write_json_atomic(os.path.join(tmp, EXPORT_CONFIG), config, indent=1)
        write_json_atomic(os.path.join(tmp, EXPORT_INFO), {"format": EXPORT_FORMAT, **plain_types(info)}, indent=1)
        write_manifest(tmp, export=EXPORT_FORMAT)
        _replace_folder(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = e.errno in DISK_FULL
        cause = "the disk is full" if full else str(e)
        raise CheckpointWriteError(
            f"export {out_dir} could not be written: {cause}; nothing half-written is left", None, full
        ) from e
    return out_dir


def load_export(path: str, verify: str | None = None) -> dict[str, Any]:
    """An export folder or ``.safetensors`` file as ``load_weights`` returns it. Beside the
    weights, ``checkpoint.json`` marks ARCForge's export: then ``config.json`` is the run
    config and the identifiers come along; a lone safetensors file brings weights only. A
    folder whose manifest does not match is refused (CheckpointCorruptError)."""
    folder, file = (
        (path, os.path.join(path, EXPORT_WEIGHTS)) if os.path.isdir(path) else (os.path.dirname(os.path.abspath(path)), path)
    )
    info: dict[str, Any] = {}
    config = None
    info_file = os.path.join(folder, EXPORT_INFO)
    if os.path.isfile(info_file) and os.path.basename(file) == EXPORT_WEIGHTS:
        try:
            problem = manifest_problem(folder, verify, required=(EXPORT_WEIGHTS,))
        except FileNotFoundError:
            problem = f"no {MANIFEST}"
        if problem is not None:
            raise CheckpointCorruptError(f"export {folder} is damaged: {problem}")
        with open(info_file) as f:
            info = json.load(f)
        if info.get("format") == EXPORT_FORMAT:
            with open(os.path.join(folder, EXPORT_CONFIG)) as f:
                config = json.load(f)
        else:
            info = {}
    return {
        "model": load_file(file),
        "ema": None,
        "config": config,
        "identifiers": info.get("identifiers"),
        "identifiers_sha256": info.get("identifiers_sha256"),
        "step": info.get("step"),
        "source": info.get("source"),
    }


# --- one writer per run folder --------------------------------------------------------------


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
