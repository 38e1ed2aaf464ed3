"""Resuming a run: which keys a resume may change (``resume_differences``). The overrides
that recreate a checkpoint's saved config are runconfig.compose's ``saved_overrides``."""

from __future__ import annotations

from typing import Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for a nested dict (a saved config)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


# What a resumed run may change freely: how long it runs, where and how it reports, and what
# the evaluation measures. Every other key changes what is trained.
RESUME_FREE = (
    "resume",
    "epochs",
    "max_steps",
    "max_minutes",
    "device",
    "compile",
    "log_interval",
    "progress_bar",
    "wandb.",
    "eval.",
    "evaluate",
    "eval_interval",
    "min_eval_interval",
    "checkpoint_every_eval",
    "checkpoint_interval_steps",
    "max_checkpoints",
    "requeue_on_preempt",
    "callbacks.",
    "run_name",
    "project_name",
    "checkpoint_path",
    "grad_accum_steps",
    "init_from",
    "force_identifiers",
    "max_bad_steps",
    # the identifiers check guards the data itself
    "allow_config_change",
    "data.name",
    "data.paths",
    "data.test_paths",
    "data.build",
)
# What no resume may change: the saved weights and data position would not fit.
RESUME_FIXED = ("arch.", "global_batch_size", "seed")


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def resume_differences(saved: dict, current: dict) -> tuple[list[str], list[str], list[str]]:
    """(fixed, training, free): ``key old -> new`` for each key whose value differs between a
    checkpoint's saved config and the current one, by what a resume may do with it."""
    old, new = flatten(saved), flatten(current)
    fixed: list[str] = []
    training: list[str] = []
    free: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            continue
        line = f"{key} {a} -> {b}"
        (fixed if _matches(key, RESUME_FIXED) else free if _matches(key, RESUME_FREE) else training).append(line)
    return fixed, training, free
