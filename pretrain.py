"""Train a model on an ARC dataset.

    python pretrain.py arch=trm data=arc1                        # one process (CPU or one GPU)
    torchrun --nproc-per-node 4 pretrain.py arch=trm data=arc1   # DDP: nccl on GPUs, gloo on CPU
    python pretrain.py -m optimizer.lr=1e-4,3e-4                 # a Hydra sweep, one folder per job

``train`` reads top to bottom: data -> training state (model, optimizers, EMA; resumed or
fresh) -> loop of ``train_step`` with periodic evaluation and checkpoints -> a final
checkpoint. SIGTERM / SIGUSR1 stop every rank after the same step with a checkpoint and exit
status 75 (training/preemption.py). The parts live in training/. Configuration: conf/
(docs/training.md lists every key). The run folder (``checkpoint_path``) holds checkpoints,
train.log, metrics.jsonl, curves.png and the resolved config.yaml.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from typing import Any

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset
from training.evaluation import PeriodicEvaluation
from training.faults import KILL_IN_EVAL_AT_STEP, PREEMPT_AT_STEP, kill_self, kill_step, preempt_self
from training.preemption import agree_to_stop, exit_preempted, log_preemption, stop_signals
from training.run_log import RunLog
from training.schedule import lr_factor  # noqa: F401  (re-exported: tests and notebooks read the schedule here)
from training.state import TrainState, build_train_state, checkpoint_root, resume
from training.step import NonFiniteLossError, add_metrics, reduce_metrics, train_step
from utils import checkpoint as ckpt
from utils.config import (
    ConfigError,
    TrainConfig,
    check_command_line,
    config_help,
    exit_with_error,
    load_config,
    register_configs,
    wants_help,
)
from utils.distributed import DistEnv, cleanup_distributed, init_distributed

register_configs()
log = logging.getLogger("pretrain")
# A run stopped by a fault it cannot train through (a full disk, persistent NaNs): one
# ``error:`` line naming the checkpoint to resume from; not requeued (75 is preemption's).
STOPPED_EXIT = 3


def train(config: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """Train one run; returns its summary: the last train and test figures and the best
    value of ``callbacks.monitor``."""
    # --- data -------------------------------------------------------------------------------
    if config.global_batch_size % env.world_size:
        raise ConfigError(f"global_batch_size {config.global_batch_size} is not divisible by {env.world_size} ranks")
    config.data.check_exists()
    train_data = PuzzleDataset(
        config.data.paths, "train", config.global_batch_size, env.rank, env.world_size, seed=config.seed
    )

    # --- state: model, optimizers, EMA; resumed, or fresh (init_from's weights) --------------
    root = checkpoint_root(config)
    with ckpt.run_lock(root, env):  # a second run writing into this run folder is refused
        state = build_train_state(config, env, train_data)
        resumed = resume(state, root, env)
        saved_step = state.step if resumed and os.path.dirname(os.path.abspath(resumed)) == os.path.abspath(root) else None
        evaluation = PeriodicEvaluation(state, env, root)
        evaluation.check_monitor()
        stop_step = min(state.total_steps, config.max_steps or state.total_steps)
        # In-context models read demonstration pairs of the example's own task (train split).
        num_demos = state.model.num_demos
        demos = Demonstrations(config.data.paths, num_demos, config.seed) if num_demos else None
        # None unless a test injects a fault (training/faults.py)
        kill_at, preempt_at = kill_step(env), kill_step(env, PREEMPT_AT_STEP)
        kill_in_eval_at = kill_step(env, KILL_IN_EVAL_AT_STEP)

        # --- loop -------------------------------------------------------------------------------
        bar = tqdm(total=stop_step, initial=state.step, disable=not (env.is_main and config.progress_bar), unit="step")
        last_train: dict[str, float] = {}
        window: dict[str, torch.Tensor] | None = None  # the loss's sums since the last log line
        window_steps = 0
        last_eval: dict[str, float] = {}
        started = time.perf_counter()
        state.model.train()
        epoch, out_of_time, preempted = train_data.state_dict()["epoch"], False, False
        with RunLog(root, config, env, state) as run_log:
            # A run stopped after an epoch's last step (preempted, or killed in the evaluation
            # after it) resumes at the next epoch's start: it owes that evaluation first.
            if (
                resumed
                and state.evaluated_step != state.step
                and train_data.state_dict()["batch_in_epoch"] == 0
                and evaluation_due(config, epoch, epoch >= config.epochs or state.step >= stop_step)
            ):
                last_eval, saved_step = evaluate(state, evaluation, run_log, env, root, epoch, kill_in_eval_at, saved_step)
            while epoch < config.epochs and state.step < stop_step and not (out_of_time or state.monitor.should_stop):
                for _set, batch, _n in train_data:
                    batch = {k: v.to(env.device) for k, v in (demos.attach(batch) if demos else batch).items()}
                    log_now = (state.step + 1) % config.log_interval == 0 or state.step + 1 == stop_step
                    metrics = train_step(state, batch, grad_norms=log_now)
                    window, window_steps = add_metrics(window, metrics), window_steps + 1
                    if state.step == kill_at:
                        kill_self()
                    if state.step == preempt_at:
                        preempt_self()
                    bar.update(1)
                    if log_now:
                        last_train = reduce_metrics(window, env, config.global_batch_size, window_steps)
                        window, window_steps = None, 0
                        bar.set_postfix(
                            loss=f"{last_train['train/lm_loss']:.3f}",
                            acc=f"{last_train.get('train/accuracy', float('nan')):.3f}",
                        )
                        run_log.train(state.step, stop_step, last_train)
                    if config.checkpoint_interval_steps and state.step % config.checkpoint_interval_steps == 0:
                        saved_step = save(state, root, env)
                    # Rank 0's clock and any rank's SIGTERM / SIGUSR1, in one all-reduce: all ranks stop together.
                    late = config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes
                    out_of_time, preempted = agree_to_stop(env, late and env.is_main)
                    if state.step >= stop_step or out_of_time or preempted:
                        break
                if preempted:  # no evaluation: the scheduler's grace period is for the checkpoint below
                    break
                epoch = train_data.state_dict()["epoch"]
                finished = epoch >= config.epochs or state.step >= stop_step or out_of_time
                if evaluation_due(config, epoch, finished):
                    last_eval, saved_step = evaluate(
                        state, evaluation, run_log, env, root, epoch, kill_in_eval_at, saved_step
                    )
            bar.close()
            if saved_step != state.step:  # every run ends with its weights on disk, however it stopped
                save(state, root, env)
            preempted = preempted and state.step < stop_step  # stopped by a signal with training left: main() exits 75
            if preempted:
                log_preemption(state.step, env)
        summary = {
            "step": state.step,
            "seconds": time.perf_counter() - started,
            "num_params": sum(p.numel() for p in state.model.parameters()),
            **last_train,
            **last_eval,
            "best_monitor": state.monitor.best,
            **({"preempted": True} if preempted else {}),
        }
        del state, evaluation  # DDP objects go before the process group (gloo crashes at exit otherwise)
        gc.collect()
        return summary


def evaluation_due(config: TrainConfig, epoch: int, finished: bool) -> bool:
    """Whether the schedule evaluates after ``epoch`` (``finished``: the run's last step)."""
    return config.evaluate and (epoch % config.eval_interval == 0 or finished) and epoch >= config.min_eval_interval


def evaluate(
    state: TrainState,
    evaluation: PeriodicEvaluation,
    run_log: RunLog,
    env: DistEnv,
    root: str,
    epoch: int,
    kill_in_eval_at: int | None,
    saved_step: int | None,
) -> tuple[dict[str, float], int | None]:
    """The periodic evaluation, logged and fed to the monitor, checkpointed when asked:
    (its metrics, the step last saved)."""
    config = state.config
    if state.step == kill_in_eval_at:
        kill_self()
    metrics = evaluation()
    state.evaluated_step = state.step
    run_log.evaluation(state.step, epoch, metrics)
    score = metrics.get(config.callbacks.monitor)  # there when callbacks watch it (check_monitor)
    if score is not None:
        state.monitor.update(score)
    if state.monitor.should_stop and env.is_main:
        log.info(
            "early stop: %s has not improved on %.4f for %d evaluations",
            config.callbacks.monitor,
            state.monitor.best,
            config.callbacks.early_stopping_patience,
        )
    if config.checkpoint_every_eval or state.monitor.should_stop:
        saved_step = save(state, root, env, score)
    return metrics, saved_step


def save(state: TrainState, root: str, env: DistEnv, score: float | None = None) -> int:
    path = state.save(root, env, score)
    if env.is_main:
        log.info("checkpoint: %s", path)
    return state.step


# Keys that name the run folder themselves: a job's folder name never repeats them.
FOLDER_KEYS = ("run_name", "checkpoint_path", "project_name")


def sweep_overrides_only(argv: list[str]) -> list[str]:
    """``argv``; under -m plus the Hydra override that leaves every key the command line does
    not sweep (and the folder keys) out of each job's ``override_dirname``, which then holds
    the job's swept values only (a sweeper's own parameters included)."""
    if not {"-m", "--multirun"} & set(argv) or any(
        a.startswith(("hydra.job.config", "-")) and a not in ("-m", "--multirun") for a in argv
    ):
        return argv
    overrides = OverridesParser.create().parse_overrides([a for a in argv if a not in ("-m", "--multirun")])
    fixed = {o.key_or_group for o in overrides if not o.is_sweep_override() and not o.is_hydra_override()}
    keys = ",".join(f"'{key}'" for key in sorted(fixed | set(FOLDER_KEYS)))
    return [*argv, f"hydra.job.config.override_dirname.exclude_keys=[{keys}]"]


def job_run_name(name: str) -> str:
    """Under -m each job trains in a folder of its own: the run name gains the job's swept
    values (``cpu_small-seed0-optimizer.lr=0.003``); a plain run, or a -m run without a sweep
    (one job, e.g. a SLURM submission), keeps its name, so a rerun finds the same folder."""
    hydra_config = HydraConfig.get()
    swept = hydra_config.job.override_dirname
    if hydra_config.mode != RunMode.MULTIRUN or not swept:
        return name
    return f"{name}-{swept.replace(os.sep, '_')}"  # a swept path's slashes would nest folders


def shared_run_name(config: TrainConfig, env: DistEnv) -> str:
    """The run's name; when unnamed, rank 0's ``<arch>-<data>-<time>`` for every rank."""
    names = [config.run_name or f"{config.arch.name}-{config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if env.distributed:
        dist.broadcast_object_list(names, src=0)
    return names[0]


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the best value of ``callbacks.monitor``: the objective of an Optuna sweep
    (``-m hydra/sweeper=optuna``; set ``hydra.sweeper.direction`` to match callbacks.mode)."""
    try:
        config = load_config(cfg)
    except ConfigError as e:
        exit_with_error(e)
    with stop_signals():  # SIGTERM / SIGUSR1 from here to the exit: a checkpoint, then status 75
        env = init_distributed(config.device)
        try:
            config.run_name = job_run_name(shared_run_name(config, env))
            if env.is_main:  # the resolved config goes to the run folder's config.yaml, not before an error line
                log.info("run folder %s", checkpoint_root(config))
            with logging_redirect_tqdm():  # log lines print above the progress bar, not into it
                summary = train(config, env)
            if env.is_main:
                log.info(
                    "final: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
                )
        except ConfigError as e:  # found before training started: nothing to lose
            exit_with_error(e)
        except (NonFiniteLossError, ckpt.CheckpointWriteError) as e:  # the message names the checkpoint to resume
            print(f"error: {e}", file=sys.stderr)
            sys.exit(STOPPED_EXIT)
        finally:
            cleanup_distributed(env)
    if summary.get("preempted"):
        exit_preempted(env, requeue=config.requeue_on_preempt)
    return summary["best_monitor"]


if __name__ == "__main__":
    if wants_help(sys.argv[1:]):  # the keys and options from the schemas, not Hydra's generic screen
        print(config_help(__doc__))
        sys.exit(0)
    try:
        check_command_line(sys.argv[1:])  # Hydra's own composition errors are a page of traceback
    except ConfigError as e:
        exit_with_error(e)
    sys.argv[1:] = sweep_overrides_only(sys.argv[1:])
    main()
