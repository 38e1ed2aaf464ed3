"""Model registry: one entry per ``conf/arch/<name>.yaml`` option, and one typed schema per
model family (``<family>_schema`` in Hydra's ConfigStore, which each option extends)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.base import ARCModel
from models.recursive import ACTModel, DataShape, HRMCore, RecursiveArchConfig, TransformerCore, TRMCore


def _recursive(core: type) -> Callable[[RecursiveArchConfig, DataShape], ACTModel]:
    return lambda config, shape: ACTModel(core(config, shape))


MODELS: dict[str, Callable[[Any, DataShape], ARCModel]] = {
    "trm": _recursive(TRMCore),
    "trm_mlp": _recursive(TRMCore),
    "trm_tiny": _recursive(TRMCore),
    "hrm": _recursive(HRMCore),
    "transformer": _recursive(TransformerCore),
}

ARCH_SCHEMAS: dict[str, type] = {
    "recursive_schema": RecursiveArchConfig,
}


def build_model(config: Any, shape: DataShape) -> ARCModel:
    if config.name not in MODELS:
        raise ValueError(f"arch.name={config.name!r} is not a registered model: choose from {sorted(MODELS)}")
    return MODELS[config.name](config, shape)
