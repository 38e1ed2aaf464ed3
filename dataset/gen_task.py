"""One generated task (``dataset.generator``): ``generate_task`` samples a program fitting the
context's style, draws inputs, applies it and validates the pairs; ``validate_task`` holds the
checks that need no program, applied to every generator's output."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dataset.gen_grids import NUM_COLOURS, Grid, _same
from dataset.gen_primitives import Primitive, program_from_spec
from dataset.gen_sampling import _colours, sample_program
from dataset.gen_style import TaskStyle, draw_input
from dataset.sources import ARC_MAX_SIDE, Task, TaskFormatError, parse_task

DEFAULT_MAX_ATTEMPTS = 20
# Candidate inputs drawn per needed pair before an attempt gives up: most rejections are
# cheap (a symmetric grid under a flip, a drawing with no enclosed region for fill_enclosed).
DRAWS_PER_PAIR = 6
PROGRAM_DRAWS = 20


# ----------------------------------------------------------------------------------------
# Validation


def _pair_problem(program: Primitive, grid: Grid, max_side: int) -> tuple[str, Grid | None]:
    if not program.applies(grid, max_side):
        return "program does not apply to the drawn input", None
    before = grid.copy()
    out, again = program(grid.copy()), program(grid.copy())
    if not _same(out, again):
        return "program is not deterministic", None
    if not _same(grid, before):
        return "program modified its input", None
    if not (out.ndim == 2 and 1 <= min(out.shape) and max(out.shape) <= max_side):
        return f"output shape {out.shape} outside 1..{max_side}", None
    if out.min() < 0 or out.max() >= NUM_COLOURS:
        return "output colour outside 0-9", None
    if _same(out, grid):
        return "output equals input", None
    return "", out


def validate_task(task_json: Any, max_side: int = ARC_MAX_SIDE) -> list[str]:
    """Problems with a task JSON that any generator (DSL or external) must avoid; [] = valid.

    Checks what needs no program: well-formed grids of colours 0-9 with sides 1..max_side
    (via ``parse_task``), at least one train and one test pair, every test pair labelled,
    every output different from its input, and no input given twice."""
    try:
        task = parse_task("candidate", task_json, "generated", "generator", require_test_outputs=True)
    except TaskFormatError as e:
        return [str(e)]
    problems = []
    for kind in ("train", "test"):
        if not any(k == kind for k, _, _, _ in task.pairs):
            problems.append(f"no {kind} pair")
    seen: dict[tuple, str] = {}
    for kind, idx, inp, out in task.pairs:
        assert out is not None  # require_test_outputs
        where = f"{kind} pair {idx}"
        for name, g in (("input", inp), ("output", out)):
            if max(g.shape) > max_side:
                problems.append(f"{where} {name} is {g.shape[0]}x{g.shape[1]}, larger than {max_side}")
        if _same(inp, out):
            problems.append(f"{where}: output equals input")
        key = (inp.shape, inp.tobytes())
        if key in seen:
            problems.append(f"{where}: same input as {seen[key]}")
        seen.setdefault(key, where)
    return problems


# ----------------------------------------------------------------------------------------
# Generating one task


@dataclass
class GeneratedTask:
    context_id: str
    program: Primitive
    train: list[tuple[Grid, Grid]]
    test: list[tuple[Grid, Grid]]
    attempts: int

    @property
    def description(self) -> str:
        return self.program.describe()

    def to_json(self) -> dict[str, Any]:
        def pairs(ps: list[tuple[Grid, Grid]]) -> list[dict[str, list]]:
            return [{"input": i.tolist(), "output": o.tolist()} for i, o in ps]

        return {"train": pairs(self.train), "test": pairs(self.test)}

    def meta(self) -> dict[str, Any]:
        return {"context": self.context_id, "program": self.description, "spec": self.program.to_spec()}


@dataclass
class GenerationFailure:
    context_id: str
    reason: str
    attempts: int
    reasons: dict[str, int] = field(default_factory=dict)  # per-attempt reason -> count


def _as_task(context: Task | dict, context_id: str | None) -> Task:
    if isinstance(context, Task):
        return context
    return parse_task(context_id or "context", context, "context", "generator context")


def _attempt(
    style: TaskStyle, rng: np.random.Generator, n_pairs: int, max_side: int
) -> str | tuple[Primitive, list[tuple[Grid, Grid]]]:
    # A draw that does not fit (an object op for an object-less context) is no attempt yet.
    for _ in range(PROGRAM_DRAWS):
        program = sample_program(rng, style, max_side)
        if program is not None:
            break
    else:
        return "no sampled program fits the context"
    sizes = [s for s in style.sizes(max_side) if max(program.out_shape(*s)) <= max_side]
    if not sizes:
        return f"{program.op} output exceeds {max_side} for every input size of the context"
    pairs: list[tuple[Grid, Grid]] = []
    seen: set[tuple] = set()
    rejects: Counter[str] = Counter()
    for _ in range(n_pairs * DRAWS_PER_PAIR):
        shape = sizes[int(rng.integers(len(sizes)))]
        grid = draw_input(style, rng, shape, min_objects=program.min_objects(), enclosures=program.wants_enclosures())
        key = (grid.shape, grid.tobytes())
        if key in seen:
            rejects["duplicate input"] += 1
            continue
        problem, out = _pair_problem(program, grid, max_side)
        if out is None:
            rejects[problem] += 1
            continue
        seen.add(key)
        pairs.append((grid, out))
        if len(pairs) == n_pairs:
            return program, pairs
    return f"too few valid pairs for {program.op} (mostly: {rejects.most_common(1)[0][0]})"


def _consistency_problems(program: Primitive, generated: GeneratedTask, max_side: int) -> list[str]:
    # The recorded spec, read back from JSON, must reproduce every pair: the task is one
    # program with one set of parameters, and what is recorded is what made it.
    rebuilt = program_from_spec(json.loads(json.dumps(program.to_spec())))
    problems = [
        f"recorded program does not reproduce pair {i}"
        for i, (inp, out) in enumerate(generated.train + generated.test)
        if not _same(rebuilt(inp), out)
    ]
    return problems + validate_task(generated.to_json(), max_side)


def generate_task(
    context: Task | dict,
    rng: np.random.Generator,
    *,
    context_id: str | None = None,
    num_train: int | tuple[int, int] = (3, 5),
    num_test: int = 1,
    max_side: int = ARC_MAX_SIDE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> GeneratedTask | GenerationFailure:
    """A new task in the style of `context`, made by one DSL program, or the reasons no
    attempt out of `max_attempts` produced a valid one. Deterministic given `rng`'s state."""
    task = _as_task(context, context_id)
    cid = context_id or task.task_id
    lo, hi = (num_train, num_train) if isinstance(num_train, int) else num_train
    if not 1 <= lo <= hi or num_test < 1 or not 1 <= max_side <= ARC_MAX_SIDE:
        raise ValueError(f"bad sizes: num_train={num_train}, num_test={num_test}, max_side={max_side}")
    style = TaskStyle.from_task(task)
    if not style.palette:  # an all-background context: still draw objects, in a fixed random palette
        style = replace(style, palette=_colours(rng, 2, {style.background}) or ())
    reasons: Counter[str] = Counter()
    for attempt in range(1, max_attempts + 1):
        n_train = int(rng.integers(lo, hi + 1))
        result = _attempt(style, rng, n_train + num_test, max_side)
        if isinstance(result, str):
            reasons[result] += 1
            continue
        program, pairs = result
        generated = GeneratedTask(cid, program, pairs[:n_train], pairs[n_train:], attempt)
        problems = _consistency_problems(program, generated, max_side)
        if problems:
            reasons[f"validation: {problems[0]}"] += 1
            continue
        return generated
    summary = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
    return GenerationFailure(cid, f"no valid task in {max_attempts} attempts ({summary})", max_attempts, dict(reasons))
