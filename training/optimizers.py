"""Optimizers used by the trainer: Adam-atan2 for the dense parameters and sign-SGD for the
sparse per-puzzle embedding table.

``AdamATan2`` is a pure-PyTorch implementation of the update computed by the CUDA kernel of
the optional ``adam-atan2`` package (the ``[gpu]`` extra), so the same configuration trains
on machines where that package does not build. ``adam_atan2()`` picks the CUDA package when
it can and this class otherwise.

``OptimizerConfig`` is the schema of ``conf/optimizer/*.yaml`` and ``build_optimizer`` turns
it into the dense-parameter optimizer (adam, adamw or adam_atan2).

``SparseSignSGD`` drives ``models.sparse_embedding.PuzzleEmbedding`` and performs that
module's gradient synchronisation across ranks itself (the documented exception to "DDP
syncs all gradients": the table is made of buffers that DDP never sees).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.distributed as dist

from models.sparse_embedding import PuzzleEmbedding
from utils.schema import check_ranges, setting

try:  # optional [gpu] extra; its CUDA extension does not build on CPU-only machines
    from adam_atan2 import AdamATan2 as _CudaAdamATan2
except (ImportError, OSError):  # pragma: no cover - depends on the machine
    _CudaAdamATan2 = None

__all__ = ["AdamATan2", "OptimizerConfig", "SparseSignSGD", "adam_atan2", "build_optimizer"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_lr_wd(lr: float, weight_decay: float) -> None:
    if not lr >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")


def _evaluate_closure(closure: Callable[[], float] | None) -> float | None:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class AdamATan2(torch.optim.Optimizer):
    r"""Adam with ``atan2`` in place of ``m / (sqrt(v) + eps)`` (Everett et al., 2024).

    Per element, each step (the update of the ``adam-atan2`` CUDA kernel)::

        step += 1
        bc1, bc2 = 1 - beta1**step, 1 - beta2**step
        p = p * (1 - lr * weight_decay)            # decoupled weight decay, first
        m = lerp(m, g, 1 - beta1)
        v = lerp(v, g * g, 1 - beta2)
        p = p - (lr / bc1) * atan2(m, sqrt(v) / sqrt(bc2))

    The first bias correction scales the step size, outside ``atan2`` (the kernel's
    ``step_size = lr / bias_correction1``); ``atan2`` is not linear, so moving ``1 / bc1``
    inside it would be another optimizer (step 1 would move ``0.785 lr`` instead of
    ``0.997 lr``). ``atan2`` needs no epsilon and bounds every element's update by
    ``lr / bc1 * pi / 2`` however large (or small) the gradient. Note there are no extra scale factors (the
    ``adam-atan2-pytorch`` package has ``a``/``b``; the CUDA kernel does not).

    Dtypes: the moments ``exp_avg``/``exp_avg_sq`` are stored in the parameter's dtype, as
    the CUDA kernel does (and as ``Optimizer.load_state_dict`` casts floating state anyway),
    so float32 parameters get float32 state. For float16/bfloat16 parameters the step is
    computed in float32 (parameter, gradient and moments upcast) and the results rounded
    back once. ``state["step"]`` is a 0-dim float32 CPU tensor per parameter, as in
    ``torch.optim.Adam``. ``lr``, ``betas`` and ``weight_decay`` are read from the param
    group on every step, so a scheduler may change them between steps. Parameters whose
    ``grad`` is ``None`` are skipped entirely (no decay); a zero gradient gives decay only.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1
    ):
        _check_lr_wd(lr, weight_decay)
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas} (need two values)")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta{i + 1}: {beta} (must be in [0, 1))")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @overload  # Optimizer.step's two signatures: the loss with a closure, None without
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate_closure(closure)

        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = (float(b) for b in group["betas"])
            wd = float(group["weight_decay"])
            _check_lr_wd(lr, wd)

            # Bucket by (device, dtype) so the foreach ops see homogeneous lists.
            buckets: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, ...]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("AdamATan2 does not support complex parameters")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buckets[(p.device, p.dtype)].append((p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"]))

            for (_, dtype), items in buckets.items():
                params, grads, exp_avgs, exp_avg_sqs, steps = (list(x) for x in zip(*items))
                self._update(params, grads, exp_avgs, exp_avg_sqs, steps, dtype, lr, beta1, beta2, wd)
        return loss

    @staticmethod
    def _update(
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
        exp_avg_sqs: list[torch.Tensor],
        steps: list[torch.Tensor],
        dtype: torch.dtype,
        lr: float,
        beta1: float,
        beta2: float,
        wd: float,
    ) -> None:
        torch._foreach_add_(steps, 1.0)
        step_values = [s.item() for s in steps]
        step_sizes = [lr / (1.0 - beta1**s) for s in step_values]
        sqrt_bc2 = [math.sqrt(1.0 - beta2**s) for s in step_values]

        low = dtype in _LOW_PRECISION
        if low:  # float32 math, results written back once at the end
            p32 = [p.float() for p in params]
            g32 = [g.float() for g in grads]
            m32 = [m.float() for m in exp_avgs]
            v32 = [v.float() for v in exp_avg_sqs]
        else:
            p32, g32, m32, v32 = params, grads, exp_avgs, exp_avg_sqs
            if any(g.dtype != dtype for g in g32):
                g32 = [g.to(dtype) for g in g32]

        if wd != 0.0 and lr != 0.0:
            torch._foreach_mul_(p32, 1.0 - lr * wd)
        torch._foreach_lerp_(m32, g32, 1.0 - beta1)
        torch._foreach_lerp_(v32, torch._foreach_mul(g32, g32), 1.0 - beta2)
        v_hat = torch._foreach_sqrt(v32)
        torch._foreach_div_(v_hat, sqrt_bc2)
        updates = [torch.atan2(m, v).mul_(-step_size) for m, v, step_size in zip(m32, v_hat, step_sizes)]
        torch._foreach_add_(p32, updates)

        if low:
            for dst, src in zip(params + exp_avgs + exp_avg_sqs, p32 + m32 + v32):
                dst.copy_(src)


def _iter_tensors(params: Iterable[Any]) -> list[torch.Tensor]:
    tensors: list[torch.Tensor] = []
    for item in params:
        if isinstance(item, dict):
            p = item["params"]
            tensors.extend([p] if isinstance(p, torch.Tensor) else list(p))
        else:
            tensors.append(item)
    return tensors


def adam_atan2(
    params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1
) -> torch.optim.Optimizer:
    """The CUDA ``adam_atan2.AdamATan2`` when that package imports and every parameter is on
    CUDA; the pure-PyTorch ``AdamATan2`` (same update) otherwise."""
    params = list(params)  # may be a generator; it is read twice
    tensors = _iter_tensors(params)
    if _CudaAdamATan2 is not None and tensors and all(t.is_cuda for t in tensors):
        return _CudaAdamATan2(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return AdamATan2(params, lr=lr, betas=betas, weight_decay=weight_decay)


OPTIMIZER_NAMES = ("adam", "adamw", "adam_atan2")


@dataclass
class OptimizerConfig:
    """Schema of the ``optimizer`` options (``conf/optimizer/<name>.yaml``): the optimizer of
    the dense parameters. ``lr`` is the peak of the trainer's schedule, which overwrites the
    param groups' ``lr`` every step. ``eps`` is unused by adam_atan2 (it has none)."""

    name: str = "adam_atan2"  # adam (L2 decay in the gradient) | adamw | adam_atan2
    lr: float = setting(1e-4, ge=0)
    betas: list[float] = setting(factory=lambda: [0.9, 0.95], ge=0, lt=1)
    weight_decay: float = setting(0.1, ge=0)
    eps: float = setting(1e-8, gt=0)

    def validate(self) -> None:
        check_ranges(self, "optimizer.")
        bad = []
        if self.name not in OPTIMIZER_NAMES:
            bad.append(f"optimizer.name={self.name!r} (one of {', '.join(OPTIMIZER_NAMES)})")
        if len(self.betas) != 2:
            bad.append(f"optimizer.betas={list(self.betas)} (two values)")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


def build_optimizer(config: OptimizerConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """The dense-parameter optimizer named by ``config.name``."""
    config.validate()
    betas = (float(config.betas[0]), float(config.betas[1]))
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay)
    return adam_atan2(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay)


def _all_gather(t: torch.Tensor, world_size: int, group: Any) -> torch.Tensor:
    out = t.new_empty((world_size * t.shape[0], *t.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in newer torch
    gather(out, t.contiguous(), group=group)
    return out


class SparseSignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on the rows of a ``PuzzleEmbedding`` table that
    the current (global) batch touched.

    Why sign-SGD: each puzzle's row gets a gradient only in the rare steps where that
    puzzle is in the batch. Adam on such sparse gradients is close to sign-SGD (with the
    moments reset by bias correction, ``m / sqrt(v)`` of a lone gradient is its sign), and
    sign-SGD needs no per-row moments -- no optimizer state the size of the table.

    ``step()``: with ``g = local_weights.grad`` ([batch, dim]) and ``ids = local_ids``:

    1. when ``torch.distributed`` is initialised and ``process_group`` (default: the world)
       has more than one rank, ``g`` and ``ids`` are all-gathered from every rank. The
       embedding is not a DDP parameter, so this is its gradient synchronisation;
    2. rows of duplicate ids are summed (within and across ranks);
    3. for each distinct id: ``w[id] = w[id] * (1 - lr * wd) - lr * sign(summed_g)``.

    Rows not in the batch are untouched, weight decay included (as in TinyRecursiveModels).
    If ``local_weights.grad`` is ``None`` the step does nothing. Every rank ends with the
    same update, so tables that start equal stay equal.
    """

    _ROLES = ("weights", "local_weights", "local_ids")  # order of the one param group's params

    def __init__(self, embedding: PuzzleEmbedding, lr: float = 1e-2, weight_decay: float = 0.1, process_group: Any = None):
        _check_lr_wd(lr, weight_decay)
        weights, local_weights, local_ids = embedding.weights, embedding.local_weights, embedding.local_ids
        if weights.ndim != 2 or local_weights.ndim != 2 or local_weights.shape[1] != weights.shape[1]:
            raise ValueError(
                f"weights {tuple(weights.shape)} and local_weights {tuple(local_weights.shape)} "
                "must be [rows, dim] with the same dim"
            )
        if local_ids.shape != (local_weights.shape[0],) or local_ids.is_floating_point():
            raise ValueError(
                f"local_ids must be integer of shape ({local_weights.shape[0]},), "
                f"got {local_ids.dtype} {tuple(local_ids.shape)}"
            )
        self.process_group = process_group
        super().__init__([weights, local_weights, local_ids], dict(lr=lr, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError("SparseSignSGD drives exactly one PuzzleEmbedding; create one optimizer per embedding")
        super().add_param_group(param_group)

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    @overload  # Optimizer.step's two signatures: the loss with a closure, None without
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate_closure(closure)

        for group in self.param_groups:
            roles = dict(zip(self._ROLES, group["params"]))
            weights, grad, ids = roles["weights"], roles["local_weights"].grad, roles["local_ids"]
            if grad is None:
                continue
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            _check_lr_wd(lr, wd)

            world_size = self._world_size()
            if world_size > 1:
                grad = _all_gather(grad, world_size, self.process_group)
                ids = _all_gather(ids, world_size, self.process_group)

            unique_ids, inverse = torch.unique(ids.long(), return_inverse=True)
            summed = torch.zeros((unique_ids.shape[0], grad.shape[1]), dtype=weights.dtype, device=weights.device)
            summed.index_add_(0, inverse.to(weights.device), grad.to(device=weights.device, dtype=weights.dtype))
            unique_ids = unique_ids.to(weights.device)
            rows = weights.index_select(0, unique_ids)
            rows.mul_(1.0 - lr * wd).add_(torch.sign(summed), alpha=-lr)
            weights.index_copy_(0, unique_ids, rows)
        return loss
