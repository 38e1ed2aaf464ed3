"""The trainer's periodic evaluation: the library evaluation (evaluators/loop.py, the same
loop evaluate.py and the pipelines run) on the EMA weights when the run keeps them, its submission and
metrics written to ``<run>/evaluator_ARC_step_<N>/``. On ``data.test_paths`` (another build) each
puzzle row is matched by identifier, as every loader does (models/convert.py: fit_weights).
It owns its cadence (``due``, ``owed``) and what follows an evaluation (``run``: the run log,
the monitor, early stopping, a checkpoint when asked)."""

from __future__ import annotations

import logging
import os

import torch

from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import ARCVoter, write_submission
from evaluators.loop import evaluate_examples
from models import build_model
from models.base import DataShape
from models.convert import fit_weights
from training.checkpointer import Checkpointer
from training.faults import KILL_IN_EVAL_AT_STEP, kill_self, kill_step
from training.run_log import RunLog
from training.state import TrainState
from utils.distributed import DistEnv
from utils.errors import ConfigError
from utils.io import write_json_atomic

log = logging.getLogger(__name__)


class PeriodicEvaluation:
    def __init__(self, state: TrainState, env: DistEnv, root: str):
        config = state.config
        self.state, self.env, self.root = state, env, root
        self.kill_at = kill_step(env, KILL_IN_EVAL_AT_STEP)  # None unless a test injects a fault
        self.paths = config.data.test_paths or config.data.paths
        self.data = PuzzleDataset(self.paths, "test", config.global_batch_size, env.rank, env.world_size, seed=config.seed)
        num_demos = state.model.num_demos
        self.demos = Demonstrations(self.paths, num_demos, config.seed) if num_demos else None
        # Votes are per evaluation unless eval.pool_votes (TRM's default, which grows memory).
        self.pooled_voter = ARCVoter(self.paths[0]) if config.eval.pool_votes and len(self.paths) == 1 else None
        self.noted = False  # the puzzle-row note is logged once per run

    def due(self, epoch: int, finished: bool) -> bool:
        """Whether the schedule evaluates after ``epoch`` (``finished``: the run's last step).
        Rounds of eval_interval epochs count from 1 (a run's last, partial round too); the
        first min_eval_interval rounds are not evaluated, as TinyRecursiveModels counts them."""
        config = self.state.config
        boundary = epoch % config.eval_interval == 0 and epoch > 0
        round_number = epoch // config.eval_interval + (0 if boundary else 1)  # the round just ended, or in progress
        return config.evaluate and (boundary or finished) and round_number > config.min_eval_interval

    def owed(self, epoch: int, finished: bool) -> bool:
        """Whether a resumed run starts at an epoch boundary whose evaluation never happened
        (preempted on the epoch's last step, or killed in the evaluation after it)."""
        state = self.state
        at_boundary = state.train_data.state_dict()["batch_in_epoch"] == 0 and state.step > 0
        return at_boundary and state.evaluated_step != state.step and self.due(epoch, finished)

    def run(self, epoch: int, run_log: RunLog, checkpointer: Checkpointer) -> dict[str, float]:
        """Evaluate, log, feed the monitor, checkpoint when asked; the metrics."""
        state, config = self.state, self.state.config
        if state.step == self.kill_at:
            kill_self()
        metrics = self()
        state.evaluated_step = state.step
        run_log.evaluation(state.step, epoch, metrics)
        score = metrics.get(config.callbacks.monitor)  # there when callbacks watch it (check_monitor)
        if score is not None:
            state.monitor.update(score)
        if state.monitor.should_stop and self.env.is_main:
            log.info(
                "early stop: %s has not improved on %.4f for %d evaluations",
                config.callbacks.monitor,
                state.monitor.best,
                config.callbacks.early_stopping_patience,
            )
        if config.checkpoint_every_eval or state.monitor.should_stop:
            checkpointer.save(score)
        return metrics

    def _voter(self) -> ARCVoter | None:
        return self.pooled_voter or (ARCVoter(self.paths[0]) if len(self.paths) == 1 else None)

    def _model(self):
        """The training model itself, or a copy with the EMA weights and the test set's puzzle
        rows (matched by identifier) when the run keeps an EMA or evaluates another build."""
        state, data = self.state, self.data
        if state.ema is None and data.identifiers == state.identifiers:
            return state.model
        meta = data.metadata
        shape = DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, data.local_batch_size)
        with torch.random.fork_rng(devices=[]):  # building the copy must not move the training RNG (resume)
            model = build_model(state.config.arch, shape).to(self.env.device)
        fitted, notes = fit_weights(
            state.model.state_dict(),
            model.state_dict(),
            table_key=model.puzzle_table_key,
            ema=state.ema.state_dict() if state.ema is not None else None,
            source_ids=state.identifiers,
            target_ids=data.identifiers,
        )
        if notes and not self.noted:
            log.info("evaluation on %s: %s", ", ".join(self.paths), "; ".join(notes))
            self.noted = True
        model.load_state_dict(fitted)
        return model

    def __call__(self) -> dict[str, float]:
        config, step = self.state.config, self.state.step
        metrics, submission = evaluate_examples(
            self._model(),
            self.state.loss_fn,
            self.data,
            self.env,
            self._voter(),
            config.eval.pass_ks,
            config.eval.ranking,
            demos=self.demos,
        )
        if submission is not None and self.env.is_main:
            out_dir = os.path.join(self.root, f"evaluator_ARC_step_{step}")
            os.makedirs(out_dir, exist_ok=True)
            write_submission(os.path.join(out_dir, "submission.json"), submission)
            write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
        return metrics

    def check_monitor(self) -> None:
        """When the callbacks watch ``callbacks.monitor``, it is a metric this evaluation
        reports: one test task goes through it now, so a misspelling fails in seconds, not
        at the first evaluation hours in. The RNG stays as it was (resume)."""
        config, device = self.state.config, self.env.device
        callbacks = config.callbacks
        if not (config.evaluate and (callbacks.keep_best or callbacks.early_stopping_patience)):
            return
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            voter = ARCVoter(self.paths[0]) if len(self.paths) == 1 else None  # not the pooled one
            preview, _ = evaluate_examples(
                self._model(),
                self.state.loss_fn,
                self.data,
                self.env,
                voter,
                config.eval.pass_ks,
                config.eval.ranking,
                task_limit=1,
                demos=self.demos,
            )
        if callbacks.monitor not in preview:
            raise ConfigError(
                f"callbacks.monitor={callbacks.monitor!r} is not an evaluation metric of this run; "
                f"they are: {', '.join(sorted(preview))}"
            )
