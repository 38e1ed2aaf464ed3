"""Typed run configuration: the schemas of ``conf/`` registered in Hydra's ConfigStore.

Each group option (``conf/<group>/<name>.yaml``) extends its group's schema, so a key that
is not in the schema is an error at composition time, with its name. ``load_config``
turns the composed DictConfig into dataclasses and checks the values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from losses import LOSS_SCHEMAS
from models import ARCH_SCHEMAS
from utils.optimizers import OptimizerConfig


@dataclass
class DataConfig:
    """Schema of the ``data`` options: dataset folders written by dataset.build_arc_dataset."""

    name: str = MISSING
    paths: list[str] = MISSING
    test_paths: list[str] = field(default_factory=list)  # default: evaluate on ``paths``' test split

    def validate(self) -> None:
        if not self.paths:
            raise ValueError("data.paths: name at least one dataset folder")


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled; the WANDB_MODE variable wins when set
    project: str | None = None  # default: project_name
    entity: str | None = None


@dataclass
class EvalConfig:
    """Scoring (pretrain.py's periodic evaluation and evaluate.py)."""

    pass_ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 100, 1000])
    ranking: str = "vote"  # vote (count, then mean halt confidence; TRM) | count | noisy_or
    pool_votes: bool = False  # pool votes over all of a run's evaluations (TRM's default)
    checkpoint: str | None = None  # evaluate.py: a checkpoint folder, or a TRM checkpoint file
    limit: int | None = None  # evaluate.py: the first N test tasks only
    output_dir: str | None = None  # evaluate.py: default <checkpoint folder>/evaluate
    report_tasks: int = 16  # tasks drawn in report.png

    def validate(self) -> None:
        from evaluators.arc import RANKINGS

        bad = []
        if self.ranking not in RANKINGS:
            bad.append(f"eval.ranking={self.ranking!r} (one of {', '.join(RANKINGS)})")
        if not self.pass_ks or min(self.pass_ks) < 1:
            bad.append(f"eval.pass_ks={list(self.pass_ks)}")
        if self.limit is not None and self.limit < 1:
            bad.append(f"eval.limit={self.limit}")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


@dataclass
class RestartsConfig:
    """``lr_schedule=cosine_restarts`` (CosineAnnealingWarmRestarts, counted in epochs)."""

    T_0: float = 10.0  # epochs in the first cycle
    T_mult: int = 1  # each cycle this many times longer than the last
    eta_min_ratio: float = 0.0  # the lr at the bottom of a cycle, as a fraction of each optimizer's lr


@dataclass
class CallbacksConfig:
    """Decisions taken at each evaluation, from one evaluation metric."""

    monitor: str = "all/lm_loss"  # an evaluation metric (all/* or ARC/*)
    mode: str = "min"  # min | max: which direction is better
    keep_best: int = 0  # also keep the k checkpoints with the best monitor value (besides the newest)
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement (0: never)
    min_delta: float = 0.0  # an improvement must beat the best by more than this

    def validate(self) -> None:
        bad = []
        if self.mode not in ("min", "max"):
            bad.append(f"callbacks.mode={self.mode!r} (min or max)")
        if self.keep_best < 0:
            bad.append(f"callbacks.keep_best={self.keep_best}")
        if self.early_stopping_patience < 0:
            bad.append(f"callbacks.early_stopping_patience={self.early_stopping_patience}")
        if self.min_delta < 0:
            bad.append(f"callbacks.min_delta={self.min_delta}")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "cosine_restarts")


@dataclass
class TrainConfig:
    """The run keys (TinyRecursiveModels' cfg_pretrain.yaml names) and the four groups."""

    arch: Any = MISSING
    data: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING

    global_batch_size: int = 768
    epochs: int = 100000
    eval_interval: int = 10000
    evaluate: bool = True  # false: no evaluation during or after training (a caller evaluates); one final checkpoint
    min_eval_interval: int = 0
    checkpoint_every_eval: bool = True
    checkpoint_interval_steps: int = 0
    max_checkpoints: int = 2

    lr_schedule: str = "cosine"  # cosine (warm-up, then cosine to lr_min_ratio; TRM) | cosine_restarts
    lr_warmup_steps: int = 2000
    lr_min_ratio: float = 1.0
    restarts: RestartsConfig = field(default_factory=RestartsConfig)
    grad_clip_norm: float | None = None  # clip the dense gradients' global norm
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast (fp16 with a GradScaler)
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    freeze_weights: bool = False

    ema: bool = False
    ema_rate: float = 0.999
    seed: int = 0

    project_name: str = "arcforge"
    run_name: str | None = None  # default: <arch>-<data>-<time>; name it to resume with resume=auto
    checkpoint_path: str | None = None  # default: checkpoints/<project_name>/<run_name>
    resume: str = "none"  # none | auto (newest checkpoint in checkpoint_path) | a checkpoint folder
    init_from: str | None = None  # weights only (ours or a TinyRecursiveModels checkpoint)
    force_identifiers: bool = False  # load although the dataset's identifiers.json differs
    max_steps: int | None = None  # stop early (debugging, benchmarks)
    max_minutes: float | None = None  # stop (and checkpoint) after this much training time

    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    log_interval: int = 10
    progress_bar: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)

    def validate(self) -> None:
        positive = {"global_batch_size": self.global_batch_size, "epochs": self.epochs,
                    "eval_interval": self.eval_interval, "log_interval": self.log_interval}
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        if self.lr_warmup_steps < 0:
            bad.append(f"lr_warmup_steps={self.lr_warmup_steps}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            bad.append(f"lr_min_ratio={self.lr_min_ratio}")
        if not 0.0 <= self.ema_rate < 1.0:
            bad.append(f"ema_rate={self.ema_rate}")
        if self.resume not in ("none", "auto") and not self.resume:
            bad.append("resume=''")
        if self.device not in ("auto", "cpu", "cuda"):
            bad.append(f"device={self.device!r}")
        if self.wandb.mode not in ("offline", "online", "disabled"):
            bad.append(f"wandb.mode={self.wandb.mode!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            bad.append(f"max_steps={self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            bad.append(f"max_minutes={self.max_minutes}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad.append(f"lr_schedule={self.lr_schedule!r} (one of {', '.join(LR_SCHEDULES)})")
        if self.restarts.T_0 <= 0 or self.restarts.T_mult < 1 or not 0.0 <= self.restarts.eta_min_ratio <= 1.0:
            bad.append(f"restarts={self.restarts}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            bad.append(f"grad_clip_norm={self.grad_clip_norm}")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (one of {', '.join(PRECISIONS)})")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")
        for group in (self.arch, self.data, self.loss, self.optimizer, self.eval, self.callbacks):
            group.validate()


# group -> {schema name in the ConfigStore: dataclass}; every option extends one of its group's.
SCHEMAS: dict[str, dict[str, type]] = {
    "arch": ARCH_SCHEMAS,
    "data": {"data_schema": DataConfig},
    "loss": LOSS_SCHEMAS,
    "optimizer": {"optimizer_schema": OptimizerConfig},
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            cs.store(group=group, name=name, node=schema)


CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def compose_config(overrides: list[str]) -> TrainConfig:
    """The config pretrain.py would run with these command-line overrides (for tests,
    benchmarks and notebooks)."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return load_config(cfg)


def load_config(cfg: DictConfig) -> TrainConfig:
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, TrainConfig)
    config.validate()
    return config
