"""Composing run configs and tiny datasets for the training tests."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from conftest import ROOT, learning_seed, use_test_threads, write_folder_source

from dataset.build_arc_dataset import main as build_main
from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.loop import evaluate_examples
from losses import build_loss
from models import build_model
from models.base import DataShape
from runconfig.compose import compose_config  # noqa: F401  (re-exported for the tests)
from runconfig.groups import CONF_DIR  # noqa: F401
from training import loop
from utils import checkpoint as ckpt
from utils.config.schema import TrainConfig  # noqa: F401
from utils.distributed import DistEnv

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
# Memorising a tiny set with tiny_overrides: evaluation runs halt_max_steps supervision steps;
# with 2 the tiny model is trained at every step it is evaluated at (with more, early-halting
# examples never train the later ones). At lr 1e-3 it gets all 15-18 examples of
# build_tiny_dataset(side=2) right in 150-250 steps (measured over seeds, kernels and thread
# counts); at 3e-3 its accuracy keeps swinging between 0.3 and 1. memorise() stops at the
# first chunk that is right everywhere; the cap is 4-6x what that takes.
MEMORISE = ["optimizer.lr=1e-3", "arch.halt_max_steps=2", "eval_interval=1000000"]
MEMORISE_CHUNK, MEMORISE_CAP = 50, 1000
# The schedule's length for runs cut by max_steps: with the default lr_min_ratio (1.0) the lr
# is constant after warm-up, so where a run stops does not change its steps before.
FOREVER_EPOCHS = 10**6


def flip_tasks(
    root: Path, n_train: int = 3, n_eval: int = 1, side: int = 3, seed: int = 0, prefix: str = "", memorisable: bool = False
) -> Path:
    """Tasks of one rule (mirror left-right) on small random grids. ``memorisable``: each
    task's test pair repeats its first demonstration pair, so memorising the training split
    solves the test split."""
    rng = np.random.default_rng(seed)

    def task():
        pairs = []
        for _ in range(4):
            g = rng.integers(0, 10, size=(side, side))
            pairs.append({"input": g.tolist(), "output": g[:, ::-1].tolist()})
        return {"train": pairs[:3], "test": pairs[:1] if memorisable else pairs[3:]}

    return write_folder_source(
        root,
        {
            "training": {f"{prefix}tr{i}": task() for i in range(n_train)},
            "evaluation": {f"{prefix}ev{i}": task() for i in range(n_eval)},
        },
    )


def build_tiny_dataset(tmp: Path, num_aug: int = 0, canvas: int = 4, **task_kwargs) -> Path:
    src = flip_tasks(tmp / "src", **task_kwargs)
    out = tmp / f"ds-aug{num_aug}-{task_kwargs.get('prefix', '')}"
    code = build_main(
        [
            "--input-file-prefix",
            str(src),
            "--output-dir",
            str(out),
            "--subsets",
            "training",
            "evaluation",
            "--test-set-name",
            "evaluation",
            "--num-aug",
            str(num_aug),
            "--max-grid-size",
            str(canvas),
        ]
    )
    assert code == 0
    use_test_threads()  # numba's first parallel call (in the builder) may reset torch's thread count
    return out


def tiny_overrides(data: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        "arch=trm_tiny",
        f"data.paths=[{data}]",
        "data.name=tiny",
        "global_batch_size=8",
        "lr_warmup_steps=5",
        "optimizer.lr=1e-3",
        f"checkpoint_path={checkpoint}",
        "progress_bar=false",
        "log_interval=1",
        "wandb.mode=disabled",
        *extra,
    ]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def train_until(
    overrides: list[str],
    measure: Callable[[dict, TrainConfig], float],
    target: float,
    chunk: int,
    cap: int,
    mode: str = "max",
    env: DistEnv = CPU,
) -> tuple[dict, TrainConfig, list[tuple[int, float]]]:
    """Train the run ``overrides`` describe (``checkpoint_path`` included) ``chunk`` steps at a
    time until ``measure(summary, config)`` reaches ``target`` (``mode`` max: >=, min: <=) or
    ``cap`` steps have run. Each chunk resumes the last (resume=auto, max_steps) as an
    interrupted run (a recursive model's continues step for step: tests/test_training.py),
    and the schedule is FOREVER_EPOCHS long, so the lr does not depend on the cap: a
    learning test asserts the target was reached, the cap being a margin over the steps that
    takes. Returns the last chunk's (summary, config) and the (step, value) of every chunk."""
    history: list[tuple[int, float]] = []
    step = 0
    while step < cap:
        step = min(step + chunk, cap)
        config = compose_config([*overrides, f"epochs={FOREVER_EPOCHS}", f"max_steps={step}", "resume=auto"])
        summary = loop.train(config, env)
        value = float(measure(summary, config))
        history.append((summary["step"], value))
        if (value >= target if mode == "max" else value <= target) or summary["step"] < step:
            break
    return summary, config, history


def load_latest(config: TrainConfig, data: Path, batch_size: int = 8):
    """The model of the newest checkpoint under ``config.checkpoint_path``."""
    state = ckpt.load_shared(ckpt.list_checkpoints(config.checkpoint_path)[-1][1])
    meta = PuzzleDataset([str(data)], "train", batch_size).metadata
    model = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, batch_size))
    model.load_state_dict(state["model"])
    return model, state


def split_metrics(config: TrainConfig, data: Path, split: str = "train") -> dict[str, float]:
    """Per-example metrics (``all/*``, no voting) of the newest checkpoint on a split of ``data``."""
    model, _ = load_latest(config, data)
    demos = Demonstrations([str(data)], model.num_demos) if model.num_demos else None
    metrics, _ = evaluate_examples(
        model, build_loss(config.loss), PuzzleDataset([str(data)], split, 8, test_mode=True), CPU, demos=demos
    )
    return metrics


def seeded(*overrides: str) -> list[str]:
    """``overrides`` with the learning tests' seed (ARCFORGE_TEST_SEED)."""
    return [*overrides, f"seed={learning_seed()}"]


def memorise(data: Path, checkpoint: Path, *extra: str) -> tuple[dict, TrainConfig, list[tuple[int, float]]]:
    """train_until the tiny TRM gets every example of ``data``'s train split exactly right."""
    return train_until(
        seeded(*tiny_overrides(data, checkpoint, *MEMORISE, *extra)),
        lambda _summary, config: split_metrics(config, data)["all/exact_accuracy"],
        target=1.0,
        chunk=MEMORISE_CHUNK,
        cap=MEMORISE_CAP,
    )


def run_script(
    script: str, args: list[str], file_size_limit: int | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` in the repository root (one thread, wandb off), its output
    captured. ``file_size_limit``: the bytes any file it writes may reach (RLIMIT_FSIZE, what
    ``ulimit -f`` sets); Python ignores SIGXFSZ, so a write past it fails with EFBIG, as on a
    full disk."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit_file_size if file_size_limit is not None else None,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The ``error:`` lines a script printed (an entry point ends a refused run with one)."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]
