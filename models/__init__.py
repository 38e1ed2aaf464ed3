"""Model registry: one entry per ``conf/arch/<name>.yaml`` option, and one typed schema per
model family (``<family>_schema`` in Hydra's ConfigStore, which each option extends).
Every model implements models/base.py's interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.base import ARCModel
from models.diffusion import DiffusionArchConfig, DiffusionModel
from models.efe import EFEAgent, EFEArchConfig
from models.recursive import ACTModel, DataShape, HRMCore, RecursiveArchConfig, TransformerCore, TRMCore
from models.sequence import DecoderOnly, EncoderDecoder, SequenceArchConfig


def _recursive(core: type) -> Callable[[RecursiveArchConfig, DataShape], ACTModel]:
    return lambda config, shape: ACTModel(core(config, shape))


MODELS: dict[str, Callable[[Any, DataShape], ARCModel]] = {
    # recursive, with ACT halting (models/recursive.py)
    "trm": _recursive(TRMCore),
    "trm_mlp": _recursive(TRMCore),
    "trm_tiny": _recursive(TRMCore),
    "hrm": _recursive(HRMCore),
    "transformer": _recursive(TransformerCore),
    # discrete diffusion with a size head (models/diffusion.py)
    "diffusion": DiffusionModel,
    "diffusion_tiny": DiffusionModel,
    # active-inference agent with an LM prompt encoder (models/efe.py)
    "efe_agent": EFEAgent,
    "efe_tiny": EFEAgent,
    # sequence baselines (models/sequence.py)
    "decoder_only": DecoderOnly,
    "encoder_decoder": EncoderDecoder,
    "champion": EncoderDecoder,
}

ARCH_SCHEMAS: dict[str, type] = {
    "recursive_schema": RecursiveArchConfig,
    "diffusion_schema": DiffusionArchConfig,
    "efe_schema": EFEArchConfig,
    "sequence_schema": SequenceArchConfig,
}


def build_model(config: Any, shape: DataShape) -> ARCModel:
    if config.name not in MODELS:
        raise ValueError(f"arch.name={config.name!r} is not a registered model: choose from {sorted(MODELS)}")
    return MODELS[config.name](config, shape)
