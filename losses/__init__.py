"""Loss registry: one entry per ``conf/loss/<name>.yaml`` option, and one typed schema per
loss family (``<family>_schema`` in the ConfigStore). A loss turns (model output, batch)
into (loss summed over examples, metrics); see models/base.py for the contract."""

from collections.abc import Callable
from typing import Any

from losses.act import ACTLoss, LossConfig
from losses.diffusion import DiffusionLoss, DiffusionLossConfig
from losses.efe import EFELoss, EFELossConfig
from losses.sequence import SequenceCELoss, SequenceLossConfig

LOSSES: dict[str, Callable[[Any], Any]] = {
    "stablemax": ACTLoss,
    "softmax": ACTLoss,
    "diffusion": DiffusionLoss,
    "efe": EFELoss,
    "seq_ce": SequenceCELoss,
}

LOSS_SCHEMAS: dict[str, type] = {
    "loss_schema": LossConfig,
    "diffusion_loss_schema": DiffusionLossConfig,
    "efe_loss_schema": EFELossConfig,
    "sequence_loss_schema": SequenceLossConfig,
}


def build_loss(config: Any):
    if config.name not in LOSSES:
        raise ValueError(f"loss.name={config.name!r}: choose from {sorted(LOSSES)}")
    return LOSSES[config.name](config)
