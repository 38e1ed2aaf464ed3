"""Model registry: one entry per ``conf/arch/<name>.yaml`` option."""

from __future__ import annotations

from models.recursive import ACTModel, DataShape, HRMCore, RecursiveArchConfig, RecursiveCore, TransformerCore, TRMCore

MODELS: dict[str, type[RecursiveCore]] = {
    "trm": TRMCore,
    "trm_mlp": TRMCore,
    "trm_tiny": TRMCore,
    "hrm": HRMCore,
    "transformer": TransformerCore,
}


def build_model(config: RecursiveArchConfig, shape: DataShape) -> ACTModel:
    if config.name not in MODELS:
        raise ValueError(f"arch.name={config.name!r} is not a registered model: choose from {sorted(MODELS)}")
    return ACTModel(MODELS[config.name](config, shape))
