"""**Loading never runs code.** Every file goes through ``load_file``: ``torch.load`` with
``weights_only=True`` (tensors, plain containers, str/int/float/bool/None; numpy scalars of
older files allowed: they only rebuild numbers), or safetensors. Anything else (a pickled
object whose ``__reduce__`` would call a function) is refused with ``UnsafeCheckpointError``
naming the file and the global it wanted, before anything is called. ``save_checkpoint``
writes numpy scalars as Python numbers, so new files need no allowance at all."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from typing import Any

import numpy as np
import torch

from utils.checkpoint.errors import CheckpointCorruptError, CheckpointError, UnsafeCheckpointError
from utils.checkpoint.files import (
    CHECKPOINT_FORMAT,
    EXPORT_CONFIG,
    EXPORT_FORMAT,
    EXPORT_INFO,
    EXPORT_WEIGHTS,
    MANIFEST,
    STATE_FILE,
    UPGRADE_COMMAND,
)
from utils.checkpoint.manifest import check_named, manifest_problem, newest_checkpoint
from utils.distributed import DistEnv

log = logging.getLogger(__name__)


def resolve_resume(resume: str, checkpoint_root: str, verify: str | None = None, env: DistEnv | None = None) -> str | None:
    """The checkpoint folder to resume from: none, the newest complete one (auto; see the
    module docstring for damaged ones), or a given folder (refused when damaged).
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


def _numpy_safe_globals() -> list[Any]:
    """What rebuilds numpy scalars (a dtype and raw bytes: no code), under the names numpy
    1 and 2 pickle them with."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # numpy 1's name of the same function
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
    """A checkpoint folder's state.pt; CheckpointError when it was written in an older format."""
    state = load_file(os.path.join(path, STATE_FILE))
    check_format(state, path)
    return state


def check_format(state: Any, path: str) -> None:
    """Refuse an ARCForge state written before today's format (CHECKPOINT_FORMAT)."""
    found = state.get("format") if isinstance(state, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} was written in checkpoint format {found or 1}; this version reads format "
            f"{CHECKPOINT_FORMAT}: upgrade it with `{UPGRADE_COMMAND} {path}`"
        )


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
    if os.path.basename(path) == STATE_FILE:
        check_format(source, path)
    if not isinstance(source, dict):
        raise CheckpointCorruptError(f"{path} holds a {type(source).__name__}, not a state dict")
    return source if "model" in source else {"model": source}


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
