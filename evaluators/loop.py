"""The evaluation loop of pretrain.py's periodic evaluation, evaluate.py and every pipeline: ``model.predict`` on
every test example (a recursive model runs ``halt_max_steps`` supervision steps; a diffusion
or sequence model samples), the loss's metrics over the test split and, with an
``ARCVoter``, votes over the candidates of all augmented views of each test input.

``all/*`` figures are per augmented test example, without voting (``all/exact_accuracy``:
the fraction of (variant, test input) examples whose whole output grid is right).
``ARC/*`` figures are the voter's: ``ARC/pass@k`` is the ARC Prize convention (a task scores
the fraction of its test inputs whose answer is among the top k voted grids; averaged over
tasks), with ``ARC/kaggle_pass@k`` (per test input) and ``ARC/strict_pass@k`` beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from dataset.common import IGNORE_LABEL_ID
from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import DEFAULT_PASS_KS, ARCVoter
from models.base import ARCModel
from utils.distributed import DistEnv, all_reduce_sum


def first_tasks_rows(dataset: PuzzleDataset, num_tasks: int) -> int:
    """Rows of the test split's first ``num_tasks`` groups (tasks): a prefix of the split."""
    index = dataset.index_arrays()
    groups = index["group_indices"]
    return int(index["puzzle_indices"][groups[min(num_tasks, len(groups) - 1)]])


@torch.no_grad()
def evaluate_examples(
    model: ARCModel,
    loss_fn,
    loader: PuzzleDataset,
    env: DistEnv,
    voter: ARCVoter | None = None,
    pass_ks=DEFAULT_PASS_KS,
    ranking: str = "vote",
    task_limit: int | None = None,
    progress: bool = False,
    demos: Demonstrations | None = None,
) -> tuple[dict[str, float], dict | None]:
    """Returns (metrics, submission); the submission (and the ARC/* metrics) only with a
    voter, and only on rank 0. ``task_limit``: evaluate the first N test tasks only.
    ``demos``: demonstration pairs for an in-context model (``model.num_demos > 0``)."""
    max_rows = first_tasks_rows(loader, task_limit) if task_limit is not None else None
    was_training = model.training
    model.eval()
    keys: list[str] | None = None
    totals: torch.Tensor | None = None
    starts = loader.test_batch_starts()  # each batch's first row: the same on every rank
    total = sum(1 for s in starts if max_rows is None or s < max_rows)
    bar = tqdm(loader, desc="evaluate", unit="batch", total=total, disable=not (progress and env.is_main))
    for b, (_set_name, batch, _n) in enumerate(bar):
        if max_rows is not None and starts[b] >= max_rows:
            break
        example_indices = batch.pop("example_indices", None)
        if max_rows is not None and example_indices is not None:
            beyond = example_indices >= max_rows
            batch["labels"][beyond] = IGNORE_LABEL_ID
            example_indices = torch.where(beyond, -1, example_indices)
        if demos is not None:
            batch = demos.attach(batch)
        batch = {k: v.to(env.device) for k, v in batch.items()}
        output, data, predictions = model.predict(batch)
        _, metrics = loss_fn(output, data)
        if keys is None or totals is None:  # the first batch sets both
            keys = sorted(metrics)
            totals = torch.zeros(len(keys), dtype=torch.float64, device=env.device)
        totals += torch.stack([metrics[k].to(torch.float64) for k in keys])
        if voter is not None and example_indices is not None:
            n = predictions.tokens.shape[1]  # candidates per example: each one a vote
            voter.add(
                example_indices.numpy().repeat(n),
                predictions.tokens.flatten(0, 1).to(torch.uint8).cpu().numpy(),
                predictions.scores.flatten().float().cpu().numpy(),
            )
    bar.close()
    model.train(was_training)
    result: dict[str, float] = {}
    if keys is not None and totals is not None:
        totals = all_reduce_sum(totals, env)
        count = max(float(totals[keys.index("count")]), 1.0)
        result = {f"all/{k}": float(v) / (count if k != "count" else 1.0) for k, v in zip(keys, totals.tolist())}
    if voter is None:
        return result, None
    if env.distributed:
        states: list[Any] = [None] * env.world_size  # filled on rank 0 only
        dist.gather_object(voter.state(), states if env.is_main else None, dst=0)
        if not env.is_main:
            voter.reset()  # its votes now live on rank 0
            return result, None
        voter.merge(states[1:])
    arc_metrics, submission = voter.finalize(pass_ks, ranking, task_limit)
    result.update({k: float(v) for k, v in arc_metrics.items() if isinstance(v, (int, float, np.number))})
    return result, submission
