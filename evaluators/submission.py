"""Submissions in ARC Prize format, ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}``:
the fallback answer, and pass@k scored from a submission (the voter scores its ranked
grids with the same ``pass_at_k``).

Every figure follows the ARC Prize convention: a task scores the fraction of its test inputs
answered within k attempts, averaged over tasks (``ARC/pass@k``); ``ARC/kaggle_pass@k``
averages over test inputs, ``ARC/strict_pass@k`` counts tasks with every input solved. Only
fully labeled tasks (every test pair has an output) are scored.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluators.validate_submission import grid_problem, readable_tests

ATTEMPTS = ("attempt_1", "attempt_2")
# What a task's per-input record calls "solved within k attempts" (k = 1, 2: a submission holds two).
SOLVED_KEYS = {1: "solved_attempt_1", 2: "solved_top_2"}
# The answer to a test input that is no valid ARC grid (a malformed task): the smallest
# grid a submission may hold, so the submission stays valid.
PLACEHOLDER_GRID = ((0,),)


def _as_grid(value: Any) -> list[list[int]] | None:
    """``value`` as a list-of-lists grid (numpy rows and integers accepted), or None when it
    is no valid ARC grid (ragged, a colour outside 0-9, a side over 30, not a grid)."""
    try:
        grid = [[operator.index(x) for x in row] for row in value]
        if any(isinstance(x, (bool, np.bool_)) for row in value for x in row):
            return None
    except TypeError:
        return None
    return grid if grid_problem(grid) is None else None


def fallback_attempts(test_input) -> dict[str, list[list[int]]]:
    """The standard baseline answer to one test input, given when a model has no grid for it:
    the input itself as both attempts (it keeps the task's list aligned with its inputs); the
    placeholder grid [[0]] when the input is no valid ARC grid."""
    grid = _as_grid(test_input)
    if grid is None:
        grid = [list(row) for row in PLACEHOLDER_GRID]
    return {"attempt_1": grid, "attempt_2": [list(row) for row in grid]}


def fallback_answer(task: Any) -> list[dict]:
    """The fallback answer to every test input of a task (its JSON: ``{"train": ..., "test": ...}``).

    A malformed task still gets a valid answer: an entry per test pair (the placeholder for a
    pair without a valid input grid), and one placeholder entry when the number of its test
    inputs cannot be read ('test' missing or not a list, the task not an object, its file not
    JSON): most ARC tasks have one test input, and a scorer that finds a shorter list than it
    expects may reject the submission."""
    pairs = readable_tests(task)
    if pairs is None:
        return [fallback_attempts(None)]
    return [fallback_attempts(pair.get("input") if isinstance(pair, dict) else None) for pair in pairs]


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


def score_submission(
    submission: dict, tasks: dict[str, dict], ks: Sequence[int] = (1, 2)
) -> tuple[dict[str, float], dict[str, dict]]:
    """(metrics, per task) of a submission against the tasks it answers (task JSONs, test
    outputs where known). ``ks``: 1 (attempt 1 right) and/or 2 (either attempt).

    Per task: ``test_inputs``, ``labeled`` and, when labeled, which inputs are solved
    (``solved_attempt_1``, ``solved_top_2``) and ``pass@k``."""
    ks = sorted({int(k) for k in ks})
    if not ks or not set(ks) <= set(SOLVED_KEYS):
        raise ValueError(f"pass@k from a submission: k in {sorted(SOLVED_KEYS)} (it holds two attempts), got {ks}")
    task_scores, per_task, inputs_scored = [], {}, 0
    for task_id, entries in submission.items():
        tests = readable_tests(tasks[task_id])  # None: a malformed task (never scored)
        record: dict = {
            "test_inputs": len(tests) if tests is not None else None,
            "labeled": tests is not None and all(isinstance(pair, dict) and "output" in pair for pair in tests),
        }
        if tests is not None and record["labeled"]:
            solved = np.array(
                [
                    [pair["output"] in [entry.get(a) for a in ATTEMPTS[:k]] for k in ks]
                    for entry, pair in zip(entries, tests)
                ],
                dtype=np.bool_,
            ).reshape(-1, len(ks))
            task_scores.append(solved)
            inputs_scored += len(solved)
            for j, k in enumerate(ks):
                record[SOLVED_KEYS[k]] = solved[:, j].tolist()
            for j, k in enumerate(ks):
                record[f"pass@{k}"] = float(solved[:, j].mean()) if len(solved) else 0.0
        per_task[task_id] = record
    metrics = {
        "ARC/tasks": float(len(submission)),
        "ARC/tasks_scored": float(len(task_scores)),
        "ARC/test_inputs_scored": float(inputs_scored),
        **pass_at_k(task_scores, ks),
    }
    return metrics, per_task
