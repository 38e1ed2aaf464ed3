"""The training loop: ``train(config, env)`` runs one run and returns its summary.

It reads top to bottom: data -> training state (model, optimizers, EMA; resumed or fresh) ->
the loop: ``train_step``, maybe log, maybe checkpoint (``Checkpointer.due``), agree with the
other ranks whether to stop; at each epoch's end maybe evaluate (``PeriodicEvaluation.due``)
-> a final checkpoint. SIGTERM / SIGUSR1 stop every rank after the same step with a
checkpoint (training/preemption.py); the entry point (pretrain.py) turns that into exit 75.
The run folder (``checkpoint_path``) holds checkpoints, train.log, metrics.jsonl, curves.png
and the resolved config.yaml."""

from __future__ import annotations

import gc
import time
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset
from training.checkpointer import Checkpointer
from training.evaluation import PeriodicEvaluation
from training.faults import PREEMPT_AT_STEP, kill_self, kill_step, preempt_self
from training.preemption import agree_to_stop, log_preemption
from training.run_log import RunLog
from training.state import build_train_state, checkpoint_root, resume
from training.step import add_metrics, reduce_metrics, train_step
from utils import checkpoint as ckpt
from utils.config.schema import TrainConfig
from utils.distributed import DistEnv
from utils.errors import ConfigError


def train(config: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """Train one run; returns its summary: the last train and test figures and the best
    value of ``callbacks.monitor`` (``preempted``: stopped by a signal with training left)."""
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
        checkpointer = Checkpointer(state, root, env, resumed)
        evaluation = PeriodicEvaluation(state, env, root)
        evaluation.check_monitor()
        stop_step = min(state.total_steps, config.max_steps or state.total_steps)
        # In-context models read demonstration pairs of the example's own task (train split).
        num_demos = state.model.num_demos
        demos = Demonstrations(config.data.paths, num_demos, config.seed) if num_demos else None
        kill_at, preempt_at = kill_step(env), kill_step(env, PREEMPT_AT_STEP)  # None unless a test injects a fault

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
            if evaluation.owed(epoch, finished=epoch >= config.epochs or state.step >= stop_step):
                last_eval = evaluation.run(epoch, run_log, checkpointer)
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
                    if checkpointer.due():
                        checkpointer.save()
                    # Rank 0's clock and any rank's SIGTERM / SIGUSR1, in one all-reduce: all ranks stop together.
                    late = config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes
                    out_of_time, preempted = agree_to_stop(env, late and env.is_main)
                    if state.step >= stop_step or out_of_time or preempted:
                        break
                if preempted:  # no evaluation: the scheduler's grace period is for the checkpoint below
                    break
                epoch = train_data.state_dict()["epoch"]
                if evaluation.due(epoch, finished=epoch >= config.epochs or state.step >= stop_step or out_of_time):
                    last_eval = evaluation.run(epoch, run_log, checkpointer)
            bar.close()
            checkpointer.save_final()
            preempted = preempted and state.step < stop_step  # stopped by a signal with training left
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
        del state, evaluation, checkpointer  # DDP objects go before the process group (gloo crashes at exit otherwise)
        gc.collect()
        return summary


def shared_run_name(config: TrainConfig, env: DistEnv) -> str:
    """The run's name; when unnamed, rank 0's ``<arch>-<data>-<time>`` for every rank."""
    names = [config.run_name or f"{config.arch.name}-{config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if env.distributed:
        dist.broadcast_object_list(names, src=0)
    return names[0]
