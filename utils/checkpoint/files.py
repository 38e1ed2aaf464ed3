"""The names in a run folder and a checkpoint folder (see the package docstring), the step
folders it holds, and the plain values a checkpoint carries (RNG states, identifiers hash)."""

from __future__ import annotations

import copy
import errno
import hashlib
import logging
import os
import re
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


SCORE_FILE = "score.json"  # the monitored evaluation metric of a checkpoint (callbacks)


METRICS_FILE = "metrics.jsonl"  # in the run folder: every logged record of the run (training/run_log.py)


MANIFEST = "manifest.json"


# What state.pt holds (training/state.py TrainState.state_dict). 2: every field it writes
# today; older files are refused at load and upgraded by `python -m pipelines.upgrade_checkpoint`.
CHECKPOINT_FORMAT = 2


UPGRADE_COMMAND = "python -m pipelines.upgrade_checkpoint"


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


COMPLETE, INCOMPLETE = "complete", "incomplete"


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def identifiers_hash(dataset_paths: list[str]) -> str:
    """SHA-256 over the datasets' identifiers.json: puzzle embeddings are indexed by it, so
    weights trained on one dataset are meaningless on another with different identifiers."""
    h = hashlib.sha256()
    for path in dataset_paths:
        with open(os.path.join(path, "identifiers.json"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
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
        elements = [plain_types(v) for v in obj]
        if all(a is b for a, b in zip(elements, obj)):
            return obj
        if hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*elements)
        return type(obj)(elements)
    return obj
