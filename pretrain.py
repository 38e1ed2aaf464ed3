"""Train a recursive model on an ARC dataset.

    python pretrain.py arch=trm data=arc1                        # one process (CPU or one GPU)
    torchrun --nproc-per-node 4 pretrain.py arch=trm data=arc1   # DDP: nccl on GPUs, gloo on CPU
    python pretrain.py -m optimizer.lr=1e-4,3e-4                 # a Hydra sweep, one folder per job

Reads top to bottom: config -> distributed -> data -> model -> optimizers -> resume ->
loop -> cleanup. Configuration: conf/ (docs/training.md lists every key).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import sys
import time
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dataset.demonstrations import Demonstrations
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import ARCVoter, write_submission
from losses import build_loss
from models import build_model
from models.base import ARCModel
from models.convert import fit_weights
from models.recursive import DataShape
from utils import checkpoint as ckpt
from utils.config import (
    ConfigError,
    TrainConfig,
    check_command_line,
    exit_with_error,
    load_config,
    register_configs,
    resume_differences,
)
from utils.distributed import DistEnv, all_reduce_sum, cleanup_distributed, init_distributed
from utils.ema import EMA
from utils.evaluate import evaluate_examples
from utils.io import write_json_atomic
from utils.optimizers import SparseSignSGD, build_optimizer

register_configs()
log = logging.getLogger("pretrain")


def lr_factor(config: TrainConfig, step: int, total_steps: int) -> float:
    """The scheduled lr at ``step`` as a multiple of the configured lr (every optimizer
    follows it). ``cosine``: linear warm-up, then cosine down to ``lr_min_ratio`` (TRM).
    ``cosine_restarts``: warm-up, then cosine cycles of ``restarts.T_0`` epochs, each
    ``T_mult`` times longer than the last, down to ``restarts.eta_min_ratio``.

    ``step`` counts optimizer steps from 1, as TRM (which increments its step before
    computing the lr): the first update already moves the weights by ``1 / warmup``."""
    warmup = config.lr_warmup_steps
    if step < warmup:
        return step / warmup
    if config.lr_schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        ratio = config.lr_min_ratio
        return ratio + max(0.0, (1 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    r = config.restarts
    t, period = (step - warmup) * config.epochs / max(1, total_steps), r.T_0  # t in epochs
    while t >= period:
        t, period = t - period, period * r.T_mult
    floor = r.eta_min_ratio  # a ratio, so each optimizer bottoms out at its own lr times it
    return floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * t / period))


def prefers(config: TrainConfig, value: float, best: float | None) -> bool:
    """Whether ``value`` of the monitored metric improves on ``best``."""
    if best is None:
        return True
    delta = config.callbacks.min_delta
    return value < best - delta if config.callbacks.mode == "min" else value > best + delta


def check_resumable(path: str, saved: dict[str, Any], config: TrainConfig, env: DistEnv) -> None:
    """Refuse a resume that would silently mix two runs: weights or data that do not fit
    (arch, data, batch, seed) always; other training keys (lr, schedule, loss, ...) unless
    ``allow_config_change``. Bookkeeping changes (max_steps, logging, evaluation) are listed."""
    fixed, training, free = resume_differences(saved, dataclasses.asdict(config))
    if fixed:
        raise ConfigError(f"resume: {path} was trained with other {', '.join(fixed)}; it cannot continue as this run. "
                          f"Start a new run (another run_name or checkpoint_path)")
    if training and not config.allow_config_change:
        raise ConfigError(f"resume: {path} was trained with {', '.join(training)}. Continuing would mix two runs: "
                          f"start a new run (another run_name), or pass allow_config_change=true to continue "
                          f"with the new values")
    if env.is_main and (training or free):
        log.warning("resume: config differs from %s: %s", path, "; ".join(training + free))


def check_monitor(config: TrainConfig, metric_names: list[str]) -> None:
    """The callbacks' metric is one the evaluation reports (checked before training)."""
    watching = config.callbacks.keep_best or config.callbacks.early_stopping_patience
    if watching and config.callbacks.monitor not in metric_names:
        raise ConfigError(f"callbacks.monitor={config.callbacks.monitor!r} is not an evaluation metric of this run; "
                          f"they are: {', '.join(sorted(metric_names))}")


def init_wandb(config: TrainConfig, env: DistEnv, num_params: int):
    mode = os.environ.get("WANDB_MODE", config.wandb.mode)
    if not env.is_main or mode == "disabled":
        return None
    import wandb

    run = wandb.init(project=config.wandb.project or config.project_name, entity=config.wandb.entity,
                     name=config.run_name, mode=mode, config=dataclasses.asdict(config))
    run.log({"num_params": num_params}, step=0)
    return run


def reduce_metrics(metrics: dict[str, torch.Tensor], env: DistEnv, global_batch_size: int) -> dict[str, float]:
    """Sum over ranks; losses per example of the global batch, ``count`` (examples that
    halted at this step) as the sum, the rest per halted example."""
    keys = sorted(metrics)
    values = all_reduce_sum(torch.stack([metrics[k].detach().to(torch.float64) for k in keys]), env).tolist()
    raw = dict(zip(keys, values))
    count = max(raw["count"], 1.0)
    divisor = {k: global_batch_size if k.endswith("loss") else 1.0 if k == "count" else count for k in keys}
    return {f"train/{k}": v / divisor[k] for k, v in raw.items()}


def component_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """Gradient norm of each top-level submodule: shows which parts learn (a frozen-by-mistake
    language model reads 0). Gradients are already averaged over DDP ranks."""
    norms = {}
    for name, child in model.named_children():
        grads = [p.grad.detach().float().norm() for p in child.parameters() if p.grad is not None]
        if grads:
            norms[f"train/grad_norm/{name}"] = float(torch.stack(grads).norm())
    return norms


def train(config: TrainConfig, env: DistEnv) -> dict[str, Any]:
    # --- data ---------------------------------------------------------------------------
    if config.global_batch_size % env.world_size:
        raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by {env.world_size} ranks")
    local_batch = config.global_batch_size // env.world_size
    config.data.check_exists()
    train_data = PuzzleDataset(config.data.paths, "train", config.global_batch_size, env.rank, env.world_size,
                               seed=config.seed)
    eval_data = PuzzleDataset(config.data.test_paths or config.data.paths, "test", config.global_batch_size,
                              env.rank, env.world_size, seed=config.seed)
    meta = train_data.metadata
    ids_hash = ckpt.identifiers_hash(config.data.paths)
    # The schedule's length (TRM's estimate); max_steps stops early without changing it, so
    # a run cut by max_steps and resumed matches an uninterrupted one.
    total_steps = int(config.epochs * meta.total_groups * meta.mean_puzzle_examples / config.global_batch_size)
    stop_step = min(total_steps, config.max_steps or total_steps)

    # --- model --------------------------------------------------------------------------
    torch.manual_seed(config.seed)
    shape = DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, local_batch)
    model: ARCModel = build_model(config.arch, shape).to(env.device)
    loss_fn = build_loss(config.loss)
    if config.init_from:
        source = torch.load(config.init_from, map_location="cpu", weights_only=False)
        weights, notes = fit_weights(source.get("model", source), model.state_dict(), ema=source.get("ema"),
                                     source_ids=source.get("identifiers"), target_ids=train_data.identifiers)
        model.load_state_dict(weights)
        for note in notes:
            if env.is_main:
                log.warning("init_from=%s: %s", config.init_from, note)
    num_params = sum(p.numel() for p in model.parameters())
    if config.freeze_weights:
        model.requires_grad_(False)  # before DDP, which registers the parameters it reduces
    # The puzzle-embedding table is made of buffers: DDP must neither sync them (each rank
    # holds its own batch rows) nor reduce their gradients (SparseSignSGD all-gathers them).
    # With frozen weights nothing is left for DDP to reduce.
    use_ddp = env.distributed and not config.freeze_weights
    ddp = DistributedDataParallel(model, broadcast_buffers=False) if use_ddp else None
    step_fn = torch.compile(ddp or model) if config.compile else (ddp or model)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(env.device.type, enabled=config.precision == "fp16")

    # --- optimizers ---------------------------------------------------------------------
    optimizers: list[torch.optim.Optimizer] = []
    base_lrs: list[float] = []
    dense: torch.optim.Optimizer | None = None
    if model.puzzle_emb is not None:
        optimizers.append(SparseSignSGD(model.puzzle_emb, lr=0.0, weight_decay=config.puzzle_emb_weight_decay))
        base_lrs.append(config.puzzle_emb_lr)
    if not config.freeze_weights:
        dense = build_optimizer(config.optimizer, model.param_groups())
        optimizers.append(dense)
        base_lrs.append(config.optimizer.lr)
    dense_params = [p for group in dense.param_groups for p in group["params"]] if dense else []
    ema = EMA(model, config.ema_rate) if config.ema else None

    # --- resume -------------------------------------------------------------------------
    checkpoint_root = config.checkpoint_path or os.path.join("checkpoints", config.project_name, config.run_name)
    step, carry = 0, None
    # Callback state: the best monitored value so far and evaluations since it improved.
    monitor = {"best": None, "stale_evals": 0}
    resume_from = ckpt.resolve_resume(config.resume, checkpoint_root)
    if config.resume == "none" and ckpt.list_checkpoints(checkpoint_root):
        raise ConfigError(f"{checkpoint_root} already holds checkpoints of another run: pass resume=auto to continue "
                          f"it, or choose another run_name / checkpoint_path")
    if config.resume == "auto" and resume_from is None and env.is_main:
        log.info("resume=auto: no checkpoint in %s yet; starting a new run", checkpoint_root)
    if resume_from:
        shared = ckpt.load_shared(resume_from)
        if shared["identifiers_sha256"] != ids_hash and not config.force_identifiers:
            raise ConfigError(f"resume: {resume_from} was trained on data.paths={shared['config']['data']['paths']}, "
                              f"whose puzzle identifiers differ from {config.data.paths}' (identifiers.json); its "
                              f"puzzle embeddings would be wrong. Pass force_identifiers=true to load it anyway.")
        check_resumable(resume_from, shared["config"], config, env)
        model.load_state_dict(shared["model"])
        for opt, state in zip(optimizers, shared["optimizers"], strict=True):
            opt.load_state_dict(state)
        if ema is not None and shared.get("ema") is not None:
            ema.load_state_dict(shared["ema"])
        train_data.load_state_dict(shared["data_position"])
        step = shared["step"]
        monitor = shared.get("monitor", monitor)
        if shared.get("scaler"):
            scaler.load_state_dict(shared["scaler"])
        own = ckpt.load_rank(resume_from, env.rank) if shared["world_size"] == env.world_size else None
        if own is not None:
            carry = ckpt.carry_from_dict(own["carry"], env.device)
            ckpt.set_rng_state(own["rng"])
        if env.is_main:
            log.info("resumed from %s at step %d", resume_from, step)

    in_root = resume_from and os.path.dirname(os.path.abspath(resume_from)) == os.path.abspath(checkpoint_root)
    saved_step = step if in_root else None  # the step of the newest checkpoint in checkpoint_root

    def save(tag: str, score: float | None = None) -> None:
        nonlocal saved_step
        shared = {"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                  "ema": ema.state_dict() if ema else None, "step": step, "data_position": train_data.state_dict(),
                  "config": dataclasses.asdict(config), "identifiers_sha256": ids_hash,
                  "identifiers": train_data.identifiers, "world_size": env.world_size,
                  "monitor": monitor, "scaler": scaler.state_dict() if scaler.is_enabled() else None}
        per_rank = {"carry": ckpt.carry_to_dict(carry), "rng": ckpt.rng_state()}
        path = ckpt.save_checkpoint(checkpoint_root, step, shared, per_rank, env, keep=config.max_checkpoints,
                                    score=score, keep_best=config.callbacks.keep_best, mode=config.callbacks.mode)
        saved_step = step
        if env.is_main:
            log.info("checkpoint (%s): %s", tag, path)

    eval_paths = config.data.test_paths or config.data.paths
    # In-context models read demonstration pairs of the example's own task (train split).
    train_demos = Demonstrations(config.data.paths, model.num_demos, config.seed) if model.num_demos else None
    eval_demos = Demonstrations(eval_paths, model.num_demos, config.seed) if model.num_demos else None
    pooled_voter = ARCVoter(eval_paths[0]) if config.eval.pool_votes and len(eval_paths) == 1 else None

    def run_eval() -> dict[str, float]:
        eval_model = model
        if ema is not None:
            with torch.random.fork_rng(devices=[]):  # building the copy must not move the training RNG (resume)
                eval_model = build_model(config.arch, shape).to(env.device)
            eval_model.load_state_dict(model.state_dict())
            ema.copy_to(eval_model)
        # Votes are per evaluation unless eval.pool_votes (TRM's default, which grows memory).
        voter = pooled_voter or (ARCVoter(eval_paths[0]) if len(eval_paths) == 1 else None)
        metrics, submission = evaluate_examples(eval_model, loss_fn, eval_data, env, voter,
                                                config.eval.pass_ks, config.eval.ranking, demos=eval_demos)
        if submission is not None and env.is_main:
            out_dir = os.path.join(checkpoint_root, f"evaluator_ARC_step_{step}")
            os.makedirs(out_dir, exist_ok=True)
            write_submission(os.path.join(out_dir, "submission.json"), submission)
            write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
        return metrics

    if config.evaluate and (config.callbacks.keep_best or config.callbacks.early_stopping_patience):
        # One test task through the evaluation now, so a misspelled monitor fails in seconds,
        # not at the first evaluation hours in; the RNG stays as it was (resume).
        with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
            preview, _ = evaluate_examples(model, loss_fn, eval_data, env, ARCVoter(eval_paths[0]) if len(eval_paths) == 1
                                           else None, config.eval.pass_ks, config.eval.ranking, task_limit=1,
                                           demos=eval_demos)
        check_monitor(config, list(preview))

    # --- loop ---------------------------------------------------------------------------
    wandb_run = init_wandb(config, env, num_params)
    bar = tqdm(total=stop_step, initial=step, disable=not (env.is_main and config.progress_bar), unit="step")
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    started = time.perf_counter()
    model.train()
    epoch = train_data.state_dict()["epoch"]
    out_of_time = stopped_early = False
    while epoch < config.epochs and step < stop_step and not (out_of_time or stopped_early):
        for _set, batch, _n in train_data:
            if train_demos is not None:
                batch = train_demos.attach(batch)
            batch = {k: v.to(env.device) for k, v in batch.items()}
            if carry is None:
                carry = model.initial_carry(batch)
            with torch.autocast(env.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                carry, output = step_fn(carry, batch)
                loss, metrics = loss_fn(output, carry.current_data)
            # Per-rank mean; DDP averages over ranks -> the mean over the global batch.
            scaler.scale(loss / local_batch).backward()
            if dense is not None:
                scaler.unscale_(dense)
            log_now = (step + 1) % config.log_interval == 0 or step + 1 == stop_step
            grad_norms = component_grad_norms(model) if log_now else {}
            if config.grad_clip_norm is not None and dense_params:
                torch.nn.utils.clip_grad_norm_(dense_params, config.grad_clip_norm)
            factor = lr_factor(config, step + 1, total_steps)
            for opt, base_lr in zip(optimizers, base_lrs, strict=True):
                for group in opt.param_groups:
                    group["lr"] = base_lr * factor * group.get("lr_scale", 1.0)
                if opt is dense:
                    scaler.step(opt)  # skipped when fp16 gradients overflowed
                elif not scaler.is_enabled() or all(torch.isfinite(p.grad).all() for g in opt.param_groups
                                                    for p in g["params"] if p.grad is not None):
                    opt.step()  # sign-SGD ignores the loss scale
                opt.zero_grad(set_to_none=True)
            scaler.update()
            lr = config.optimizer.lr * factor
            if ema is not None:
                ema.update(model)
            step += 1
            bar.update(1)
            if log_now:
                last_train = {**reduce_metrics(metrics, env, config.global_batch_size), **grad_norms, "train/lr": lr}
                if wandb_run is not None:
                    wandb_run.log(last_train, step=step)
                bar.set_postfix(loss=f"{last_train['train/lm_loss']:.3f}", acc=f"{last_train['train/accuracy']:.3f}")
            if config.checkpoint_interval_steps and step % config.checkpoint_interval_steps == 0:
                save("interval")
            if config.max_minutes is not None:  # rank 0's clock decides, so all ranks stop together
                late = float(env.is_main and time.perf_counter() - started > 60 * config.max_minutes)
                out_of_time = bool(all_reduce_sum(torch.tensor([late], device=env.device), env).item())
            if step >= stop_step or out_of_time:
                break
        epoch = train_data.state_dict()["epoch"]
        finished = epoch >= config.epochs or step >= stop_step or out_of_time
        due = epoch % config.eval_interval == 0 or finished
        if config.evaluate and due and epoch >= config.min_eval_interval:
            last_eval = run_eval()
            if env.is_main:
                print(f"epoch {epoch} step {step} [test split, per augmented example, no voting]: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items() if k.startswith("all/")))
                if "ARC/pass@1" in last_eval:
                    print(f"  [test split, {last_eval['ARC/views_per_input']:.0f} augmented views voted per input; "
                          f"pass@k per task as ARC Prize, over {last_eval['ARC/tasks_scored']:.0f} tasks]: "
                          + ", ".join(f"pass@{k} {last_eval[f'ARC/pass@{k}']:.4f}" for k in (1, 2, 10)
                                      if f"ARC/pass@{k}" in last_eval))
            if wandb_run is not None:
                wandb_run.log(last_eval, step=step)
            score = last_eval.get(config.callbacks.monitor)  # check_monitor: there when callbacks watch it
            if score is not None:
                improved = prefers(config, score, monitor["best"])
                monitor = {"best": score if improved else monitor["best"],
                           "stale_evals": 0 if improved else monitor["stale_evals"] + 1}
            patience = config.callbacks.early_stopping_patience
            if patience and monitor["stale_evals"] >= patience:
                stopped_early = True
                if env.is_main:
                    print(f"early stop: {config.callbacks.monitor} has not improved on {monitor['best']:.4f} "
                          f"for {patience} evaluations")
            if config.checkpoint_every_eval or stopped_early:
                save("eval", score)
    bar.close()
    if saved_step != step:  # every run ends with its weights on disk, however it stopped
        save("final")
    if wandb_run is not None:
        wandb_run.finish()
    summary = {"step": step, "seconds": time.perf_counter() - started, "num_params": num_params,
               **last_train, **last_eval, "best_monitor": monitor["best"]}
    # --- cleanup: free DDP objects before the process group goes ----------------------------
    del ddp, step_fn
    gc.collect()
    return summary


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the best value of ``callbacks.monitor``: the objective of an Optuna sweep
    (``-m hydra/sweeper=optuna``; set ``hydra.sweeper.direction`` to match callbacks.mode)."""
    try:
        config = load_config(cfg)
    except ConfigError as e:
        exit_with_error(e)
    if config.run_name is None:
        config.run_name = f"{config.arch.name}-{config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    env = init_distributed(config.device)
    try:
        if env.is_main:
            log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        summary = train(config, env)
        if env.is_main:
            log.info("final: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in summary.items()))
        return summary["best_monitor"]
    except ConfigError as e:  # found before training started: nothing to lose
        exit_with_error(e)
    finally:
        cleanup_distributed(env)


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:])  # Hydra's own composition errors are a page of traceback
    except ConfigError as e:
        exit_with_error(e)
    main()
