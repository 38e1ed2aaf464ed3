"""Training throughput (examples/s, tokens/s) and peak RSS of pretrain.py's step.

    python bench/train_throughput.py                           # the CPU target config below
    python bench/train_throughput.py compile=true              # with torch.compile
    python bench/train_throughput.py arch=trm global_batch_size=768 device=cuda   # paper config on a GPU

Any pretrain override works. A step is exactly pretrain.py's: one ACT supervision step of
the model (forward + backward through the last recursion), the loss head, AdamATan2 on the
weights and sign-SGD on the puzzle embeddings, on random ARC-shaped batches (seq 900, vocab
12) so no dataset is needed. Default: hidden 128, 2 heads, batch 32, H3 x L4, L_layers 2,
puzzle_emb_len 16 (seq 900 + 16), bf16 -- the 2-core CPU target (reference: 0.92 ex/s eager,
1.71 ex/s compiled).
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
from models.recursive import DataShape  # noqa: E402
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
    print(f"{a.name} hidden {a.hidden_size}, {a.num_heads} heads, H{a.H_cycles} x L{a.L_cycles}, L_layers {a.L_layers}, "
          f"seq {seq_len}+{model.inner.puzzle_emb_len}, {a.forward_dtype}, batch {batch}, "
          f"compile {config.compile}, {device.type} ({torch.get_num_threads()} threads), "
          f"{sum(p.numel() for p in model.parameters()):,} params")
    print(f"  {seconds:.2f} s/step, {batch / seconds:.2f} examples/s, "
          f"{batch * (seq_len + model.inner.puzzle_emb_len) / seconds:,.0f} tokens/s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
          f"(mean of {args.steps} steps after {args.warmup} warm-up)")


if __name__ == "__main__":
    main()
