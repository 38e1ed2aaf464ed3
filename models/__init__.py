"""Model registry: one entry per model *family*, keyed by the ``family`` every ``conf/arch``
option names, and one typed schema per family (``<family>_schema`` in Hydra's ConfigStore,
which each option extends). A family's entry is an ``ARCModel`` class whose ``from_config``
picks the variant from the config (recursive: ``core``; sequence: ``variant``), so a new
option or size variant is a yaml file, never a Python edit. Every model implements
models/base.py's interface; docs/extending.md says how to add a family."""

from __future__ import annotations

from typing import Any

from models.base import ARCModel, DataShape
from models.diffusion import DiffusionArchConfig, DiffusionModel
from models.efe import EFEAgent, EFEArchConfig
from models.recursive import ACTModel, RecursiveArchConfig
from models.sequence import SequenceArchConfig, SequenceModel
from models.varc import VARCArchConfig, VARCModel

MODELS: dict[str, type[ARCModel]] = {
    "recursive": ACTModel,  # TRM / HRM / transformer cores with ACT halting (models/recursive.py)
    "diffusion": DiffusionModel,  # discrete diffusion with a size head (models/diffusion.py)
    "efe": EFEAgent,  # active-inference agent with an LM prompt encoder (models/efe.py)
    "sequence": SequenceModel,  # decoder-only / encoder-decoder baselines (models/sequence.py)
    "varc": VARCModel,  # VARC's ViT on its own image canvas (models/varc.py)
}

ARCH_SCHEMAS: dict[str, type] = {
    "recursive_schema": RecursiveArchConfig,
    "diffusion_schema": DiffusionArchConfig,
    "efe_schema": EFEArchConfig,
    "sequence_schema": SequenceArchConfig,
    "varc_schema": VARCArchConfig,
}


def model_class(config: Any) -> type[ARCModel]:
    """The registry entry of ``config.family``."""
    family = getattr(config, "family", None)
    if family not in MODELS:
        raise ValueError(
            f"arch.family={family!r} (arch {getattr(config, 'name', '?')}) is not a registered model "
            f"family: choose from {', '.join(MODELS)}"
        )
    return MODELS[family]


def build_model(config: Any, shape: DataShape) -> ARCModel:
    return model_class(config).from_config(config, shape)


def puzzle_table_key(config: Any) -> str | None:
    """The state-dict key of the puzzle table of models built from ``config`` (None: the
    family has none), known without building one (test-time training reads it from weights)."""
    return model_class(config).puzzle_table_key


def check_canvas_buckets(model: ARCModel, config: Any, canvas_sides: dict[str, int] | None, seq_len: int, data: str) -> None:
    """Refuse, naming the arch and the dataset, a size-bucketed dataset (``canvas_sides``
    in its metadata) for a model that cannot run on canvases smaller than ``seq_len``'s."""
    if not canvas_sides or all(side * side == seq_len for side in canvas_sides.values()):
        return
    reason = model.canvas_bucket_refusal()
    if reason is not None:
        raise ValueError(
            f"arch={getattr(config, 'name', '?')} (family {getattr(config, 'family', '?')}) cannot train or "
            f"predict on the size-bucketed dataset {data} (canvases "
            f"{sorted(set(canvas_sides.values()))}): {reason}. Rebuild it without --canvas-buckets"
        )
