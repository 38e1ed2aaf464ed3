"""Planning a build, index-only (nothing is written): loading the tasks, refusing leakage,
dropping oversized tasks, choosing unseen tasks, drawing each task's augmented variants,
choosing canvases (buckets from what the model is given, never the answer), laying out the
splits and naming the puzzle identifiers."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from dataset.augment import (
    LegacyRandom,
    augmented_names,
    plan_augmentations,
    shuffle_order,
)
from dataset.build_config import AUGMENT_RETRIES_FACTOR, BuildConfig
from dataset.common import (
    BLANK_IDENTIFIER,
)
from dataset.sources import Task, TaskFormatError, load_subset

log = logging.getLogger("arcforge.build")  # the builder's one logger: its notices print as one stream


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
            f"test leakage: {describe_shared(shared)}; the model would train on these test "
            "tasks' outputs. Leave them out of the training subset, or pass --allow-test-leakage "
            "to build anyway (recorded in build_info.json)"
        )
    return by_subset, shared


def describe_shared(shared: list[dict], limit: int = 20) -> str:
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
