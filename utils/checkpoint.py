"""Whole-state checkpoints: one folder per step, written atomically.

    <checkpoint_path>/step_00001234/
        state.pt     model, optimizers, EMA, step, data position, resolved config,
                     identifiers hash, world size (rank 0 writes it)
        rank<r>.pt   that rank's carry (``model.carry_state``: a recursive model's examples
                     in flight; None for the others) and RNG states

Every rank writes into ``.step_00001234.tmp``; after a barrier rank 0 renames it into
place, so a folder named ``step_*`` is always complete. ``resume=auto`` takes the newest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any

import torch

from utils.distributed import DistEnv, barrier
from utils.monitor import best_first

SCORE_FILE = "score.json"  # the monitored evaluation metric of a checkpoint (callbacks)
STEP_DIR = re.compile(r"^step_(\d+)$")


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
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root) if (m := STEP_DIR.match(name))]
    return sorted(found)


def save_checkpoint(root: str, step: int, shared: dict[str, Any], per_rank: dict[str, Any], env: DistEnv,
                    keep: int = 0, score: float | None = None, keep_best: int = 0, mode: str = "min") -> str:
    """Write ``step_<N>/`` atomically (a temp folder, then rename), with ``score.json`` when a
    monitored metric is given; then keep the newest ``keep`` (0: all) plus the ``keep_best``
    best-scored checkpoints."""
    final = os.path.join(root, f"step_{step:08d}")
    tmp = os.path.join(root, f".step_{step:08d}.tmp")
    if env.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(env)
    torch.save(per_rank, os.path.join(tmp, f"rank{env.rank}.pt"))
    if env.is_main:
        torch.save(shared, os.path.join(tmp, "state.pt"))
        if score is not None:
            with open(os.path.join(tmp, SCORE_FILE), "w") as f:
                json.dump({"score": score}, f)
    barrier(env)
    if env.is_main:
        if os.path.exists(final):  # the same step saved twice (e.g. eval and interval): replace
            shutil.rmtree(final)
        os.rename(tmp, final)
        prune_checkpoints(root, keep, keep_best, mode)
    barrier(env)
    return final


def checkpoint_score(path: str) -> float | None:
    file = os.path.join(path, SCORE_FILE)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return float(json.load(f)["score"])


def prune_checkpoints(root: str, keep: int, keep_best: int = 0, mode: str = "min") -> list[str]:
    """Delete all but the newest ``keep`` (0: keep everything) and the ``keep_best`` best
    scored checkpoints; returns the kept folders, oldest first."""
    found = [path for _, path in list_checkpoints(root)]
    if keep <= 0:
        return found
    kept = set(found[-keep:])
    scored = best_first([(s, path) for path in found if (s := checkpoint_score(path)) is not None], mode)
    kept.update(path for _, path in scored[:keep_best])
    for path in found:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)
    return [path for path in found if path in kept]


def resolve_resume(resume: str, checkpoint_root: str) -> str | None:
    """The checkpoint folder to resume from: none, the newest (auto), or a given folder."""
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(checkpoint_root)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(resume, "state.pt")):
        raise FileNotFoundError(f"resume={resume}: no checkpoint there (expected {resume}/state.pt)")
    return resume


def load_shared(path: str) -> dict[str, Any]:
    return torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=False)


def load_rank(path: str, rank: int) -> dict[str, Any] | None:
    file = os.path.join(path, f"rank{rank}.pt")
    if not os.path.isfile(file):
        return None
    return torch.load(file, map_location="cpu", weights_only=False)
