"""The training state: everything a step reads or changes, what a checkpoint holds, and how
a run starts (fresh, from other weights, or resumed)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from dataset.puzzle_dataset import PuzzleDataset, canvas_sides
from losses import build_loss
from models import build_model, check_canvas_buckets
from models.base import ARCModel, DataShape
from models.convert import fit_weights
from training.optimizers import SparseSignSGD, build_optimizer
from utils import checkpoint as ckpt
from utils.config.resume import resume_differences
from utils.config.schema import TrainConfig
from utils.distributed import DistEnv
from utils.ema import EMA
from utils.errors import ConfigError
from utils.monitor import Monitor
from utils.schema import plain_dict

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainState:
    """A run's model and optimizers with their schedule, the ACT carry in flight, the step,
    the data position (``train_data``) and the monitored metric. ``state_dict`` is the shared
    part of a checkpoint (rank 0 writes it), ``rank_state`` each rank's own (carry, RNG)."""

    config: TrainConfig
    model: ARCModel
    shape: DataShape  # what the model was built for (this rank's batch)
    forward: Callable[..., Any]  # what a step calls: the model, wrapped in DDP and/or compiled
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]  # each optimizer's configured lr; the schedule scales it
    dense: torch.optim.Optimizer | None  # the dense-parameter optimizer (None with frozen weights)
    scaler: torch.amp.GradScaler
    ema: EMA | None
    monitor: Monitor
    train_data: PuzzleDataset
    total_steps: int  # the schedule's length (TRM's estimate); max_steps stops early without changing it
    local_batch: int
    identifiers: list[str]  # the dataset's puzzle identifiers, saved so loaders can match table rows
    identifiers_sha256: str
    world_size: int  # ranks that share the global batch; each rank's carries are saved for its rank
    # The examples in flight, one carry per (micro-batch, canvas size): an unhalted example
    # continues in its own micro-batch slot and canvas bucket (training/step.py carry_key).
    carries: dict[str, Any] = dataclasses.field(default_factory=dict)
    step: int = 0
    wandb_id: str | None = None
    # Bad steps (non-finite loss or gradient; training/step.py): skipped in all, and in a row
    # up to the current step (max_bad_steps stops the run).
    skipped_steps: int = 0
    bad_steps_in_a_row: int = 0
    evaluated_step: int = -1  # the step of the last periodic evaluation: a resumed run owes one it missed

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST.get(self.config.precision)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "ema": self.ema.state_dict() if self.ema else None,
            "step": self.step,
            "data_position": self.train_data.state_dict(),
            "config": plain_dict(self.config),  # plain strings for its choices: the file loads with weights_only
            "identifiers_sha256": self.identifiers_sha256,
            "identifiers": self.identifiers,
            "monitor": self.monitor.state_dict(),
            "wandb_id": self.wandb_id,
            "world_size": self.world_size,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "skipped_steps": self.skipped_steps,
            "bad_steps_in_a_row": self.bad_steps_in_a_row,
            "evaluated_step": self.evaluated_step,
            "canvas_sides": canvas_sides(self.train_data.metadata),
        }

    def load_state_dict(self, shared: dict[str, Any]) -> None:
        self.model.load_state_dict(shared["model"])
        for opt, state in zip(self.optimizers, shared["optimizers"], strict=True):
            opt.load_state_dict(state)
        if self.ema is not None and shared["ema"] is not None:
            self.ema.load_state_dict(shared["ema"])
        self.train_data.load_state_dict(shared["data_position"])
        self.step = shared["step"]
        if shared["monitor"]:
            self.monitor.load_state_dict(shared["monitor"])
        self.wandb_id = shared["wandb_id"]
        if shared["scaler"]:
            self.scaler.load_state_dict(shared["scaler"])
        self.skipped_steps = shared["skipped_steps"]
        self.bad_steps_in_a_row = shared["bad_steps_in_a_row"]
        self.evaluated_step = shared["evaluated_step"]

    def rank_state(self) -> dict[str, Any]:
        carries = {key: self.model.carry_state(carry) for key, carry in self.carries.items()}
        return {"carries": {key: c for key, c in carries.items() if c is not None}, "rng": ckpt.rng_state()}

    def load_rank_state(self, own: dict[str, Any], device: torch.device) -> None:
        carries = {key: self.model.carry_from_state(c, device) for key, c in own["carries"].items()}
        self.carries = {key: c for key, c in carries.items() if c is not None}
        ckpt.set_rng_state(own["rng"])

    def save(self, root: str, env: DistEnv, score: float | None = None) -> str:
        """Write ``root/step_<N>/`` atomically and prune old checkpoints (utils/checkpoint/write.py)."""
        callbacks = self.config.callbacks
        return ckpt.save_checkpoint(
            root,
            self.step,
            self.state_dict(),
            self.rank_state(),
            env,
            keep=self.config.max_checkpoints,
            score=score,
            keep_best=callbacks.keep_best,
            mode=callbacks.mode,
        )


def build_train_state(
    config: TrainConfig, env: DistEnv, train_data: PuzzleDataset, identifiers_sha256: str | None = None
) -> TrainState:
    """A fresh state: the model seeded by ``config.seed`` (and ``init_from``'s weights) on every
    rank, then rank r's random stream (halting exploration) seeded by ``seed + r``;
    sign-SGD for the puzzle table, the dense optimizer, loss scaler, EMA and monitor.
    ``identifiers_sha256``: default, the hash of ``config.data.paths``' identifiers.json."""
    meta = train_data.metadata
    local_batch = config.global_batch_size // env.world_size
    if local_batch % config.grad_accum_steps:
        raise ConfigError(
            f"grad_accum_steps={config.grad_accum_steps} does not divide the {local_batch} examples "
            f"each of {env.world_size} ranks takes per step (global_batch_size {config.global_batch_size})"
        )
    torch.manual_seed(config.seed)
    shape = DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, local_batch)
    model: ARCModel = build_model(config.arch, shape).to(env.device)
    check_canvas_buckets(model, config.arch, meta.canvas_sides, meta.seq_len, ", ".join(config.data.paths))
    if config.init_from:
        load_init_weights(model, config.init_from, train_data.identifiers, env)
    if env.rank:  # one stream per rank (TRM: seed + rank), or every rank draws the same halting exploration
        torch.manual_seed(config.seed + env.rank)
    if config.freeze_weights:
        model.requires_grad_(False)  # before DDP, which registers the parameters it reduces
    # The puzzle-embedding table is made of buffers: DDP must neither sync them (each rank
    # holds its own batch rows) nor reduce their gradients (SparseSignSGD all-gathers them).
    # With frozen weights nothing is left for DDP to reduce.
    forward: Callable[..., Any] = model  # torch.compile's result is typed a callable
    if env.distributed and not config.freeze_weights:
        forward = DistributedDataParallel(model, broadcast_buffers=False)
    if config.compile:
        # A machine without a working C++ compiler (CPU inductor needs one) trains eagerly, warned, not stopped.
        torch._dynamo.config.suppress_errors = True
        forward = torch.compile(forward)

    optimizers: list[torch.optim.Optimizer] = []
    base_lrs: list[float] = []
    dense = None
    if model.puzzle_emb is not None:
        optimizers.append(SparseSignSGD(model.puzzle_emb, lr=0.0, weight_decay=config.puzzle_emb_weight_decay))
        base_lrs.append(config.puzzle_emb_lr)
    if not config.freeze_weights:
        dense = build_optimizer(config.optimizer, model.param_groups())
        optimizers.append(dense)
        base_lrs.append(config.optimizer.lr)
    callbacks = config.callbacks
    return TrainState(
        config=config,
        model=model,
        shape=shape,
        forward=forward,
        loss_fn=build_loss(config.loss),
        optimizers=optimizers,
        base_lrs=base_lrs,
        dense=dense,
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        scaler=torch.amp.GradScaler(env.device.type, enabled=config.precision == "fp16"),
        ema=EMA(model, config.ema_rate) if config.ema else None,
        monitor=Monitor(callbacks.mode, callbacks.min_delta, callbacks.early_stopping_patience),
        train_data=train_data,
        total_steps=int(config.epochs * meta.total_groups * meta.mean_puzzle_examples / config.global_batch_size),
        local_batch=local_batch,
        identifiers=train_data.identifiers,
        identifiers_sha256=identifiers_sha256 or ckpt.identifiers_hash(config.data.paths),
        world_size=env.world_size,
    )


def carry_key(micro_batch: int, seq_len: int) -> str:
    """The carry of micro-batch slot ``micro_batch`` on canvases of ``seq_len`` tokens."""
    return f"micro{micro_batch}/len{seq_len}"


def load_init_weights(model: ARCModel, path: str, identifiers: list[str], env: DistEnv) -> None:
    """``init_from``: weights only (ours, EMA applied, or a TRM/HRM file), puzzle rows
    matched to this dataset's identifiers (models/convert.py: fit_weights). ``path``: a
    checkpoint folder or its state.pt, an export (folder or ``.safetensors``) or a TRM/HRM
    file, loaded without running code (utils/checkpoint/load.py: load_weights)."""
    source = ckpt.load_weights(path)
    weights, notes = fit_weights(
        source["model"],
        model.state_dict(),
        table_key=model.puzzle_table_key,
        ema=source.get("ema"),
        source_ids=source.get("identifiers"),
        target_ids=identifiers,
    )
    model.load_state_dict(weights)
    if env.is_main:
        for note in notes:
            log.warning("init_from=%s: %s", path, note)


def resume(state: TrainState, root: str, env: DistEnv) -> str | None:
    """Continue the run in ``root`` as ``config.resume`` says; the checkpoint resumed, or None.
    Refuses what would silently mix two runs (check_resumable)."""
    config = state.config
    # resume=auto: the newest complete checkpoint (damaged ones skipped with a warning); rank 0 decides
    path = ckpt.resolve_resume(config.resume, root, env=env)
    if config.resume == "none" and ckpt.list_checkpoints(root):
        raise ConfigError(
            f"{root} already holds checkpoints of another run: pass resume=auto to continue "
            f"it, or choose another run_name / checkpoint_path"
        )
    if path is None:
        if config.resume == "auto" and env.is_main:
            log.info("resume=auto: no checkpoint in %s yet; starting a new run", root)
        return None
    shared = ckpt.load_shared(path)
    if shared["identifiers_sha256"] != state.identifiers_sha256 and not config.force_identifiers:
        raise ConfigError(
            f"resume: {path} was trained on data.paths={shared['config']['data']['paths']}, "
            f"whose puzzle identifiers differ from {config.data.paths}' (identifiers.json); its "
            f"puzzle embeddings would be wrong. Pass force_identifiers=true to load it anyway."
        )
    check_resumable(path, shared["config"], config, env)
    state.load_state_dict(shared)
    own = ckpt.load_rank(path, env.rank) if shared["world_size"] == env.world_size else None
    if own is not None:  # on another world size the examples in flight restart
        state.load_rank_state(own, env.device)
    if env.is_main:
        log.info("resumed from %s at step %d", path, state.step)
    return path


def check_resumable(path: str, saved: dict[str, Any], config: TrainConfig, env: DistEnv) -> None:
    """Refuse a resume that would silently mix two runs: weights or data order that do not
    fit (arch, batch, seed) always; other training keys (lr, schedule, loss, ...) unless
    ``allow_config_change``. Bookkeeping changes (max_steps, logging, evaluation) are listed."""
    fixed, training, free = resume_differences(saved, dataclasses.asdict(config))
    if fixed:
        raise ConfigError(
            f"resume: {path} was trained with other {', '.join(fixed)}; it cannot continue as this run. "
            f"Start a new run (another run_name or checkpoint_path)"
        )
    if training and not config.allow_config_change:
        raise ConfigError(
            f"resume: {path} was trained with {', '.join(training)}. Continuing would mix two runs: "
            f"start a new run (another run_name), or pass allow_config_change=true to continue "
            f"with the new values"
        )
    if env.is_main and (training or free):
        log.warning("resume: config differs from %s: %s", path, "; ".join(training + free))


def checkpoint_root(config: TrainConfig) -> str:
    """The run folder: checkpoints, log, metrics.jsonl, curves.png and the resolved config."""
    if config.checkpoint_path:
        return config.checkpoint_path
    assert config.run_name is not None  # the entry point names the run first (shared_run_name)
    return os.path.join("checkpoints", config.project_name, config.run_name)
