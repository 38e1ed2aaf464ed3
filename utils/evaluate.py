"""Evaluation shared by pretrain.py's periodic eval (and evaluate.py, issue 4):
run every test example for ``halt_max_steps`` supervision steps and report the loss
head's metrics over the test split.

The figures here are per augmented test example, without voting: ``eval/exact_accuracy``
is the fraction of (variant, test input) examples whose whole output grid is right.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from losses.act import ACTLoss
from models.recursive import ACTModel
from utils.distributed import DistEnv, all_reduce_sum


@torch.no_grad()
def evaluate_examples(model: ACTModel, loss_fn: ACTLoss, loader: Iterable, env: DistEnv) -> dict[str, float]:
    was_training = model.training
    model.eval()
    keys: list[str] | None = None
    totals: torch.Tensor | None = None
    for _set_name, batch, _n in loader:
        batch = {k: v.to(env.device) for k, v in batch.items() if k != "example_indices"}
        carry = model.initial_carry(batch)
        for _ in range(model.config.halt_max_steps):
            carry, output = model(carry, batch)
        _, metrics = loss_fn(output, carry.current_data)
        if keys is None:
            keys = sorted(metrics)
            totals = torch.zeros(len(keys), dtype=torch.float64, device=env.device)
        totals += torch.stack([metrics[k].to(torch.float64) for k in keys])
    model.train(was_training)
    if keys is None:
        return {}
    totals = all_reduce_sum(totals, env)
    count = max(float(totals[keys.index("count")]), 1.0)
    result = {f"eval/{k}": float(v) / (count if k != "count" else 1.0) for k, v in zip(keys, totals.tolist())}
    return result
