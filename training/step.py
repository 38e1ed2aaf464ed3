"""One optimizer step of any family, exactly as pretrain.py trains (the throughput bench
calls the same function)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training.schedule import lr_factor
from training.state import TrainState, carry_key, checkpoint_root
from utils import checkpoint as ckpt
from utils.distributed import DistEnv, all_reduce_sum

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """``max_bad_steps`` optimizer steps in a row had a non-finite loss or gradient. None of
    them changed the weights; the message names the steps and the checkpoint to resume from."""


def train_step(state: TrainState, batch: dict[str, torch.Tensor], grad_norms: bool = False) -> dict[str, torch.Tensor]:
    """Forward (under autocast), loss and backward of each of the ``grad_accum_steps``
    micro-batches, then unscale and clip, the scheduled lr, every optimizer's step, the EMA;
    ``state.step`` advances by one. Returns the loss's metrics (sums over this rank's
    examples, unreduced), ``skipped_steps`` and, with ``grad_norms``, each top-level
    submodule's gradient norm under ``grad_norm/<child>``.

    Each micro-batch slot and canvas size keeps its own carry, so an unhalted example
    continues with its own state (deep supervision as without accumulation). Losses are sums
    over examples divided by the rank's whole batch, so the accumulated gradient is the
    whole batch's; DDP reduces gradients once, on the last micro-batch.

    A bad step -- a non-finite loss in any micro-batch, or a non-finite dense or puzzle-table
    gradient (after unscaling), on any rank -- changes nothing that is trained: no optimizer
    step, no EMA update, the gradients are dropped, and so are the carries it used (their
    latent state may be NaN and would feed the next step). ``state.step`` still advances
    (steps count batches consumed, which keeps the data position and the lr schedule
    aligned); ``state.skipped_steps`` counts bad steps. After ``max_bad_steps`` bad steps in
    a row: NonFiniteLossError. With fp16, a gradient overflow with a finite loss is the
    GradScaler's business, not a bad step: it skips the step and lowers the loss scale."""
    model, config = state.model, state.config
    k = config.grad_accum_steps
    size = batch["inputs"].shape[0] // k
    totals: dict[str, torch.Tensor] = {}
    keys: list[str] = []
    finite_loss = torch.ones((), dtype=torch.bool, device=batch["inputs"].device)
    for i in range(k):
        micro = batch if k == 1 else {name: v[i * size : (i + 1) * size] for name, v in batch.items()}
        if model.puzzle_emb is not None:
            model.puzzle_emb.micro_rows = None if k == 1 else (i * size, (i + 1) * size)
        keys.append(carry_key(i, micro["inputs"].shape[1]))
        metrics, loss = _forward_backward(state, micro, keys[-1], sync=i == k - 1)
        finite_loss &= torch.isfinite(loss.detach()).all()
        totals = metrics if not totals else {name: totals[name] + v for name, v in metrics.items()}
    if state.dense is not None:
        state.scaler.unscale_(state.dense)
    bad_loss, bad_grad = _non_finite(state, finite_loss)
    norms = component_grad_norms(model) if grad_norms else {}
    # fp16: a finite loss with overflowed gradients is the scaler's to handle (it skips the step).
    bad = bad_loss or (bad_grad and not state.scaler.is_enabled())
    factor = lr_factor(config, state.step + 1, state.total_steps)
    if bad:
        for opt in state.optimizers:
            opt.zero_grad(set_to_none=True)
        for key in keys:  # NaN latent states would continue into the next step
            state.carries.pop(key, None)
    else:
        if config.grad_clip_norm is not None and state.dense is not None:
            dense_params = [p for group in state.dense.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(dense_params, config.grad_clip_norm)
        for opt, base_lr in zip(state.optimizers, state.base_lrs, strict=True):
            for group in opt.param_groups:  # a group's own peak lr (lr_absolute) or a share of the optimizer's
                peak = group["lr_absolute"] if "lr_absolute" in group else base_lr * group.get("lr_scale", 1.0)
                group["lr"] = peak * factor
            if opt is state.dense:
                state.scaler.step(opt)  # skipped when fp16 gradients overflowed
            elif not bad_grad:  # sign-SGD ignores the loss scale; every rank decides alike
                opt.step()
            opt.zero_grad(set_to_none=True)
    state.scaler.update()  # fp16: lowers the scale after an overflow
    if state.ema is not None and not bad:
        state.ema.update(model)
    state.step += 1
    _count_bad_step(state, bad)
    return {
        **totals,
        **norms,
        "lr": torch.tensor(config.optimizer.lr * factor),
        "skipped_steps": torch.tensor(float(state.skipped_steps)),
    }


def _non_finite(state: TrainState, finite_loss: torch.Tensor) -> tuple[bool, bool]:
    """(any rank's loss is non-finite, any rank's dense or sparse gradient is): one
    all-reduce, so every rank skips (and calls the sparse optimizer's collectives) alike.
    A sum is non-finite when any element is (or on an overflow, which is as bad)."""
    grads = [
        p.grad.detach()
        for opt in state.optimizers
        for group in opt.param_groups
        for p in group["params"]
        if p.grad is not None
    ]
    sums = torch.stack([g.sum(dtype=torch.float32) for g in grads]).sum() if grads else torch.zeros(())
    flags = torch.stack([~finite_loss, ~torch.isfinite(sums.to(finite_loss.device))]).to(torch.float32)
    if state.world_size > 1:
        dist.all_reduce(flags)
    bad_loss, bad_grad = flags.tolist()  # the step's one host sync (fp16's scaler.step makes one too)
    return bad_loss > 0, bad_grad > 0


def _count_bad_step(state: TrainState, bad: bool) -> None:
    """Count a bad step (after ``state.step`` advanced); stop after ``max_bad_steps`` in a row."""
    if not bad:
        state.bad_steps_in_a_row = 0
        return
    state.skipped_steps += 1
    state.bad_steps_in_a_row += 1
    first, limit = state.step - state.bad_steps_in_a_row + 1, state.config.max_bad_steps
    if state.world_size == 1 or dist.get_rank() == 0:
        log.warning(
            "step %d: non-finite loss or gradient; optimizer step skipped, weights unchanged (%d bad in a row, %d in all)",
            state.step,
            state.bad_steps_in_a_row,
            state.skipped_steps,
        )
    if limit and state.bad_steps_in_a_row >= limit:
        steps = f"step {first}" if first == state.step else f"steps {first}..{state.step}"
        raise NonFiniteLossError(
            f"non-finite loss/gradient at {steps} ({state.bad_steps_in_a_row} in a row, "
            f"max_bad_steps={limit}); none of them changed the weights. "
            f"{_resume_hint(state, first)}"
        )


def _resume_hint(state: TrainState, first_bad: int) -> str:
    root = checkpoint_root(state.config)
    try:
        path = ckpt.newest_checkpoint(root, quiet=True)
    except Exception as e:  # a damaged folder must not hide the error being reported
        return f"No usable checkpoint in {root} ({e})"
    if path is None:
        return f"There is no checkpoint in {root} yet: the run must start again"
    saved = next((step for step, p in ckpt.list_checkpoints(root) if p == path), None)
    during = (
        f" (saved during those steps: its weights are those of step {first_bad - 1})"
        if saved is not None and saved >= first_bad
        else ""
    )
    return (
        f"The newest good checkpoint is {path}{during}; resume from it (resume=auto) with a lower lr or "
        f"grad_clip_norm, or check the data"
    )


def _forward_backward(
    state: TrainState, batch: dict[str, torch.Tensor], key: str, sync: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One (micro-)batch through the carry stored under ``key``; gradients accumulate.
    Returns the loss's metrics and the loss."""
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
    return metrics, loss


def _maybe_no_sync(forward: Callable[..., Any], sync: bool) -> contextlib.AbstractContextManager:
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


def add_metrics(window: dict[str, torch.Tensor] | None, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sums of a log window: the loss's metrics added step by step; ``lr``,
    ``skipped_steps`` and gradient norms (the same on every rank) are the last step's."""
    if window is None:
        return {k: v.detach() for k, v in metrics.items()}
    return {k: v.detach() if _passes_through(k) else window[k] + v.detach() for k, v in metrics.items()}


def _passes_through(key: str) -> bool:
    return key in ("lr", "skipped_steps") or key.startswith("grad_norm/")


def reduce_metrics(
    metrics: dict[str, torch.Tensor], env: DistEnv, global_batch_size: int, steps: int = 1
) -> dict[str, float]:
    """``train/*`` figures of a log window of ``steps`` steps (``add_metrics``' sums): summed
    over all ranks, losses per example of the window's global batches, ``count`` (examples
    that halted in the window) as the sum, the rest (accuracy, exact_accuracy, ...) per
    halted example, and left out when none halted: a window without a halt measured nothing.
    ``lr``, ``skipped_steps`` and gradient norms pass through."""
    local = {k: v for k, v in metrics.items() if _passes_through(k)}
    keys = sorted(k for k in metrics if k not in local)
    values = all_reduce_sum(torch.stack([metrics[k].detach().to(torch.float64) for k in keys]), env).tolist()
    raw = dict(zip(keys, values))
    count = raw.get("count", 1.0)
    figures = {}
    for k, v in raw.items():
        if k.endswith("loss"):
            figures[f"train/{k}"] = v / (global_batch_size * steps)
        elif k == "count":
            figures["train/count"] = v
        elif count > 0:
            figures[f"train/{k}"] = v / count
    return {**figures, **{f"train/{k}": float(v) for k, v in local.items()}}
