"""Check an ARC Prize submission against the tasks it answers.

    python -m evaluators.validate_submission SUBMISSION --tasks PATH

PATH is a dataset folder (its ``test_puzzles.json``), a Kaggle challenges JSON
(``{task_id: task}``) or a folder of task JSONs (``**/*.json``, task id = file stem; names
starting with '.' are no tasks, as for the dataset builder and ttt.py).
Every problem is printed (task id, index, what); exit status 1 if there is any, else 0
with a one-line OK.

A malformed task (ttt.py answers it with ``evaluators.submission.fallback_answer``) still
needs its entry: one per test pair, and when its number of test inputs cannot be read (no
'test' list, not an object, a file that is not JSON) any number of valid entries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dataset.sources import TaskFormatError, load_json, load_task_map, task_files

MAX_SIDE = 30
ATTEMPTS = ("attempt_1", "attempt_2")


def readable_tests(task: Any) -> list | None:
    """A task's test pairs, or None when it has no readable 'test' list (a malformed task)."""
    tests = task.get("test") if isinstance(task, dict) else None
    return tests if isinstance(tests, list) else None


def grid_problem(grid) -> str | None:
    """What is wrong with a grid, or None when it is a valid ARC grid."""
    if not isinstance(grid, list) or not grid:
        return "not a non-empty list of rows"
    if len(grid) > MAX_SIDE:
        return f"{len(grid)} rows (max {MAX_SIDE})"
    width = len(grid[0]) if isinstance(grid[0], list) else 0  # row 0 is checked first
    for r, row in enumerate(grid):
        if not isinstance(row, list) or not row:
            return f"row {r} is not a non-empty list"
        if len(row) != width:
            return f"ragged: row {r} has {len(row)} cells, row 0 has {width}"
        for c, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= 9:
                return f"cell ({r}, {c}) is {x!r}, not a colour 0-9"
    if width > MAX_SIDE:
        return f"{width} columns (max {MAX_SIDE})"
    return None


def validate(submission, tasks: dict[str, Any]) -> list[str]:
    """Problems of ``submission`` against ``tasks`` ({task_id: task with a "test" list}; a
    malformed task's value may be anything: see the module docstring)."""
    if not isinstance(submission, dict):
        return [f"submission is a {type(submission).__name__}, not an object of task ids"]
    problems = []
    for task_id in tasks:
        if task_id not in submission:
            problems.append(f"{task_id}: missing task")
    for task_id in submission:
        if task_id not in tasks:
            problems.append(f"{task_id}: unknown task")
    for task_id, task in tasks.items():
        if task_id not in submission:
            continue
        entries = submission[task_id]
        tests = readable_tests(task)
        n_tests = len(tests) if tests is not None else None
        if not isinstance(entries, list):
            problems.append(f"{task_id}: not a list of attempts")
            continue
        if n_tests is not None and len(entries) != n_tests:
            problems.append(f"{task_id}: {len(entries)} entries for {n_tests} test inputs")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                problems.append(f"{task_id}[{i}]: not an object with attempt_1 and attempt_2")
                continue
            for name in ATTEMPTS:
                if name not in entry:
                    problems.append(f"{task_id}[{i}]: missing {name}")
                else:
                    what = grid_problem(entry[name])
                    if what:
                        problems.append(f"{task_id}[{i}].{name}: {what}")
            extra = sorted(set(entry) - set(ATTEMPTS))
            if extra:
                problems.append(f"{task_id}[{i}]: unexpected keys {extra}")
    return problems


def _is_task(value: Any) -> bool:
    return isinstance(value, dict) and "test" in value


def load_tasks(path: str) -> dict[str, Any]:
    """Tasks from a dataset folder, a Kaggle challenges JSON or a folder of task JSONs, read
    as the dataset builder and ttt.py read them (``dataset.sources``: the same task files,
    the same JSON readers). A malformed task stays in, as it needs an entry: in a challenges
    file any value beside well-formed tasks, None for one too deeply nested to read; in a
    folder any JSON value, None for a file that is not readable JSON."""
    p = Path(path)
    if p.is_dir() and (p / "test_puzzles.json").is_file():
        p = p / "test_puzzles.json"
    if p.is_file():
        tasks, _ = load_task_map(str(p))
        if tasks and not any(_is_task(t) for t in tasks.values()):
            raise ValueError(f"{p}: not a {{task_id: task}} JSON object")
        return tasks
    if p.is_dir():
        tasks = {}
        for f in map(Path, task_files(str(p))):
            try:
                task = load_json(str(f))
            except TaskFormatError:
                task = None  # a task file that is not readable JSON: its task is answered all the same
            if f.stem in tasks:
                raise ValueError(f"{f}: task id {f.stem} appears twice under {p}")
            tasks[f.stem] = task
        if not tasks:
            raise ValueError(f"{p}: no task JSON files")
        return tasks
    raise FileNotFoundError(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluators.validate_submission",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("submission")
    parser.add_argument("--tasks", required=True, help="dataset folder, Kaggle challenges JSON or folder of task JSONs")
    args = parser.parse_args(argv)
    try:
        with open(args.submission) as f:
            submission = json.load(f)
        tasks = load_tasks(args.tasks)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    problems = validate(submission, tasks)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) in {os.fspath(args.submission)}", file=sys.stderr)
        return 1
    n_inputs = sum(len(readable_tests(t) or ()) for t in tasks.values())
    unreadable = sum(readable_tests(t) is None for t in tasks.values())
    print(
        f"OK: {len(tasks)} tasks, {n_inputs} test inputs, 2 attempts each"
        + (f"; {unreadable} malformed tasks without a readable 'test' list" if unreadable else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
