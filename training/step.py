"""One optimizer step of any family, exactly as pretrain.py trains (the throughput bench
calls the same function)."""

from __future__ import annotations

import torch

from training.schedule import lr_factor
from training.state import TrainState
from utils.distributed import DistEnv, all_reduce_sum


def train_step(state: TrainState, batch: dict[str, torch.Tensor], grad_norms: bool = False) -> dict[str, torch.Tensor]:
    """Forward (under autocast), loss, backward, unscale and clip, the scheduled lr, every
    optimizer's step, the EMA; ``state.step`` advances by one. Returns the loss's metrics
    (sums over this rank's examples, unreduced) and, with ``grad_norms``, each top-level
    submodule's gradient norm under ``grad_norm/<child>``."""
    model, config = state.model, state.config
    if state.carry is None:
        state.carry = model.initial_carry(batch)
    dtype = state.autocast_dtype
    with torch.autocast(batch["inputs"].device.type, dtype=dtype, enabled=dtype is not None):
        state.carry, output = state.forward(state.carry, batch)
        loss, metrics = state.loss_fn(output, state.carry.current_data)
    # Per-rank mean; DDP averages over ranks -> the mean over the global batch.
    state.scaler.scale(loss / state.local_batch).backward()
    if state.dense is not None:
        state.scaler.unscale_(state.dense)
    norms = component_grad_norms(model) if grad_norms else {}
    if config.grad_clip_norm is not None and state.dense is not None:
        dense_params = [p for group in state.dense.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(dense_params, config.grad_clip_norm)
    factor = lr_factor(config, state.step + 1, state.total_steps)
    for opt, base_lr in zip(state.optimizers, state.base_lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = base_lr * factor * group.get("lr_scale", 1.0)
        if opt is state.dense:
            state.scaler.step(opt)  # skipped when fp16 gradients overflowed
        elif not state.scaler.is_enabled() or all(torch.isfinite(p.grad).all() for g in opt.param_groups
                                                  for p in g["params"] if p.grad is not None):
            opt.step()  # sign-SGD ignores the loss scale
        opt.zero_grad(set_to_none=True)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update(model)
    state.step += 1
    return {**metrics, **norms, "lr": torch.tensor(config.optimizer.lr * factor)}


def component_grad_norms(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradient norm of each top-level submodule: shows which parts learn (a frozen-by-mistake
    language model reads 0). Gradients are already averaged over DDP ranks."""
    norms = {}
    for name, child in model.named_children():
        grads = [p.grad.detach().float().norm() for p in child.parameters() if p.grad is not None]
        if grads:
            norms[f"grad_norm/{name}"] = torch.stack(grads).norm()
    return norms


def reduce_metrics(metrics: dict[str, torch.Tensor], env: DistEnv, global_batch_size: int) -> dict[str, float]:
    """``train/*`` figures of one step: the loss's sums over all ranks, losses per example of
    the global batch, ``count`` (examples that halted at this step) as the sum, the rest per
    halted example. ``lr`` and gradient norms are the same on every rank and pass through."""
    local = {k: v for k, v in metrics.items() if k == "lr" or k.startswith("grad_norm/")}
    keys = sorted(k for k in metrics if k not in local)
    values = all_reduce_sum(torch.stack([metrics[k].detach().to(torch.float64) for k in keys]), env).tolist()
    raw = dict(zip(keys, values))
    count = max(raw["count"], 1.0)
    divisor = {k: global_batch_size if k.endswith("loss") else 1.0 if k == "count" else count for k in keys}
    return {**{f"train/{k}": v / divisor[k] for k, v in raw.items()},
            **{f"train/{k}": float(v) for k, v in local.items()}}
