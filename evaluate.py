"""Evaluate a checkpoint: vote over every augmented view of each test input, report pass@k
(ARC Prize convention, plus Kaggle and strict, labelled), write submission.json,
metrics.json and report.png.

    python evaluate.py checkpoint=checkpoints/arcforge/RUN          # the run's newest checkpoint
    python evaluate.py checkpoint=checkpoints/arcforge/RUN/step_00001000
    python evaluate.py checkpoint=RUN/step_00001000 data=arc2 eval.limit=20
    python evaluate.py checkpoint=trm_step_518071 arch=trm data=arc1    # a TinyRecursiveModels file
    torchrun --nproc-per-node 4 evaluate.py checkpoint=...

An ARCForge checkpoint folder brings its saved config; arguments override it (``key=value``
as for pretrain.py; choosing another option of a group, e.g. ``data=arc2``, replaces that
group). A single file is read as a TinyRecursiveModels/HRM state dict; then the arch and
data come from the arguments.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import torch

from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import ARCVoter, write_submission
from evaluators.report import render_report
from losses import build_loss
from models import build_model
from models.base import ARCModel
from models.convert import fit_weights
from models.recursive import DataShape
from utils import checkpoint as ckpt
from utils.config import CONF_DIR, SCHEMAS, TrainConfig, compose_config
from utils.distributed import DistEnv, cleanup_distributed, init_distributed
from utils.evaluate import evaluate_examples
from utils.io import write_json_atomic

log = logging.getLogger(__name__)


def _override_value(value: Any) -> str:
    """A saved config value as a Hydra override value."""
    if isinstance(value, str):
        return json.dumps(value)  # quoted: paths and names may hold Hydra's special characters
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else repr(value)


def saved_overrides(saved: dict, user: list[str]) -> list[str]:
    """Overrides that recreate a checkpoint's config; groups the user re-chooses are left out."""
    chosen = {arg.split("=", 1)[0] for arg in user if "=" in arg}
    out = []
    for group in SCHEMAS:
        if group in chosen:
            continue
        if os.path.isfile(os.path.join(CONF_DIR, group, f"{saved[group]['name']}.yaml")):
            out.append(f"{group}={saved[group]['name']}")  # else: the default option, every field overridden
        out += [f"{group}.{k}={_override_value(v)}" for k, v in saved[group].items()]
    for key in ("global_batch_size", "seed"):
        out.append(f"{key}={_override_value(saved[key])}")
    return out


def load_run(argv: list[str]) -> tuple[TrainConfig, dict[str, torch.Tensor], dict | None, str]:
    """(config, weights, checkpoint state or None, checkpoint path) from the command line."""
    argv = [f"eval.{a}" if a.startswith("checkpoint=") else a for a in argv]
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("eval.checkpoint=")), None)
    if not path:
        raise ValueError("checkpoint=PATH is required (a checkpoint folder, or a TinyRecursiveModels file)")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "state.pt")):
        found = ckpt.list_checkpoints(path)  # a run folder: its newest checkpoint
        if not found:
            raise FileNotFoundError(f"checkpoint={path}: neither a checkpoint (state.pt) nor a run folder (step_*)")
        path = found[-1][1]
    if os.path.isdir(path):
        state = ckpt.load_shared(path)
        config = compose_config(saved_overrides(state["config"], argv) + argv)
        return config, state["model"], state, path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint={path}: no such file or folder")
    weights = torch.load(path, map_location="cpu", weights_only=False)
    return compose_config(argv), weights.get("model", weights), None, path


def load_eval_model(config: TrainConfig, shape: DataShape, weights: dict, state: dict | None,
                    device: torch.device, identifiers: list[str] | None = None) -> ARCModel:
    """The model to evaluate on a dataset with these puzzle ``identifiers``: the weights, with
    a checkpoint's EMA applied when it kept one (pretrain.py evaluates, and means, the EMA
    weights), loaded by ``models.convert.fit_weights``."""
    model = build_model(config.arch, shape).to(device)
    state = state or {}
    fitted, notes = fit_weights(weights, model.state_dict(), ema=state.get("ema"), source_ids=state.get("identifiers"),
                                target_ids=identifiers)
    for note in notes:
        log.warning(note)
    model.load_state_dict(fitted)
    return model


def evaluate(config: TrainConfig, weights: dict, state: dict | None, checkpoint: str, env: DistEnv) -> dict:
    test_paths = config.data.test_paths or config.data.paths
    if len(test_paths) != 1:
        raise ValueError(f"evaluate one dataset at a time; got {test_paths}")
    test_path = test_paths[0]
    if state is not None and state["identifiers_sha256"] != ckpt.identifiers_hash([test_path]) \
            and not config.force_identifiers:
        raise ValueError(f"{checkpoint} was trained with other puzzle identifiers than {test_path} "
                         "(identifiers.json differs); pass force_identifiers=true to evaluate anyway")
    data = PuzzleDataset([test_path], "test", config.global_batch_size, env.rank, env.world_size)
    meta = data.metadata
    shape = DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, data.local_batch_size)
    model = load_eval_model(config, shape, weights, state, env.device, data.identifiers)
    voter = ARCVoter(test_path)
    demos = Demonstrations([test_path], model.num_demos, config.seed) if model.num_demos else None
    metrics, submission = evaluate_examples(model, build_loss(config.loss), data, env, voter, config.eval.pass_ks,
                                            config.eval.ranking, config.eval.limit, progress=True, demos=demos)
    if not env.is_main:
        return {}
    out_dir = config.eval.output_dir or os.path.join(
        checkpoint if os.path.isdir(checkpoint) else os.path.splitext(checkpoint)[0] + "_eval", "evaluate")
    os.makedirs(out_dir, exist_ok=True)
    views = metrics.get("ARC/views_per_input", 0)
    if "ARC/pass@1" in metrics:
        scored = ("pass@k per task (ARC Prize): " + ", ".join(f"pass@{k} {metrics[f'ARC/pass@{k}']:.3f}"
                                                              for k in (1, 2) if f"ARC/pass@{k}" in metrics))
    else:
        scored = "unlabeled test set: no score"
    title = (f"{os.path.basename(os.path.normpath(test_path))}, test split: {metrics.get('ARC/tasks', 0):.0f} tasks, "
             f"{views:.0f} predictions voted per input (augmented views x samples, {config.eval.ranking})\n{scored}")
    report = {"checkpoint": checkpoint, "dataset": test_path, "split": "test", "ranking": config.eval.ranking,
              "task_limit": config.eval.limit, "metrics": metrics}
    write_json_atomic(os.path.join(out_dir, "metrics.json"), report, indent=1)
    write_submission(os.path.join(out_dir, "submission.json"), submission)
    with open(os.path.join(test_path, "test_puzzles.json")) as f:
        tasks = json.load(f)
    render_report(os.path.join(out_dir, "report.png"), {t: tasks[t] for t in submission}, submission,
                  max_tasks=config.eval.report_tasks, title=title)
    print(title)
    for convention in ("pass", "kaggle_pass", "strict_pass"):
        figures = [f"@{k} {metrics[f'ARC/{convention}@{k}']:.4f}" for k in config.eval.pass_ks
                   if f"ARC/{convention}@{k}" in metrics]
        if figures:
            print(f"  {convention:12s}" + "  ".join(figures))
    print(f"wrote {out_dir}/: metrics.json, submission.json, report.png")
    return {**metrics, "output_dir": out_dir}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, weights, state, checkpoint = load_run(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = init_distributed(config.device)
    try:
        evaluate(config, weights, state, checkpoint, env)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
