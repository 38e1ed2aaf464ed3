"""Evaluation and rank start-up start no numba thread pool, and the builder's parallel kernel
takes only the rank's share of the cores (an idle pool in each of 2 torchrun ranks made
evaluation 7x slower than 1 process on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

INVERT_A_BATCH = """
import numba, numpy as np
from dataset.augment import invert_predictions
from utils.distributed import init_distributed
init_distributed("cpu")  # a rank's start-up starts no pool either
tokens = np.zeros((4, 9), np.uint8)
tokens[:, 0] = 5  # one coloured cell in each prediction
grids, heights, widths = invert_predictions(tokens, np.zeros(4, np.int64), np.tile(np.arange(10, dtype=np.uint8), (4, 1)), 3)
assert heights.tolist() == [1, 1, 1, 1], heights
try:
    numba.threading_layer()
    print("thread pool started")
except ValueError:  # numba: no parallel region has run in this process
    print("no thread pool")
"""


def python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_voter_kernel_starts_no_thread_pool():
    assert python(INVERT_A_BATCH) == "no thread pool"


def test_a_rank_takes_its_share_of_the_cores_for_numba():
    code = (
        "import os, numba; from dataset.augment import limit_parallel_threads; limit_parallel_threads(); "
        "print(len(os.sched_getaffinity(0)), numba.get_num_threads())"
    )
    cores, threads = map(int, python(code, LOCAL_WORLD_SIZE="2", NUMBA_NUM_THREADS="8").split())
    assert threads == max(1, cores // 2)
    cores, threads = map(int, python(code, NUMBA_NUM_THREADS="8").split())  # one process: every core it may use
    assert threads == min(cores, 8)
