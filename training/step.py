"""One optimizer step of any family, exactly as pretrain.py trains (the throughput bench
calls the same function)."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from training.schedule import lr_factor
from training.state import TrainState, carry_key
from utils.distributed import DistEnv, all_reduce_sum


def train_step(state: TrainState, batch: dict[str, torch.Tensor], grad_norms: bool = False) -> dict[str, torch.Tensor]:
    """Forward (under autocast), loss and backward of each of the ``grad_accum_steps``
    micro-batches, then unscale and clip, the scheduled lr, every optimizer's step, the EMA;
    ``state.step`` advances by one. Returns the loss's metrics (sums over this rank's
    examples, unreduced) and, with ``grad_norms``, each top-level submodule's gradient norm
    under ``grad_norm/<child>``.

    Each micro-batch slot and canvas size keeps its own carry, so an unhalted example
    continues with its own state (deep supervision as without accumulation). Losses are sums
    over examples divided by the rank's whole batch, so the accumulated gradient is the
    whole batch's; DDP reduces gradients once, on the last micro-batch."""
    model, config = state.model, state.config
    k = config.grad_accum_steps
    size = batch["inputs"].shape[0] // k
    totals: dict[str, torch.Tensor] = {}
    for i in range(k):
        micro = batch if k == 1 else {name: v[i * size:(i + 1) * size] for name, v in batch.items()}
        if model.puzzle_emb is not None:
            model.puzzle_emb.micro_rows = None if k == 1 else (i * size, (i + 1) * size)
        metrics = _forward_backward(state, micro, carry_key(i, micro["inputs"].shape[1]), sync=i == k - 1)
        totals = metrics if not totals else {name: totals[name] + v for name, v in metrics.items()}
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
    return {**totals, **norms, "lr": torch.tensor(config.optimizer.lr * factor)}


def _forward_backward(state: TrainState, batch: dict[str, torch.Tensor], key: str, sync: bool) -> dict[str, torch.Tensor]:
    """One (micro-)batch through the carry stored under ``key``; gradients accumulate."""
    carry = state.carries.get(key)
    if carry is None or carry.current_data["inputs"].shape != batch["inputs"].shape:
        carry = state.model.initial_carry(batch)  # first use, or a batch size changed on resume
    dtype = state.autocast_dtype
    with _maybe_no_sync(state.forward, sync):
        with torch.autocast(batch["inputs"].device.type, dtype=dtype, enabled=dtype is not None):
            carry, output = state.forward(carry, batch)
            loss, metrics = state.loss_fn(output, carry.current_data)
        # Per-rank mean over the whole local batch; DDP averages over ranks -> the global mean.
        state.scaler.scale(loss / state.local_batch).backward()
    state.carries[key] = carry
    return metrics


def _maybe_no_sync(forward: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` on all but the last micro-batch: gradients are all-reduced once."""
    ddp = getattr(forward, "_orig_mod", forward)  # torch.compile wraps the DDP module
    if sync or not isinstance(ddp, DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


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
