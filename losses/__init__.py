"""Loss registry: one entry per loss *family*, keyed by the ``family`` every ``conf/loss``
option names, and one typed schema per family (``<family>_schema`` in the ConfigStore). An
arch family's schema names the loss family that scores it (``loss_family``); within a
family the option's keys choose the rest (act: ``token_loss``). A loss turns (model output,
batch) into (loss summed over examples, metrics); see models/base.py for the contract."""

from collections.abc import Callable
from typing import Any

from losses.act import ACTLoss, LossConfig
from losses.diffusion import DiffusionLoss, DiffusionLossConfig
from losses.efe import EFELoss, EFELossConfig
from losses.sequence import SequenceCELoss, SequenceLossConfig
from losses.varc import VARCLoss, VARCLossConfig

LOSSES: dict[str, Callable[[Any], Any]] = {
    "act": ACTLoss,  # token cross-entropy (stablemax | softmax) + halting losses: the recursive family
    "diffusion": DiffusionLoss,
    "efe": EFELoss,
    "sequence": SequenceCELoss,
    "varc": VARCLoss,  # per-pixel cross-entropy on VARC's image (models/varc.py)
}

LOSS_SCHEMAS: dict[str, type] = {
    "loss_schema": LossConfig,
    "diffusion_loss_schema": DiffusionLossConfig,
    "efe_loss_schema": EFELossConfig,
    "sequence_loss_schema": SequenceLossConfig,
    "varc_loss_schema": VARCLossConfig,
}


def build_loss(config: Any):
    family = getattr(config, "family", None)
    if family not in LOSSES:
        raise ValueError(
            f"loss.family={family!r} (loss {getattr(config, 'name', '?')}) is not a registered loss "
            f"family: choose from {', '.join(LOSSES)}"
        )
    return LOSSES[family](config)
