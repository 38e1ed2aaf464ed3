"""The learning-rate schedule every optimizer follows, as a multiple of its configured lr."""

from __future__ import annotations

import math

from utils.config.schema import TrainConfig


def lr_factor(config: TrainConfig, step: int, total_steps: int) -> float:
    """The scheduled lr at ``step`` as a multiple of the configured lr. ``cosine``: linear
    warm-up, then cosine down to ``lr_min_ratio`` (TRM) over ``total_steps``, or
    ``lr_schedule_steps`` when set, then flat. ``cosine_restarts``: warm-up, then
    cosine cycles of ``restarts.T_0`` epochs, each ``T_mult`` times longer than the last,
    down to ``restarts.eta_min_ratio``.

    ``step`` counts optimizer steps from 1, as TRM (which increments its step before
    computing the lr): the first update already moves the weights by ``1 / warmup``."""
    warmup = config.lr_warmup_steps
    if step < warmup:
        return step / warmup
    if config.lr_schedule == "cosine":
        span = config.lr_schedule_steps or total_steps
        progress = min(1.0, (step - warmup) / max(1, span - warmup))
        ratio = config.lr_min_ratio
        return ratio + max(0.0, (1 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    r = config.restarts
    t, period = (step - warmup) * config.epochs / max(1, total_steps), r.T_0  # t in epochs
    while t >= period:
        t, period = t - period, period * r.T_mult
    floor = r.eta_min_ratio  # a ratio, so each optimizer bottoms out at its own lr times it
    return floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * t / period))
