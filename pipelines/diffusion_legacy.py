"""The old diffusion pipeline's JSON config, translated once into the pipeline's typed config
(docs/diffusion.md has the key table): ``make_plan`` reads run_full_pipeline.py's CONFIG (a
Hydra experiment name or a JSON file) into Hydra overrides of the backbone run and the
pipeline's keys (``DiffusionOptions``: the size-head run's overrides, the output directory,
the expected canvas), which ``pipelines.diffusion.configure`` composes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.diffusion import DiffusionOptions, PipelineError
from runconfig.groups import CONF_DIR


@dataclass
class Plan:
    source: str  # what CONFIG was, for the log and the evaluation JSON
    overrides: list[str]  # the backbone run and the evaluation
    options: DiffusionOptions = field(default_factory=DiffusionOptions)  # the JSON's output, size_head and max_size


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise PipelineError(f"expected true or false, got {value!r}")
    return value


def _ov(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], list[str]]:
    def make(value: Any) -> list[str]:
        v = convert(value)
        text = (
            "null"
            if v is None
            else str(v).lower()
            if isinstance(v, bool)
            else json.dumps(v)
            if isinstance(v, str)
            else str(v)
        )
        return [f"{key}={text}"]

    return make


# (section, key) -> overrides of the backbone run ("stage": "size_head" -> of the size-head run).
# A few keys are checked rather than mapped (vocab_size, max_size) or accepted as no-ops (save_*).
JSON_KEYS: dict[str, dict[str, tuple[str, Callable[[Any], list[str]]]]] = {
    "model": {
        "d_model": ("main", _ov("arch.hidden_size")),
        "nhead": ("main", _ov("arch.num_heads")),
        "num_layers": ("main", _ov("arch.num_layers")),
        "sc_dropout_prob": ("main", _ov("arch.self_condition", lambda p: float(p) > 0)),
        "noise": ("main", _ov("arch.noise")),
        "vocab_size": ("check", lambda v: []),
        "max_size": ("check", lambda v: []),
    },
    "training": {
        "num_timesteps": ("main", _ov("arch.num_timesteps")),
        "schedule_type": ("main", _ov("arch.schedule")),
        "sampling_steps": ("main", _ov("arch.sampling_steps")),
        "num_samples": ("main", _ov("arch.num_samples")),
        "batch_size": ("main", _ov("global_batch_size")),
        "learning_rate": ("main", _ov("optimizer.lr")),
        "weight_decay": ("main", _ov("optimizer.weight_decay")),
        "lr_warmup_steps": ("main", _ov("lr_warmup_steps")),
        "optimizer_steps": ("main", _ov("max_steps")),
        "num_epochs": ("main", _ov("epochs")),
        "size_weight": ("main", _ov("loss.size_loss_weight")),
        "use_ema": ("main", _ov("ema", _flag)),
        "ema_decay": ("main", _ov("ema_rate")),
        "use_mixed_precision": ("main", _ov("precision", lambda v: "bf16" if _flag(v) else "fp32")),
        "log_every": ("main", _ov("log_interval")),
        "val_every": ("main", _ov("eval_interval")),
        "seed": ("main", _ov("seed")),
    },
    "auxiliary_loss": {
        "include_size_head": ("main", _ov("arch.size_head", lambda v: "joint" if _flag(v) else "separate")),
        "size_head_hidden_dim": ("main", _ov("arch.size_head_hidden")),
        "auxiliary_size_loss_weight": ("main", _ov("loss.size_loss_weight")),
    },
    "size_head": {
        "hidden_dim": ("main", _ov("arch.size_head_hidden")),  # the architecture: both runs
        "mode": ("main", _ov("arch.size_head")),
        "epochs": ("size_head", _ov("epochs")),
        "optimizer_steps": ("size_head", _ov("max_steps")),
        "learning_rate": ("size_head", _ov("optimizer.lr")),
        "batch_size": ("size_head", _ov("global_batch_size")),
    },
    "output": {
        "output_dir": ("output", lambda v: []),
        "use_wandb": ("main", _ov("wandb.mode", lambda v: "online" if _flag(v) else "disabled")),
        "save_best": ("noop", lambda v: []),  # best_model.pt is always written
        "save_final": ("noop", lambda v: []),  # the newest checkpoints are always kept
    },
    "data": {
        "data_dir": (
            "main",
            lambda v: [
                f"data.paths=[{json.dumps(str(v))}]",
                f"data.name={json.dumps(os.path.basename(os.path.normpath(str(v))))}",
            ],
        ),
    },
}
JSON_TOP_KEYS = {"model_version", "tag", "experiment", "overrides", *JSON_KEYS}
OLD_VOCAB_SIZES = (11, 12)  # old pipeline: 10 colours + PAD; ARCForge: PAD, EOS, 10 colours


def plan_from_json(path: str, extra: list[str]) -> Plan:
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: cannot read the JSON config: {e}") from e
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: the JSON config must be an object with sections {sorted(JSON_KEYS)}")
    unknown = sorted(set(raw) - JSON_TOP_KEYS)
    if unknown:
        raise PipelineError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(JSON_TOP_KEYS))})")
    for section in ("model", "training", "output"):
        if not isinstance(raw.get(section), dict):
            raise PipelineError(f"{path}: the section {section!r} is required (an object)")
    base = [f"experiment={raw['experiment']}"] if raw.get("experiment") else ["arch=diffusion", "loss=diffusion"]
    main_ov = list(base)
    head_ov: list[str] = []
    plan = Plan(source=f"JSON config {path}", overrides=main_ov, options=DiffusionOptions(size_head_overrides=head_ov))
    for section, table in JSON_KEYS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise PipelineError(f"{path}: {section!r} must be an object")
        for key, value in values.items():
            if key not in table:
                raise PipelineError(
                    f"{path}: unknown key {section}.{key} (ARCForge maps {', '.join(sorted(table))}; see docs/diffusion.md)"
                )
            stage, make = table[key]
            try:
                made = make(value)
            except (PipelineError, TypeError, ValueError) as e:
                raise PipelineError(f"{path}: {section}.{key}: {e}") from e
            (head_ov if stage == "size_head" else main_ov).extend(made)
    model, output = raw["model"], raw["output"]
    if "vocab_size" in model and model["vocab_size"] not in OLD_VOCAB_SIZES:
        raise PipelineError(
            f"{path}: model.vocab_size={model['vocab_size']}: the vocabulary is the dataset's (accepted: {OLD_VOCAB_SIZES})"
        )
    plan.options.expect_canvas = model.get("max_size")
    if not output.get("output_dir"):
        raise PipelineError(f"{path}: output.output_dir is required")
    plan.options.output_dir = str(output["output_dir"])
    name = "-".join(str(raw[k]) for k in ("model_version", "tag") if raw.get(k))
    if name:
        main_ov.append(f"run_name={json.dumps(name)}")
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise PipelineError(f"{path}: overrides must be a list of Hydra overrides (strings)")
    main_ov.extend(overrides)
    main_ov.extend(extra)
    return plan


def make_plan(config: str, extra: list[str]) -> Plan:
    if config.endswith(".json"):
        return plan_from_json(config, extra)
    if not os.path.isfile(os.path.join(CONF_DIR, "experiment", f"{config}.yaml")):
        raise PipelineError(
            f"CONFIG={config!r} is neither a JSON file nor a Hydra experiment (conf/experiment/{config}.yaml)"
        )
    return Plan(source=f"experiment {config}", overrides=[f"experiment={config}", *extra])
