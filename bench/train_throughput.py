"""Training throughput (examples/s, tokens/s) and peak RSS of a bare ACT training step.

    python bench/train_throughput.py                           # the CPU target config below
    python bench/train_throughput.py compile=true              # with torch.compile
    python bench/train_throughput.py arch=trm global_batch_size=768 device=cuda   # paper config on a GPU

Any pretrain override composes, but only the arch, loss, optimizer, puzzle_emb_lr,
global_batch_size, device and compile keys change what runs. What one timed step is: one
ACT supervision step of the model (forward + backward through the last recursion), the
loss head, then the dense optimizer (``optimizer``, over ``model.parameters()`` at its
configured lr) and sign-SGD on the puzzle embeddings (``puzzle_emb_lr``, default weight
decay), in one process, on one fixed random ARC-shaped batch (seq 900, vocab 12, every label
counted) re-fed each step, so no dataset is needed; CUDA is synchronised after each step.

It is the core of pretrain.py's training step, not that step. Left out (pretrain.py's
``train`` loop does these; none is timed here):

- ``torch.autocast`` around forward + loss and the fp16 ``GradScaler`` (scale, unscale,
  overflow skip): ``precision`` is ignored; the model computes in ``arch.forward_dtype``;
- the learning-rate schedule (warm-up + cosine / restarts set every group's lr each step)
  and param-group ``lr_scale``; ``puzzle_emb_weight_decay``;
- gradient clipping (``grad_clip_norm``), the EMA update (``ema``), ``freeze_weights``;
- the per-component gradient norms and the metric all-reduce of logging steps
  (every ``log_interval``), wandb and the progress bar;
- data loading, demonstration attachment and the host-to-device copy of each batch;
- DDP gradient all-reduce and the multi-rank all-gather of SparseSignSGD;
- evaluation, checkpoints and the ``max_minutes`` check.

With pretrain.py's defaults (precision fp32, no clipping, no EMA) the first three are no-ops
or a few scalar writes there too; with other settings the printed figures do not include
their cost. Default: hidden 128, 2 heads, batch 32, H3 x L4, L_layers 2, puzzle_emb_len 16
(seq 900 + 16), forward_dtype bf16 -- the 2-core CPU target (the issue's reference figures:
0.92 ex/s eager, 1.71 ex/s compiled).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from losses import build_loss  # noqa: E402
from models import build_model  # noqa: E402
from models.recursive import DataShape, TransformerCore  # noqa: E402
from utils.config import compose_config  # noqa: E402
from utils.optimizers import SparseSignSGD, build_optimizer  # noqa: E402

DEFAULTS = ["arch=trm", "arch.hidden_size=128", "arch.num_heads=2", "arch.H_cycles=3", "arch.L_cycles=4",
            "arch.forward_dtype=bfloat16", "global_batch_size=32", "device=cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = compose_config(DEFAULTS + args.overrides)
    device = torch.device("cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    seq_len, vocab, n_ids, batch = 900, 12, 1000, config.global_batch_size
    torch.manual_seed(0)
    model = build_model(config.arch, DataShape(seq_len, vocab, n_ids, batch)).to(device).train()
    loss_fn = build_loss(config.loss)
    optimizers = [SparseSignSGD(model.puzzle_emb, lr=config.puzzle_emb_lr), build_optimizer(config.optimizer,
                                                                                              model.parameters())]
    step_fn = torch.compile(model) if config.compile else model
    data = {"inputs": torch.randint(0, vocab, (batch, seq_len), device=device),
            "labels": torch.randint(0, vocab, (batch, seq_len), device=device),
            "puzzle_identifiers": torch.randint(1, n_ids, (batch,), dtype=torch.int32, device=device)}
    carry = model.initial_carry(data)

    def step():
        nonlocal carry
        carry, out = step_fn(carry, data)
        loss, _ = loss_fn(out, carry.current_data)
        (loss / batch).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - started) / args.steps
    a = config.arch
    print("bare ACT step: model fwd+bwd, loss, optimizer steps at a fixed lr, on one random batch; not timed: "
          "autocast/GradScaler, lr schedule, grad clipping, EMA, grad-norm logging, data loading, DDP "
          "(see this file's docstring)")
    ignored = [f"{k}={v}" for k, v, noop in (("precision", config.precision, "fp32"),
                                             ("grad_clip_norm", config.grad_clip_norm, None),
                                             ("ema", config.ema, False),
                                             ("freeze_weights", config.freeze_weights, False)) if v != noop]
    if ignored:
        print(f"  ignored here (pretrain.py would apply them): {', '.join(ignored)}")
    cycles = "no recursion" if isinstance(model.inner, TransformerCore) else f"H{a.H_cycles} x L{a.L_cycles}"
    print(f"{a.name} hidden {a.hidden_size}, {a.num_heads} heads, {cycles}, H_layers {a.H_layers}, L_layers {a.L_layers}, "
          f"seq {seq_len}+{model.inner.puzzle_emb_len}, {a.forward_dtype}, batch {batch}, "
          f"compile {config.compile}, {device.type} ({torch.get_num_threads()} threads), "
          f"{sum(p.numel() for p in model.parameters()):,} params")
    print(f"  {seconds:.2f} s/step, {batch / seconds:.2f} examples/s, "
          f"{batch * (seq_len + model.inner.puzzle_emb_len) / seconds:,.0f} tokens/s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
          f"(mean of {args.steps} steps after {args.warmup} warm-up)")


if __name__ == "__main__":
    main()
