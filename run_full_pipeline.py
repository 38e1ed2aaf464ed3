"""The diffusion pipeline: backbone training -> size-head training -> evaluation.

    python run_full_pipeline.py diffusion_cpu                         # conf/experiment/diffusion_cpu.yaml
    python run_full_pipeline.py diffusion_cpu epochs=5 --eval-limit 20  # Hydra overrides after CONFIG
    python run_full_pipeline.py my_config.json --skip-training        # an old-pipeline JSON config
    python run_full_pipeline.py diffusion_cpu --size-head-override epochs=3   # a key for the size-head stage only

Steps (each prints what it does; one that fails says why, and the steps that need its
output do not run; the exit status is then 1):

0. ``training_noise_visualization.png``: training grids at several noise levels and alpha_bar(t).
1. Backbone: ``pretrain.train`` (checkpoints in ``<output>/backbone``) -> ``best_model.pt``
   (weights of the best-scored checkpoint with ``callbacks.keep_best``, else the newest; EMA
   weights when ``ema=true``).
2. Size head: ``pretrain.train`` with ``arch.train_part=size_head`` and ``init_from`` the
   backbone (only the head trains; checkpoints in ``<output>/size_head``, replaced each run)
   -> ``best_size_head.pt`` (the head's weights).
3. Evaluation: ``evaluate.evaluate`` on the first ``--eval-limit`` test tasks ->
   ``evaluation_<timestamp>.json`` (pass@k with the split, scoring convention, views and
   per-task results) and ``evaluation_<timestamp>/`` (metrics.json, submission.json, report.png).

``--skip-*`` uses the artifact already in the output directory (and says so), or fails
when it is missing. The output directory: ``--output-dir``, else the JSON's
``output.output_dir``, else ``checkpoint_path``, else ``checkpoints/<project_name>/<run_name>``
(``run_name`` defaulting to the experiment's name). The JSON keys and their mapping onto
ARCForge's config are in docs/diffusion.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dataset.common import IGNORE_LABEL_ID, PuzzleDatasetMetadata
from models.convert import apply_ema
from utils import checkpoint as ckpt
from utils.config import CONF_DIR, TrainConfig, compose_config
from utils.distributed import DistEnv, barrier, cleanup_distributed, init_distributed
from utils.io import write_json_atomic

BEST_MODEL = "best_model.pt"
BEST_SIZE_HEAD = "best_size_head.pt"
NOISE_FIGURE = "training_noise_visualization.png"
SIZE_HEAD_PREFIX = "size_head."
SCORING = ("ARC Prize pass@k: the votes over all augmented views (x samples) of a test input rank its distinct "
           "grids; a task scores the fraction of its test inputs whose true grid is among the top k, averaged "
           "over tasks (ARC/kaggle_pass@k: per test input; ARC/strict_pass@k: tasks with every input solved)")


class PipelineError(Exception):
    """A step cannot run or failed; the message says why."""


# ----------------------------------------------------------------------------------------
# Configuration: a Hydra experiment, or an old-pipeline JSON file


@dataclass
class Plan:
    source: str  # what CONFIG was, for the printout
    overrides: list[str]  # the backbone run and the evaluation
    size_head_overrides: list[str] = field(default_factory=list)  # the size-head run only (after the above)
    output_dir: str | None = None
    expect_canvas: int | None = None  # the JSON's model.max_size, checked against the dataset


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise PipelineError(f"expected true or false, got {value!r}")
    return value


def _ov(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], list[str]]:
    def make(value: Any) -> list[str]:
        v = convert(value)
        text = "null" if v is None else str(v).lower() if isinstance(v, bool) else json.dumps(v) \
            if isinstance(v, str) else str(v)
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
        "data_dir": ("main", lambda v: [f"data.paths=[{json.dumps(str(v))}]",
                                        f"data.name={json.dumps(os.path.basename(os.path.normpath(str(v))))}"]),
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
    main_ov, head_ov = list(base), []
    plan = Plan(source=f"JSON config {path}", overrides=main_ov, size_head_overrides=head_ov)
    for section, table in JSON_KEYS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise PipelineError(f"{path}: {section!r} must be an object")
        for key, value in values.items():
            if key not in table:
                raise PipelineError(f"{path}: unknown key {section}.{key} (ARCForge maps {', '.join(sorted(table))}; "
                                    f"see docs/diffusion.md)")
            stage, make = table[key]
            try:
                made = make(value)
            except (PipelineError, TypeError, ValueError) as e:
                raise PipelineError(f"{path}: {section}.{key}: {e}") from e
            (head_ov if stage == "size_head" else main_ov).extend(made)
    model, output = raw["model"], raw["output"]
    if "vocab_size" in model and model["vocab_size"] not in OLD_VOCAB_SIZES:
        raise PipelineError(f"{path}: model.vocab_size={model['vocab_size']}: the vocabulary is the dataset's "
                            f"(accepted: {OLD_VOCAB_SIZES})")
    plan.expect_canvas = model.get("max_size")
    if not output.get("output_dir"):
        raise PipelineError(f"{path}: output.output_dir is required")
    plan.output_dir = str(output["output_dir"])
    name = "-".join(str(raw[k]) for k in ("model_version", "tag") if raw.get(k))
    if name:
        main_ov.append(f"run_name={json.dumps(name)}")
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise PipelineError(f"{path}: overrides must be a list of Hydra overrides (strings)")
    main_ov.extend(overrides)
    main_ov.extend(extra)
    return plan


def make_plan(config: str, extra: list[str], size_head_extra: list[str]) -> Plan:
    if config.endswith(".json"):
        plan = plan_from_json(config, extra)
    else:
        if not os.path.isfile(os.path.join(CONF_DIR, "experiment", f"{config}.yaml")):
            raise PipelineError(f"CONFIG={config!r} is neither a JSON file nor a Hydra experiment "
                                f"(conf/experiment/{config}.yaml)")
        plan = Plan(source=f"experiment {config}", overrides=[f"experiment={config}", *extra])
    plan.size_head_overrides.extend(size_head_extra)
    return plan


def resolve_output_dir(plan: Plan, config: TrainConfig, arg: str | None, experiment: str) -> str:
    if arg:
        return arg
    if plan.output_dir:
        return plan.output_dir
    if config.checkpoint_path:
        return config.checkpoint_path
    return os.path.join("checkpoints", config.project_name, config.run_name or experiment)


def dataset_canvas(config: TrainConfig) -> int:
    meta = PuzzleDatasetMetadata.load(os.path.join(config.data.paths[0], "train", "dataset.json"))
    return math.isqrt(meta.seq_len)


# ----------------------------------------------------------------------------------------
# Artifacts


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temp file beside ``path``, then os.replace: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def chosen_checkpoint(root: str, config: TrainConfig) -> str:
    """The best-scored checkpoint when the run keeps best ones, else the newest."""
    found = [path for _, path in ckpt.list_checkpoints(root)]
    if not found:
        raise PipelineError(f"the run wrote no checkpoint in {root}")
    scored = [(s, p) for p in found if (s := ckpt.checkpoint_score(p)) is not None]
    if config.callbacks.keep_best and scored:
        best = min(scored, key=lambda sp: sp[0] if config.callbacks.mode == "min" else -sp[0])
        return best[1]
    return found[-1]


def checkpoint_weights(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, shared state) of a checkpoint, with the EMA weights in place when it has them
    (pretrain.py evaluates those)."""
    state = ckpt.load_shared(path)
    return apply_ema(state["model"], state.get("ema")), state


def load_artifact(path: str, key: str) -> dict:
    if not os.path.isfile(path):
        raise PipelineError(f"{path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)[key]


# ----------------------------------------------------------------------------------------
# The noise figure


NOISE_LEVELS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)  # t / num_timesteps
PANEL_INCHES = 1.5
FIGURE_DPI = 100


def render_noise_figure(path: str, config: TrainConfig, num_examples: int = 3, seed: int = 0) -> tuple[int, int]:
    """Training examples (input, then the output canvas noised at several t) and the
    schedule alpha_bar(t) with the empirical fraction of replaced cells at those t.
    Returns the image's (height, width) in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from evaluators.report import ARC_PALETTE
    from models.diffusion import alpha_bar, clean_canvas, corrupt, is_colour

    arch = config.arch
    if not hasattr(arch, "num_timesteps"):
        raise PipelineError(f"arch={arch.name} is not a diffusion model (arch=diffusion or diffusion_tiny)")
    train_dir = os.path.join(config.data.paths[0], "train")
    canvas = dataset_canvas(config)
    labels_all = np.load(os.path.join(train_dir, "all__labels.npy"), mmap_mode="r")
    inputs_all = np.load(os.path.join(train_dir, "all__inputs.npy"), mmap_mode="r")
    rows = min(num_examples, len(labels_all))
    if rows == 0:
        raise PipelineError(f"{train_dir} holds no training example")
    meta = PuzzleDatasetMetadata.load(os.path.join(train_dir, "dataset.json"))
    labels = torch.from_numpy(np.array(labels_all[:rows], dtype=np.int64))
    if meta.ignore_label_id is not None:
        labels = torch.where(labels == meta.ignore_label_id, IGNORE_LABEL_ID, labels)
    inputs = np.array(inputs_all[:rows], dtype=np.int64)
    x0, region = clean_canvas(labels), is_colour(labels)
    mask_id = meta.vocab_size
    T = arch.num_timesteps
    steps = [round(u * T) for u in NOISE_LEVELS]

    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    noised, replaced_rate = [], []
    draws = 256  # the replaced fraction is measured over this many corruptions of the examples
    for t in steps:
        xt, _ = corrupt(x0, region, torch.full((rows,), t), T, arch.schedule, arch.noise, mask_id)
        noised.append(xt)
        many = torch.full((rows * draws,), t)
        _, replaced = corrupt(x0.repeat(draws, 1), region.repeat(draws, 1), many, T, arch.schedule, arch.noise, mask_id)
        replaced_rate.append(float(replaced.sum() / region.sum().clamp_min(1) / draws))
    torch.set_rng_state(generator_state)

    # Token ids -> colours: PAD light grey, EOS white, colours the ARC palette, MASK purple.
    cmap = ListedColormap(["#D9D9D9", "#FFFFFF", *ARC_PALETTE, "#8E44AD"])
    cols = 1 + len(steps)
    size_in = (PANEL_INCHES * cols, PANEL_INCHES * (rows + 1.6))
    fig = Figure(figsize=size_in, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1] * rows + [1.6], hspace=0.45, wspace=0.15,
                            left=0.05, right=0.98, top=0.92, bottom=0.08)
    for r in range(rows):
        panels = [("input", inputs[r])] + [(f"t={t}  ab={float(alpha_bar(torch.tensor(t), T, arch.schedule)):.2f}",
                                            noised[i][r].numpy()) for i, t in enumerate(steps)]
        for c, (title, tokens) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(tokens.reshape(canvas, canvas), cmap=cmap, vmin=0, vmax=mask_id, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
    ax = fig.add_subplot(grid[rows, :])
    t_axis = torch.arange(T + 1)
    ax.plot(t_axis.numpy(), alpha_bar(t_axis, T, arch.schedule).numpy(), label=f"alpha_bar(t), {arch.schedule}")
    ax.plot(steps, [1 - r for r in replaced_rate], "o", label=f"1 - replaced fraction ({draws} noisings of these grids)")
    ax.set_xlabel("t")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    fig.suptitle(f"{arch.name}: {arch.noise} noise, {T} steps ({os.path.basename(config.data.paths[0])} train)",
                 fontsize=9)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=FIGURE_DPI)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return round(size_in[1] * FIGURE_DPI), round(size_in[0] * FIGURE_DPI)


# ----------------------------------------------------------------------------------------
# Steps


@dataclass
class Context:
    plan: Plan
    config: TrainConfig
    out: str
    env: DistEnv
    eval_limit: int


def step_noise_figure(ctx: Context) -> str:
    path = os.path.join(ctx.out, NOISE_FIGURE)
    if not ctx.env.is_main:
        return "drawn by rank 0"
    h, w = render_noise_figure(path, ctx.config)
    return f"wrote {path} ({w}x{h} px)"


def step_backbone(ctx: Context) -> str:
    import pretrain

    root = os.path.join(ctx.out, "backbone")
    config = replace(ctx.config, checkpoint_path=root)
    print(f"checkpoints: {root} (resume={config.resume})")
    summary = pretrain.train(config, ctx.env)
    chosen = chosen_checkpoint(root, config)
    weights, state = checkpoint_weights(chosen)
    path = os.path.join(ctx.out, BEST_MODEL)
    if ctx.env.is_main:
        save_atomic({"model": weights, "config": state["config"], "source": chosen, "step": state["step"]}, path)
    barrier(ctx.env)
    figures = ", ".join(f"{k} {summary[k]:.4f}" for k in ("train/lm_loss", "all/exact_accuracy", "ARC/pass@2")
                        if isinstance(summary.get(k), float))
    return f"step {summary['step']}{': ' + figures if figures else ''}; wrote {path} (from {chosen})"


def step_size_head(ctx: Context) -> str:
    import pretrain

    backbone = os.path.join(ctx.out, BEST_MODEL)
    if not os.path.isfile(backbone):
        raise PipelineError(f"{backbone} does not exist: train the backbone first")
    root = os.path.join(ctx.out, "size_head")
    if os.path.isdir(root) and ctx.env.is_main:
        print(f"replacing the previous size-head run in {root}")
        shutil.rmtree(root)
    barrier(ctx.env)
    overrides = [*ctx.plan.overrides, "arch.train_part=size_head", f"init_from={json.dumps(backbone)}",
                 f"checkpoint_path={json.dumps(root)}", "resume=none",
                 f"run_name={json.dumps((ctx.config.run_name or 'diffusion') + '-size_head')}",
                 *ctx.plan.size_head_overrides]
    config = compose_config(overrides)
    summary = pretrain.train(config, ctx.env)
    chosen = chosen_checkpoint(root, config)
    weights, state = checkpoint_weights(chosen)
    head = {k[len(SIZE_HEAD_PREFIX):]: v for k, v in weights.items() if k.startswith(SIZE_HEAD_PREFIX)}
    path = os.path.join(ctx.out, BEST_SIZE_HEAD)
    if ctx.env.is_main:
        save_atomic({"size_head": head, "config": state["config"], "source": chosen, "backbone": backbone,
                     "step": state["step"]}, path)
    barrier(ctx.env)
    figures = ", ".join(f"{k} {summary[k]:.4f}" for k in ("train/size_accuracy", "all/size_accuracy")
                        if isinstance(summary.get(k), float))
    return f"step {summary['step']}{': ' + figures if figures else ''}; wrote {path} (from {chosen})"


def evaluation_weights(ctx: Context) -> tuple[dict[str, torch.Tensor], str]:
    weights = dict(load_artifact(os.path.join(ctx.out, BEST_MODEL), "model"))
    head_path = os.path.join(ctx.out, BEST_SIZE_HEAD)
    if os.path.isfile(head_path):
        head = load_artifact(head_path, "size_head")
        missing = [k for k in head if SIZE_HEAD_PREFIX + k not in weights]
        if missing:
            raise PipelineError(f"{head_path} does not fit {BEST_MODEL}: unknown keys {missing[:4]}")
        weights.update({SIZE_HEAD_PREFIX + k: v for k, v in head.items()})
        return weights, f"size head from {head_path}"
    if ctx.config.arch.size_head == "separate":
        raise PipelineError(f"{head_path} does not exist, and with arch.size_head=separate the head in "
                            f"{BEST_MODEL} is untrained: run the size-head step")
    return weights, f"no {BEST_SIZE_HEAD}: the size head trained jointly, in {BEST_MODEL}"


def per_task_results(submission: dict, tasks: dict) -> dict[str, dict]:
    out = {}
    for task_id, entries in submission.items():
        tests = tasks[task_id]["test"]
        if not all("output" in pair for pair in tests):
            out[task_id] = {"test_inputs": len(tests), "labeled": False}
            continue
        attempt_1 = [e["attempt_1"] == pair["output"] for e, pair in zip(entries, tests)]
        top_2 = [e["attempt_1"] == pair["output"] or e["attempt_2"] == pair["output"] for e, pair in zip(entries, tests)]
        out[task_id] = {"test_inputs": len(tests), "labeled": True, "solved_attempt_1": attempt_1,
                        "solved_top_2": top_2, "pass@1": float(np.mean(attempt_1)), "pass@2": float(np.mean(top_2))}
    return out


def step_evaluation(ctx: Context) -> str:
    import evaluate

    weights, head_note = evaluation_weights(ctx)
    print(head_note)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"evaluation_{stamp}", 1
    while os.path.exists(os.path.join(ctx.out, name + ".json")):
        name, n = f"evaluation_{stamp}-{n}", n + 1
    folder = os.path.join(ctx.out, name)
    config = compose_config([*ctx.plan.overrides, f"eval.limit={ctx.eval_limit}",
                             f"eval.output_dir={json.dumps(folder)}"])
    model_path = os.path.join(ctx.out, BEST_MODEL)
    metrics = evaluate.evaluate(config, weights, None, model_path, ctx.env)
    if not ctx.env.is_main:
        return "evaluated (rank > 0)"
    test_path = (config.data.test_paths or config.data.paths)[0]
    with open(os.path.join(folder, "submission.json")) as f:
        submission = json.load(f)
    with open(os.path.join(test_path, "test_puzzles.json")) as f:
        tasks = json.load(f)
    metrics = {k: v for k, v in metrics.items() if k != "output_dir"}
    report = {
        "config": ctx.plan.source, "overrides": ctx.plan.overrides, "timestamp": stamp,
        "model": model_path, "size_head": head_note, "dataset": test_path, "split": "test",
        "task_limit": ctx.eval_limit, "scoring": SCORING, "ranking": config.eval.ranking,
        "views_per_input": metrics.get("ARC/views_per_input"),
        "views": "augmented views of each test input in the dataset x arch.num_samples samples each, every one a vote",
        "samples_per_view": config.arch.num_samples,
        "pass@2": metrics.get("ARC/pass@2"), "metrics": metrics,
        "tasks": per_task_results(submission, tasks), "outputs": folder,
    }
    path = os.path.join(ctx.out, name + ".json")
    write_json_atomic(path, report, indent=1)
    pass2 = metrics.get("ARC/pass@2")
    score = f"pass@2 {pass2:.4f} over {metrics.get('ARC/tasks_scored', 0):.0f} tasks" if pass2 is not None \
        else "unlabeled test set"
    return f"{score}; wrote {path} and {folder}/"


# ----------------------------------------------------------------------------------------
# Driver


def run_steps(ctx: Context, skip: dict[str, bool]) -> int:
    """Runs the steps in order; returns the number that failed or could not run."""
    steps: list[tuple[str, str, Callable[[Context], str], str | None, list[str]]] = [
        # key, title, function, artifact a skip relies on, steps whose output it needs
        ("noise", "noise figure", step_noise_figure, None, []),
        ("training", "backbone training", step_backbone, BEST_MODEL, []),
        ("size_head", "size-head training", step_size_head, BEST_SIZE_HEAD, ["training"]),
        ("evaluation", "evaluation", step_evaluation, None, ["training", "size_head"]),
    ]
    failed: dict[str, str] = {}
    for i, (key, title, fn, artifact, needs) in enumerate(steps):
        print(f"\n=== [{i}/{len(steps) - 1}] {title} ===", flush=True)
        if skip.get(key):
            if artifact is None:
                print("skipped (--skip-evaluation)")
                continue
            path = os.path.join(ctx.out, artifact)
            if os.path.isfile(path):
                written = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path)))
                print(f"skipped: using the existing {path} (written {written})")
                backbone = os.path.join(ctx.out, BEST_MODEL)
                if key == "size_head" and os.path.isfile(backbone) and os.path.getmtime(path) < os.path.getmtime(backbone):
                    print(f"warning: {path} was trained on an older {BEST_MODEL}")
            elif key == "size_head" and ctx.config.arch.size_head == "joint":
                print(f"skipped: no {path}; the jointly trained size head in {BEST_MODEL} will be used")
            else:
                failed[key] = f"--skip-{key.replace('_', '-')}: {path} does not exist"
                print(f"FAILED: {failed[key]}")
            continue
        blocked = [n for n in needs if n in failed]
        if blocked:
            failed[key] = f"not run: it needs the output of {', '.join(blocked)}, which failed"
            print(failed[key])
            continue
        started = time.perf_counter()
        try:
            message = fn(ctx)
            print(f"done in {time.perf_counter() - started:.1f} s: {message}", flush=True)
        except Exception as e:  # noqa: BLE001 - a failed step is reported, and the steps after it decide
            failed[key] = f"{type(e).__name__}: {e}"
            print(f"FAILED after {time.perf_counter() - started:.1f} s: {failed[key]}", flush=True)
    print("\n=== summary ===")
    for key, title, *_ in steps:
        state = "skipped" if skip.get(key) and key not in failed else "FAILED" if key in failed else "ok"
        print(f"  {title:20s} {state}{': ' + failed[key] if key in failed else ''}")
    print(f"  output directory     {ctx.out}")
    return len(failed)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a Hydra experiment name (conf/experiment/NAME.yaml) or a JSON config file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value) for every step")
    parser.add_argument("--skip-training", action="store_true", help=f"use the existing {BEST_MODEL}")
    parser.add_argument("--skip-size-head", action="store_true", help=f"use the existing {BEST_SIZE_HEAD}")
    parser.add_argument("--skip-evaluation", action="store_true")
    parser.add_argument("--eval-limit", type=int, default=5, help="evaluate the first N test tasks (default 5)")
    parser.add_argument("--output-dir", help="default: the JSON's output.output_dir, else the run's checkpoint folder")
    parser.add_argument("--size-head-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for the size-head run only (repeatable)")
    args = parser.parse_intermixed_args(argv)
    if args.eval_limit < 1:
        parser.error(f"--eval-limit must be >= 1, got {args.eval_limit}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        plan = make_plan(args.config, args.overrides, args.size_head_override)
        config = compose_config(plan.overrides)
        if not hasattr(config.arch, "train_part"):
            raise PipelineError(f"arch={config.arch.name} is not a diffusion model: the pipeline trains "
                                f"arch=diffusion or diffusion_tiny (with loss=diffusion)")
        if plan.expect_canvas is not None and plan.expect_canvas != dataset_canvas(config):
            raise PipelineError(f"model.max_size={plan.expect_canvas}, but {config.data.paths[0]} is built on a "
                                f"{dataset_canvas(config)}x{dataset_canvas(config)} canvas")
    except Exception as e:  # noqa: BLE001 - config errors (Hydra's, ours, a missing dataset) end the run here
        detail = f" ({e.__cause__})" if e.__cause__ is not None else ""  # Hydra puts the reason there
        print(f"error: {e}{detail}", file=sys.stderr)
        return 2
    experiment = os.path.splitext(os.path.basename(args.config))[0]
    out = resolve_output_dir(plan, config, args.output_dir, experiment)
    print(f"pipeline: {plan.source}\noutput directory: {out}\noverrides: {' '.join(plan.overrides)}")
    if plan.size_head_overrides:
        print(f"size-head overrides: {' '.join(plan.size_head_overrides)}")
    os.makedirs(out, exist_ok=True)
    env = init_distributed(config.device)
    try:
        ctx = Context(plan, config, out, env, args.eval_limit)
        failures = run_steps(ctx, {"training": args.skip_training, "size_head": args.skip_size_head,
                                   "evaluation": args.skip_evaluation})
    finally:
        cleanup_distributed(env)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
