"""One chunk of test-time training: its tasks built into a dataset on the checkpoint's canvas,
the puzzle table extended, the stages fine-tuned (``training.loop.train``), the chunk
evaluated; ``adapt_chunk`` returns its answers."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from dataset.build_arc_dataset import build
from dataset.build_config import BuildConfig
from dataset.common import ARC_MAX_GRID_SIZE, PuzzleDatasetMetadata
from dataset.sources import BadTask, Task, load_subset
from models import puzzle_table_key
from models.convert import extend_puzzle_embeddings
from pipelines.evaluate_checkpoint import Checkpoint, evaluate_checkpoint
from pipelines.ttt_config import FOREVER_EPOCHS, SOURCE_SUBSET, TTTConfig, TTTRunConfig
from training import loop
from utils import checkpoint as ckpt
from utils.config.schema import TrainConfig, as_train_config
from utils.distributed import DistEnv
from utils.errors import ConfigError
from utils.io import write_json_atomic

log = logging.getLogger("pipelines.test_time_training")  # one logger for the whole flow


@dataclass
class Setup:
    """What every chunk starts from."""

    config: TTTConfig
    base: TrainConfig  # the run config every stage and evaluation starts from
    weights: dict[str, torch.Tensor]  # ARCForge keys; the EMA weights when the checkpoint has them
    old_rows: int  # rows of the checkpoint's puzzle-embedding table (1: it has none)
    canvas: int
    checkpoint: str


def load_setup(config: TTTRunConfig, checkpoint: Checkpoint) -> Setup:
    base = as_train_config(config)
    weights = checkpoint.eval_weights()  # evaluate.py and pretrain.py evaluate the EMA weights
    key = puzzle_table_key(base.arch)  # where the model family keeps its table (None: no table)
    table = weights.get(key) if key is not None else None
    if table is None and config.ttt.mode != "all":
        raise ValueError(f"checkpoint={checkpoint.path} has no puzzle-embedding table to adapt: use ttt.mode=all")
    canvas = config.ttt.canvas or dataset_canvas(base.data.test_paths or base.data.paths)
    if canvas is None:
        canvas = ARC_MAX_GRID_SIZE
        log.warning(
            "ttt: the checkpoint's dataset is not here; canvas %d (set ttt.canvas if it was trained on another)", canvas
        )
    return Setup(config.ttt, base, weights, table.shape[0] if table is not None else 1, canvas, checkpoint.path)


def dataset_canvas(paths: list[str]) -> int | None:
    for path in paths:
        meta = os.path.join(path, "train", "dataset.json")
        if os.path.isfile(meta):
            return math.isqrt(PuzzleDatasetMetadata.load(meta).seq_len)
    return None


def load_tasks(config: TTTConfig) -> tuple[list[str], dict[str, Task], dict[str, BadTask]]:
    """(every task id in the source's order, the well-formed tasks, the malformed ones with
    their reasons). A problem with the source itself (no file, a Kaggle file that is not
    JSON) is an error; a bad task is not: it gets the fallback answer. Every task is checked
    as the builder checks a test set's (``test_set``), so no chunk holds a task it refuses."""
    assert config.tasks is not None  # validate() requires it
    try:
        loaded = load_subset(config.tasks, config.subset, on_bad_task="skip", test_set=True)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"tasks={config.tasks} subset={config.subset}: {e}") from None
    order = list(loaded)[: config.limit]
    kept = {t: loaded[t] for t in order}
    tasks = {t: task for t, task in kept.items() if isinstance(task, Task)}
    bad = {t: task for t, task in kept.items() if isinstance(task, BadTask)}
    return order, tasks, bad


def build_chunk_dataset(setup: Setup, tasks: dict[str, Task], chunk_dir: str) -> str:
    """The chunk's augmented dataset, identifiers from ``setup.old_rows`` on; one group per
    variant in the train split (TRM groups a task's variants and draws one per epoch, which
    would cap the batch at a chunk's demonstration count)."""
    prefix = os.path.join(chunk_dir, "tasks")
    write_json_atomic(f"{prefix}_{SOURCE_SUBSET}_challenges.json", {t: task.raw for t, task in tasks.items()})
    data_dir = os.path.join(chunk_dir, "data")
    threads = torch.get_num_threads()  # numba's parallel kernels reset torch's thread count
    build(
        BuildConfig(
            input_file_prefix=prefix,
            output_dir=data_dir,
            subsets=[SOURCE_SUBSET],
            test_set_name=SOURCE_SUBSET,
            seed=setup.config.seed,
            num_aug=setup.config.num_aug,
            puzzle_identifiers_start=setup.old_rows,
            max_grid_size=setup.canvas,
        )
    )
    torch.set_num_threads(threads)
    train_dir = os.path.join(data_dir, "train")
    puzzles = np.load(os.path.join(train_dir, "all__puzzle_identifiers.npy")).size
    np.save(os.path.join(train_dir, "all__group_indices.npy"), np.arange(puzzles + 1, dtype=np.int32))
    meta = PuzzleDatasetMetadata.load(os.path.join(train_dir, "dataset.json"))
    meta.total_groups = puzzles
    with open(os.path.join(train_dir, "dataset.json"), "w") as f:
        f.write(meta.to_json())
    return data_dir


def stages(config: TTTConfig) -> list[tuple[str, bool, float]]:
    """(name, trunk frozen, share of the budget) per training stage."""
    if config.mode == "embeddings":
        return [("embeddings", True, 1.0)]
    if config.mode == "all":
        return [("all", False, 1.0)]
    return [("embeddings", True, 1.0 - config.all_fraction), ("all", False, config.all_fraction)]


def split_steps(steps: int | None, shares: list[float]) -> list[int | None]:
    if steps is None:
        return [None] * len(shares)
    first = [round(steps * s) for s in shares[:-1]]
    return [*first, steps - sum(first)]


def on_chunk(base: TrainConfig, data_dir: str) -> TrainConfig:
    """``base`` on the chunk's dataset (its test split evaluated)."""
    return replace(base, data=replace(base.data, paths=[data_dir], test_paths=[]))


def stage_config(
    base: TrainConfig,
    config: TTTConfig,
    data_dir: str,
    batch: int,
    init_file: str,
    stage_dir: str,
    frozen: bool,
    steps: int | None,
    minutes: float | None,
) -> TrainConfig:
    """One fine-tuning stage's run: ``base`` on the chunk's dataset from ``init_file``'s
    weights, the trunk frozen or not, stopped by the budget; no evaluation, one checkpoint."""
    stage = replace(
        on_chunk(base, data_dir),
        global_batch_size=batch,
        init_from=init_file,
        run_name=os.path.basename(stage_dir),
        checkpoint_path=stage_dir,
        resume="none",
        freeze_weights=frozen,
        puzzle_emb_lr=config.embedding_lr,
        lr_warmup_steps=config.warmup_steps,
        epochs=FOREVER_EPOCHS,
        evaluate=False,
        max_checkpoints=1,
        max_steps=steps,
        max_minutes=minutes,
    )
    if not frozen:
        stage.optimizer = replace(base.optimizer, lr=config.trunk_lr)
    try:
        stage.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return stage


def adapt_chunk(setup: Setup, tasks: dict[str, Task], chunk_dir: str, minutes: float | None, env: DistEnv) -> dict:
    """Build, fine-tune and evaluate one chunk; returns its timings, metrics and submission."""
    config = setup.config
    started = time.perf_counter()
    shutil.rmtree(chunk_dir, ignore_errors=True)  # a rerun into the same output folder starts afresh
    os.makedirs(chunk_dir)
    data_dir = build_chunk_dataset(setup, tasks, chunk_dir)
    meta = PuzzleDatasetMetadata.load(os.path.join(data_dir, "train", "dataset.json"))
    examples = int(np.load(os.path.join(data_dir, "train", "all__puzzle_indices.npy"))[-1])
    batch = config.global_batch_size or min(setup.base.global_batch_size, examples)
    if batch > examples:
        raise ConfigError(
            f"ttt.global_batch_size={batch} exceeds the {examples} demonstration examples of "
            f"{chunk_dir} (lower it or raise ttt.chunk_size / ttt.num_aug)"
        )
    weights = setup.weights
    key = puzzle_table_key(setup.base.arch)
    if key is not None and key in weights:
        weights = extend_puzzle_embeddings(weights, meta.num_puzzle_identifiers, config.new_rows, key=key)
    init_file = os.path.join(chunk_dir, "init.pt")
    with open(os.path.join(data_dir, "identifiers.json")) as f:  # rows named: init_from keeps them all
        torch.save({"model": weights, "identifiers": json.load(f)}, init_file)
    timings = {"build_seconds": time.perf_counter() - started}

    weights_file, final, steps_done = init_file, None, []
    plan = stages(config)
    if config.steps != 0:
        for (name, frozen, share), steps in zip(plan, split_steps(config.steps, [s for _, _, s in plan])):
            if steps == 0:
                continue
            stage_dir = os.path.join(chunk_dir, name)
            stage = stage_config(
                setup.base,
                config,
                data_dir,
                batch,
                weights_file,
                stage_dir,
                frozen,
                steps,
                None if minutes is None else minutes * share,
            )
            summary = loop.train(stage, env)
            steps_done.append(summary["step"])
            final = ckpt.newest_checkpoint(stage_dir, purpose="the next ttt stage")
            assert final is not None  # the stage just trained there
            weights_file = os.path.join(final, "state.pt")
    timings["train_seconds"] = time.perf_counter() - started - timings["build_seconds"]

    eval_dir = os.path.join(chunk_dir, "eval")
    eval_config = on_chunk(setup.base, data_dir)
    eval_config.eval = replace(eval_config.eval, output_dir=eval_dir, limit=None)
    if final is not None:
        state = ckpt.load_shared(final)
        checkpoint = Checkpoint(final, state["model"], state)
    else:
        checkpoint = Checkpoint(init_file, weights)
    result = evaluate_checkpoint(eval_config, checkpoint, env)
    for line in result.summary:
        log.info(line)
    if not config.keep_checkpoints:
        os.remove(init_file)
        for name, _, _ in plan:
            shutil.rmtree(os.path.join(chunk_dir, name), ignore_errors=True)
    timings["seconds"] = time.perf_counter() - started
    timings["eval_seconds"] = timings["seconds"] - timings["build_seconds"] - timings["train_seconds"]
    return {
        "tasks": list(tasks),
        "batch": batch,
        "train_examples": examples,
        "steps": steps_done,
        "final_checkpoint": final if config.keep_checkpoints else None,
        **timings,
        "metrics": result.metrics,
        "submission": result.submission,
    }
