"""Optimizers used by the trainer: Adam-atan2 for the dense parameters and sign-SGD for the
sparse per-puzzle embedding table.

``AdamATan2`` is a pure-PyTorch implementation of the update computed by the CUDA kernel of
the optional ``adam-atan2`` package (the ``[gpu]`` extra), so the same configuration trains
on machines where that package does not build. ``adam_atan2()`` picks the CUDA package when
it can and this class otherwise.

``Muon`` is the optimizer URM (UbiquantAI/URM, ``models/muon.py``) trains ARC-AGI-2 with:
Newton-Schulz-orthogonalised momentum for the 2-D parameters and AdamW for the others, one
``torch.optim.Optimizer`` whose param groups say which rule they follow.

``OptimizerConfig`` is the schema of ``conf/optimizer/*.yaml`` and ``build_optimizer`` turns
it into the dense-parameter optimizer (adam, adamw, adam_atan2 or muon).

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

__all__ = [
    "URM_NS_COEFFICIENTS",
    "AdamATan2",
    "Muon",
    "OptimizerConfig",
    "SparseSignSGD",
    "adam_atan2",
    "build_optimizer",
    "orthogonalize",
]

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


# URM's quintic Newton-Schulz coefficients (a, b, c), one row per iteration; iterations past
# the table repeat its last row. (torch.optim.Muon uses one fixed (3.4445, -4.775, 2.0315)
# for every iteration and adds an eps to the norm, so it cannot reproduce URM's updates.)
URM_NS_COEFFICIENTS: tuple[tuple[float, float, float], ...] = (
    (7.2086, -15.5131, 9.0178),
    (3.9623, -2.5813, 0.4542),
    (3.9466, -2.5765, 0.4544),
    (3.8991, -2.5671, 0.4566),
    (3.7186, -2.5308, 0.4653),
    (3.1390, -2.3073, 0.4733),
    (2.1715, -1.5246, 0.3885),
    (1.8648, -1.2224, 0.3577),
)


def orthogonalize(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """URM's approximate ``U V^T`` of ``matrix = U S V^T`` (float32 result, the input's shape).

    Precision, as in URM: the input is rounded to bfloat16 once (URM stores the Newton-Schulz
    input as ``.bfloat16()``), then every iteration runs in float32 (URM's ``msign`` upcasts
    to float32 before iterating). A tall matrix is iterated transposed. With
    ``X = M / max(||M||_F, 1e-7)`` and ``(a, b, c)`` the ``i``-th row of
    ``URM_NS_COEFFICIENTS``, each of the ``steps`` iterations is
    ``A = X X^T; X = a X + (b A + c A A) X``, with ``addmm`` as in URM (so that the roundings
    match theirs)."""
    if matrix.ndim != 2:
        raise ValueError(f"orthogonalize needs a matrix, got shape {tuple(matrix.shape)}")
    x = matrix.to(torch.bfloat16).float()
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.mT
    x = x / x.norm().clamp_min(1e-7)
    for i in range(steps):
        a, b, c = URM_NS_COEFFICIENTS[min(i, len(URM_NS_COEFFICIENTS) - 1)]
        gram = x @ x.mT
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a, alpha=1.0)
    return x.mT if transposed else x


def _split_by_rule(params: Iterable[Any]) -> list[dict[str, Any]]:
    """Param groups with ``use_muon`` set: a group (or the plain parameter list) without it
    becomes up to two groups with its other keys (``lr_scale``, ...), the 2-D parameters
    first (Muon), then the others (AdamW), empty ones left out, as URM's ``p.ndim == 2`` split."""
    items = list(params)
    if not items:
        raise ValueError("Muon got an empty parameter list")
    groups = items if all(isinstance(item, dict) for item in items) else [{"params": items}]
    split: list[dict[str, Any]] = []
    for group in groups:
        if "use_muon" in group:
            split.append(group)
            continue
        members = group["params"]
        members = [members] if isinstance(members, torch.Tensor) else list(members)
        for use_muon in (True, False):
            chosen = [p for p in members if (p.ndim == 2) == use_muon]
            if chosen:
                split.append({**group, "params": chosen, "use_muon": use_muon})
    return split


class Muon(torch.optim.Optimizer):
    r"""URM's Muon (``models/muon.py``, ``use_muon=True``): each param group has ``use_muon``;
    a group given without it is split, its 2-D parameters to a Muon group and the others to
    an AdamW group (``add_param_group`` sets it for a group that is all one kind). The
    trainer's per-group ``lr`` drives both rules.

    Muon group, per 2-D parameter ``p`` of shape ``(A, B)``, each step::

        buf = momentum * buf + g                      # state "momentum_buffer", p's dtype
        d = g + momentum * buf if nesterov else buf
        O = orthogonalize(d, ns_steps)                # bf16-rounded input, float32 iterations
        p = p * (1 - lr * weight_decay)               # decoupled decay with the group's lr
        p = p - lr * (sqrt(max(A, B)) * matched_adamw_rms) * O

    AdamW group, per other parameter, each step (``t`` counts the parameter's steps)::

        m = lerp(m, g, 1 - beta1);  v = lerp(v, g * g, 1 - beta2)
        p = p * (1 - lr * weight_decay)
        p = p - lr / ((1 - beta1**t) / sqrt(1 - beta2**t)) * m / (sqrt(v) + eps)

    (``eps`` is added to the uncorrected ``sqrt(v)``, as in URM; ``torch.optim.AdamW`` adds it
    after the bias correction.) Both rules compute in the parameter's dtype and keep their
    state in it, as URM does; only the Newton-Schulz iteration is float32. Parameters whose
    ``grad`` is ``None`` are skipped (URM asserts every one has a gradient); the AdamW step
    count ``state["step"]`` is per parameter (URM keeps one per group: the same count when
    every parameter gets a gradient every step, as it requires).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        matched_adamw_rms: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ):
        _check_lr_wd(lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum} (must be in [0, 1))")
        if int(ns_steps) != ns_steps or ns_steps < 1:
            raise ValueError(f"Invalid ns_steps: {ns_steps} (an integer >= 1)")
        if not matched_adamw_rms > 0.0:
            raise ValueError(f"Invalid matched_adamw_rms: {matched_adamw_rms} (must be > 0)")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Invalid betas: {betas} (two values in [0, 1))")
        if not eps > 0.0:
            raise ValueError(f"Invalid eps: {eps} (must be > 0)")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=bool(nesterov),
            ns_steps=int(ns_steps),
            matched_adamw_rms=matched_adamw_rms,
            betas=tuple(betas),
            eps=eps,
        )
        super().__init__(_split_by_rule(params), defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        members = param_group["params"]
        members = [members] if isinstance(members, torch.Tensor) else list(members)
        matrices = [p.ndim == 2 for p in members]
        param_group = {**param_group, "params": members}  # read once here: it may be a generator
        if "use_muon" not in param_group:
            if any(matrices) and not all(matrices):
                raise ValueError("a Muon param group mixes 2-D and other parameters: set use_muon, or pass it to Muon()")
            param_group = {**param_group, "use_muon": bool(matrices) and all(matrices)}
        elif param_group["use_muon"] and not all(matrices):
            raise ValueError("a use_muon group may hold only 2-D parameters")
        super().add_param_group(param_group)

    @overload  # Optimizer.step's two signatures: the loss with a closure, None without
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate_closure(closure)
        for group in self.param_groups:
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            _check_lr_wd(lr, wd)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("Muon does not support complex parameters")
                if group["use_muon"]:
                    self._muon_update(p, group, lr, wd)
                else:
                    self._adamw_update(p, group, lr, wd)
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict[str, Any], lr: float, wd: float) -> None:
        assert p.grad is not None
        grad, momentum = p.grad, float(group["momentum"])
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(grad)
        direction = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        update = orthogonalize(direction, int(group["ns_steps"]))
        p.mul_(1.0 - lr * wd)
        # Moonlight's shape rule (URM's adjust_lr_wd_for_muon), in URM's order of operations
        p.add_(update, alpha=-(lr * (math.sqrt(max(p.shape)) * float(group["matched_adamw_rms"]))))

    def _adamw_update(self, p: torch.Tensor, group: dict[str, Any], lr: float, wd: float) -> None:
        assert p.grad is not None
        grad = p.grad
        beta1, beta2 = (float(b) for b in group["betas"])
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1.0
        t = state["step"].item()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.lerp_(grad.square(), 1.0 - beta2)
        direction = exp_avg / (exp_avg_sq.sqrt() + float(group["eps"]))
        scale = (1.0 - beta1**t) / (1.0 - beta2**t) ** 0.5
        p.mul_(1.0 - lr * wd)
        p.add_(direction, alpha=-lr / scale)


OPTIMIZER_NAMES = ("adam", "adamw", "adam_atan2", "muon")


@dataclass
class OptimizerConfig:
    """Schema of the ``optimizer`` options (``conf/optimizer/<name>.yaml``): the optimizer of
    the dense parameters. ``lr`` is the peak of the trainer's schedule, which overwrites the
    param groups' ``lr`` every step. ``eps`` is unused by adam_atan2 (it has none). muon
    (URM's) gives the 2-D parameters Muon (the ``muon_*`` keys, read by muon only) and the
    others AdamW (``betas``, ``eps``); both use ``lr`` and ``weight_decay``."""

    name: str = "adam_atan2"  # adam (L2 decay in the gradient) | adamw | adam_atan2 | muon
    lr: float = setting(1e-4, ge=0)
    betas: list[float] = setting(factory=lambda: [0.9, 0.95], ge=0, lt=1)
    weight_decay: float = setting(0.1, ge=0)
    eps: float = setting(1e-8, gt=0)
    muon_momentum: float = setting(0.95, ge=0, lt=1, doc="muon: momentum of the 2-D parameters' SGD")
    muon_nesterov: bool = setting(True, doc="muon: Nesterov momentum (orthogonalise g + momentum * buffer)")
    muon_ns_steps: int = setting(5, ge=1, doc="muon: Newton-Schulz iterations (URM's coefficients; past 8 the last repeats)")
    muon_matched_adamw_rms: float = setting(
        0.2, gt=0, doc="muon: a (A, B) matrix's update lr is lr * muon_matched_adamw_rms * sqrt(max(A, B))"
    )

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
    if config.name == "muon":
        return Muon(
            params,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.muon_momentum,
            nesterov=config.muon_nesterov,
            ns_steps=config.muon_ns_steps,
            matched_adamw_rms=config.muon_matched_adamw_rms,
            betas=betas,
            eps=config.eps,
        )
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
