"""Evaluating a checkpoint: evaluate.py, test-time training and the pipelines go through here.

- ``load_checkpoint``: a checkpoint folder, a run folder (its newest complete checkpoint), an
  export (``export_safetensors``: a folder or its ``model.safetensors``) or a
  TinyRecursiveModels/HRM state-dict file, never running code from it (utils/checkpoint/load.py);
- ``export_safetensors``: the evaluation weights (EMA applied) as ``model.safetensors`` with
  the resolved config, which every loader takes back;
- ``checkpoint_config``: a folder's saved config with the command line's overrides on top;
- ``load_eval_model``: the model with the checkpoint's EMA weights applied and its puzzle rows
  matched to the dataset's identifiers (``models.convert.fit_weights``, the one loader rule);
- ``evaluate_checkpoint``: vote over every augmented view of each test input of one dataset
  (``evaluators.loop.evaluate_examples``) and write ``metrics.json``, ``submission.json`` and
  ``report.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

import torch

from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset, canvas_sides
from evaluators.arc import ARCVoter, write_submission
from evaluators.loop import evaluate_examples
from evaluators.report import render_report
from losses import build_loss
from models import build_model, check_canvas_buckets
from models.base import ARCModel, DataShape
from models.convert import apply_ema, fit_weights, strip_prefixes
from runconfig.compose import compose_config, saved_overrides
from utils import checkpoint as ckpt
from utils.config.schema import TrainConfig
from utils.distributed import DistEnv
from utils.io import read_jsonl, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Weights to evaluate: ``path`` (a checkpoint folder or a weights file), ``weights`` (its
    state dict) and, for an ARCForge checkpoint, its shared ``state`` (config, EMA,
    identifiers)."""

    path: str
    weights: dict[str, torch.Tensor]
    state: dict | None = None

    @property
    def config(self) -> dict | None:
        return self.state["config"] if self.state is not None else None

    def eval_weights(self) -> dict[str, torch.Tensor]:
        """The weights evaluation uses (ARCForge keys): the EMA averages in place of the
        parameters they track when the checkpoint kept them (pretrain.py evaluates, and
        means, those)."""
        return apply_ema(strip_prefixes(self.weights), self.state.get("ema") if self.state is not None else None)


def load_checkpoint(path: str) -> Checkpoint:
    """A checkpoint folder (``state.pt``; refused when it does not match its manifest), a run
    folder (its newest complete checkpoint: damaged ones are skipped with a warning), an
    export (a folder with ``model.safetensors``, or that file) or a TinyRecursiveModels/HRM
    file; FileNotFoundError naming ``path`` when it is none of them. Nothing in the files is
    run (utils/checkpoint/load.py: load_file)."""
    path = os.fspath(path)
    if os.path.isdir(path) and not any(
        os.path.isfile(os.path.join(path, f)) for f in (ckpt.STATE_FILE, ckpt.EXPORT_WEIGHTS)
    ):
        if not ckpt.list_checkpoints(path):
            raise FileNotFoundError(
                f"checkpoint={path}: neither a checkpoint (state.pt), an export "
                f"({ckpt.EXPORT_WEIGHTS}) nor a run folder (step_*)"
            )
        newest = ckpt.newest_checkpoint(path, purpose=f"checkpoint={path}")
        assert newest is not None  # step_* folders are there: it takes one or raises
        path = newest
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint={path}: no such file or folder")
    source = ckpt.load_weights(path)
    exported = path.endswith(".safetensors") and source.get("config") is not None
    if os.path.isdir(path) or exported:  # ours: it brings its config, EMA, identifiers
        return Checkpoint(path, source["model"], source)
    return Checkpoint(path, source["model"])  # a weights file: config from the command line


def default_export_dir(checkpoint_path: str) -> str:
    """``<run folder>/export/<step folder>`` for a checkpoint folder; ``<file>_export`` for a
    weights file."""
    path = os.path.normpath(checkpoint_path)
    if os.path.isdir(path):
        return os.path.join(os.path.dirname(path), "export", os.path.basename(path))
    return os.path.splitext(path)[0] + "_export"


def export_safetensors(config: TrainConfig, checkpoint: Checkpoint, out_dir: str | None = None) -> str:
    """Write ``checkpoint``'s evaluation weights (ARCForge keys, its EMA applied) to
    ``out_dir/model.safetensors`` with ``config.json`` (``config``, resolved),
    ``checkpoint.json`` (source, step, puzzle identifiers) and a manifest, atomically
    (default folder: ``default_export_dir``); returns the folder. evaluate.py, init_from and
    ttt load it as they load the checkpoint, with the same predictions."""
    out_dir = out_dir or default_export_dir(checkpoint.path)
    if os.path.abspath(out_dir) == os.path.abspath(checkpoint.path):
        raise ValueError(f"export_dir={out_dir} is the checkpoint itself: choose another folder")
    state = checkpoint.state or {}
    info = {
        "source": os.path.abspath(checkpoint.path),
        "step": state.get("step"),
        "ema_applied": bool(state.get("ema")),
        "identifiers_sha256": state.get("identifiers_sha256"),
        "identifiers": state.get("identifiers"),
    }
    return ckpt.write_export(out_dir, checkpoint.eval_weights(), dataclasses.asdict(config), info)


def checkpoint_config(
    checkpoint: Checkpoint, overrides: list[str], chosen: set[str], config_name: str = "config"
) -> TrainConfig:
    """The run config to evaluate (or adapt) a checkpoint with: a checkpoint folder's saved
    config, then ``overrides`` (the command line's; choosing another option of a group, e.g.
    ``data=arc2``, replaces that group: ``chosen`` holds the groups chosen). A weights file
    brings no config: ``conf/<config_name>.yaml`` with the overrides. ConfigError on a bad key."""
    saved = saved_overrides(checkpoint.config, chosen) if checkpoint.config is not None else []
    return compose_config(saved + overrides, config_name)


def load_eval_model(
    config: TrainConfig, shape: DataShape, checkpoint: Checkpoint, device: torch.device, identifiers: list[str] | None = None
) -> ARCModel:
    """The model to evaluate on a dataset with these puzzle ``identifiers``: the checkpoint's
    weights with its EMA applied, each puzzle row matched by identifier (``fit_weights``)."""
    model = build_model(config.arch, shape).to(device)
    state = checkpoint.state or {}
    fitted, notes = fit_weights(
        checkpoint.weights,
        model.state_dict(),
        table_key=model.puzzle_table_key,
        ema=state.get("ema"),
        source_ids=state.get("identifiers"),
        target_ids=identifiers,
    )
    for note in notes:
        log.warning(note)
    model.load_state_dict(fitted)
    return model


def default_output_dir(checkpoint_path: str, test_path: str) -> str:
    """``<checkpoint folder>/evaluate/<dataset folder name>`` (a weights file: ``<file>_eval/...``):
    one checkpoint evaluated on two datasets keeps both results."""
    base = checkpoint_path if os.path.isdir(checkpoint_path) else os.path.splitext(checkpoint_path)[0] + "_eval"
    return os.path.join(base, "evaluate", os.path.basename(os.path.normpath(test_path)))


@dataclass
class EvalResult:
    """What an evaluation wrote (rank 0; other ranks get an empty result)."""

    metrics: dict[str, float] = field(default_factory=dict)
    submission: dict | None = None
    output_dir: str | None = None
    summary: list[str] = field(default_factory=list)  # the lines a command prints: what was scored, where it went


def run_records(checkpoint: Checkpoint) -> list[dict]:
    """The logged records (metrics.jsonl) of the run that wrote an ARCForge checkpoint, up to
    its step: the learning curve report.png draws ([] for a weights file)."""
    if checkpoint.state is None or not os.path.isdir(checkpoint.path):
        return []
    records = read_jsonl(os.path.join(os.path.dirname(os.path.abspath(checkpoint.path)), ckpt.METRICS_FILE))
    step = checkpoint.state.get("step")
    return [r for r in records if step is None or r.get("step", 0) <= step]


def canvas_change_note(state: dict | None, sides: list[int], test_path: str) -> str | None:
    """A warning when the test set sits on canvases the checkpoint never trained on: attention
    sees another number of PAD cells there, so the model computes another function
    (docs/data.md, "Canvas buckets", has what that cost a trained checkpoint)."""
    trained = (state or {}).get("canvas_sides")
    if trained is None:  # weights files and exports do not say: a single canvas is all we can assume
        return (
            f"{test_path} sits on canvases {sides}; the checkpoint does not say which canvases it trained on "
            "(a canvas other than its own changes its outputs: docs/data.md, Canvas buckets)"
            if len(sides) > 1
            else None
        )
    new = sorted(set(sides) - set(trained))
    if not new:
        return None
    return (
        f"{test_path} puts examples on canvases {new} that the checkpoint never trained on (it trained on "
        f"{trained}): attention sees another number of PAD cells there, so the model computes another "
        "function; expect a lower score than on its own layout (docs/data.md, Canvas buckets)"
    )


def evaluate_checkpoint(config: TrainConfig, checkpoint: Checkpoint, env: DistEnv) -> EvalResult:
    """Evaluate on the test split of ``config.data`` (its ``test_paths``, else ``paths``: one
    dataset) and write ``metrics.json``, ``submission.json`` and ``report.png`` to
    ``config.eval.output_dir`` (default: ``default_output_dir``). ValueError when the
    checkpoint was trained on other puzzle identifiers (unless ``force_identifiers``)."""
    test_paths = config.data.test_paths or config.data.paths
    if len(test_paths) != 1:
        raise ValueError(f"evaluate one dataset at a time; got {test_paths}")
    test_path = test_paths[0]
    state = checkpoint.state
    if (
        state is not None
        and state.get("identifiers_sha256") is not None
        and state["identifiers_sha256"] != ckpt.identifiers_hash([test_path])
        and not config.force_identifiers
    ):
        raise ValueError(
            f"{checkpoint.path} was trained with other puzzle identifiers than {test_path} "
            "(identifiers.json differs); pass force_identifiers=true to evaluate anyway"
        )
    data = PuzzleDataset([test_path], "test", config.global_batch_size, env.rank, env.world_size)
    meta = data.metadata
    shape = DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, data.local_batch_size)
    model = load_eval_model(config, shape, checkpoint, env.device, data.identifiers)
    check_canvas_buckets(model, config.arch, meta.canvas_sides, meta.seq_len, test_path)
    note = canvas_change_note(state, canvas_sides(meta), test_path)
    if note and env.is_main:
        log.warning(note)
    voter = ARCVoter(test_path)
    demos = Demonstrations([test_path], model.num_demos, config.seed) if model.num_demos else None
    metrics, submission = evaluate_examples(
        model,
        build_loss(config.loss),
        data,
        env,
        voter,
        config.eval.pass_ks,
        config.eval.ranking,
        config.eval.limit,
        progress=True,
        demos=demos,
    )
    if not env.is_main:
        return EvalResult()
    assert submission is not None  # rank 0, with a voter
    out_dir = config.eval.output_dir or default_output_dir(checkpoint.path, test_path)
    os.makedirs(out_dir, exist_ok=True)
    views = metrics.get("ARC/views_per_input", 0)
    if "ARC/pass@1" in metrics:
        scored = "pass@k per task (ARC Prize): " + ", ".join(
            f"pass@{k} {metrics[f'ARC/pass@{k}']:.3f}" for k in (1, 2) if f"ARC/pass@{k}" in metrics
        )
    else:
        scored = "unlabeled test set: no score"
    title = (
        f"{os.path.basename(os.path.normpath(test_path))}, test split: {metrics.get('ARC/tasks', 0):.0f} tasks, "
        f"{views:.0f} predictions voted per input (augmented views x samples, {config.eval.ranking})\n{scored}"
    )
    report = {
        "checkpoint": checkpoint.path,
        "dataset": test_path,
        "split": "test",
        "ranking": config.eval.ranking,
        "task_limit": config.eval.limit,
        "metrics": metrics,
    }
    write_json_atomic(os.path.join(out_dir, "metrics.json"), report, indent=1)
    write_submission(os.path.join(out_dir, "submission.json"), submission)
    with open(os.path.join(test_path, "test_puzzles.json")) as f:
        tasks = json.load(f)
    render_report(
        os.path.join(out_dir, "report.png"),
        {t: tasks[t] for t in submission},
        submission,
        max_tasks=config.eval.report_tasks,
        title=title,
        curve=run_records(checkpoint),
    )
    summary = title.split("\n")
    for convention in ("pass", "kaggle_pass", "strict_pass"):
        figures = [
            f"@{k} {metrics[f'ARC/{convention}@{k}']:.4f}" for k in config.eval.pass_ks if f"ARC/{convention}@{k}" in metrics
        ]
        if figures:
            summary.append(f"  {convention:12s}" + "  ".join(figures))
    summary.append(f"wrote {out_dir}/: metrics.json, submission.json, report.png")
    return EvalResult(metrics, submission, out_dir, summary)
