"""Submissions in ARC Prize format, ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}``:
the fallback answer, and pass@k scored from a submission (the voter scores its ranked
grids with the same ``pass_at_k``).

Every figure follows the ARC Prize convention: a task scores the fraction of its test inputs
answered within k attempts, averaged over tasks (``ARC/pass@k``); ``ARC/kaggle_pass@k``
averages over test inputs, ``ARC/strict_pass@k`` counts tasks with every input solved. Only
fully labeled tasks (every test pair has an output) are scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ATTEMPTS = ("attempt_1", "attempt_2")
# What a task's per-input record calls "solved within k attempts" (k = 1, 2: a submission holds two).
SOLVED_KEYS = {1: "solved_attempt_1", 2: "solved_top_2"}


def fallback_attempts(test_input) -> dict[str, list[list[int]]]:
    """The standard baseline answer to one test input, given when a model has no grid for it:
    the input itself as both attempts (it keeps the task's list aligned with its inputs)."""
    grid = [[int(x) for x in row] for row in test_input]
    return {"attempt_1": grid, "attempt_2": grid}


def fallback_answer(task: dict) -> list[dict]:
    """The fallback answer to every test input of a task (its JSON: ``{"train": ..., "test": ...}``)."""
    return [fallback_attempts(pair["input"]) for pair in task["test"]]


def pass_at_k(task_scores: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """``ARC/pass@k``, ``ARC/kaggle_pass@k`` and ``ARC/strict_pass@k`` from per labeled task a
    bool array [test inputs, len(ks)]: whether each input is solved within each k."""
    if not task_scores:
        return {}
    width = len(ks)
    per_task = np.stack([s.mean(axis=0) if len(s) else np.zeros(width) for s in task_scores])  # [tasks, ks]
    strict = np.stack([s.all(axis=0) if len(s) else np.zeros(width, bool) for s in task_scores])
    per_input = np.concatenate([np.asarray(s, dtype=bool).reshape(-1, width) for s in task_scores])
    metrics: dict[str, float] = {}
    for j, k in enumerate(ks):
        metrics[f"ARC/pass@{k}"] = float(per_task[:, j].mean())
        metrics[f"ARC/kaggle_pass@{k}"] = float(per_input[:, j].mean()) if len(per_input) else 0.0
        metrics[f"ARC/strict_pass@{k}"] = float(strict[:, j].mean())
    return metrics


def score_submission(submission: dict, tasks: dict[str, dict],
                     ks: Sequence[int] = (1, 2)) -> tuple[dict[str, float], dict[str, dict]]:
    """(metrics, per task) of a submission against the tasks it answers (task JSONs, test
    outputs where known). ``ks``: 1 (attempt 1 right) and/or 2 (either attempt).

    Per task: ``test_inputs``, ``labeled`` and, when labeled, which inputs are solved
    (``solved_attempt_1``, ``solved_top_2``) and ``pass@k``."""
    ks = sorted({int(k) for k in ks})
    if not ks or not set(ks) <= set(SOLVED_KEYS):
        raise ValueError(f"pass@k from a submission: k in {sorted(SOLVED_KEYS)} (it holds two attempts), got {ks}")
    task_scores, per_task, inputs_scored = [], {}, 0
    for task_id, entries in submission.items():
        tests = tasks[task_id]["test"]
        record: dict = {"test_inputs": len(tests), "labeled": all("output" in pair for pair in tests)}
        if record["labeled"]:
            solved = np.array([[pair["output"] in [entry.get(a) for a in ATTEMPTS[:k]] for k in ks]
                               for entry, pair in zip(entries, tests)], dtype=bool).reshape(-1, len(ks))
            task_scores.append(solved)
            inputs_scored += len(solved)
            for j, k in enumerate(ks):
                record[SOLVED_KEYS[k]] = solved[:, j].tolist()
            for j, k in enumerate(ks):
                record[f"pass@{k}"] = float(solved[:, j].mean()) if len(solved) else 0.0
        per_task[task_id] = record
    metrics = {"ARC/tasks": float(len(submission)), "ARC/tasks_scored": float(len(task_scores)),
               "ARC/test_inputs_scored": float(inputs_scored), **pass_at_k(task_scores, ks)}
    return metrics, per_task
