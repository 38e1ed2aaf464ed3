"""Training throughput (examples/s, tokens/s) and peak RSS of pretrain.py's training step.

    python bench/train_throughput.py                           # the CPU target config below
    python bench/train_throughput.py compile=true              # with torch.compile
    python bench/train_throughput.py precision=bf16 ema=true   # any pretrain override applies
    python bench/train_throughput.py arch=diffusion_tiny loss=diffusion   # any family
    python bench/train_throughput.py arch=trm global_batch_size=768 device=cuda   # paper config on a GPU

One timed step is ``training.step.train_step``, the function pretrain.py's loop calls:
autocast and the fp16 GradScaler (``precision``), forward + loss + backward, unscale and
gradient clipping (``grad_clip_norm``), the scheduled lr of every optimizer, the dense
optimizer and sign-SGD on the puzzle table, the EMA (``ema``). The state is built by
``training.state.build_train_state``, as in pretrain.py. What pretrain.py does around the
step and this bench leaves out: data loading and the host-to-device copy (one fixed random
ARC-shaped batch, every label counted, is re-fed each step, so no dataset is needed), the
metric all-reduce and gradient norms of logging steps, DDP (one process), evaluation and
checkpoints. CUDA is synchronised after each step.

Default: hidden 128, 2 heads, batch 32, H3 x L4, L_layers 2, puzzle_emb_len 16 (seq 900 + 16),
forward_dtype bf16 -- the 2-core CPU target.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.common import PuzzleDatasetMetadata  # noqa: E402
from training.state import build_train_state  # noqa: E402
from training.step import train_step  # noqa: E402
from utils.config import compose_config  # noqa: E402
from utils.distributed import DistEnv  # noqa: E402

DEFAULTS = ["global_batch_size=32", "device=cpu"]
TRM_DEFAULTS = ["arch=trm", "arch.hidden_size=128", "arch.num_heads=2", "arch.H_cycles=3", "arch.L_cycles=4",
                "arch.forward_dtype=bfloat16"]  # unless another arch= is chosen
SEQ_LEN, VOCAB, NUM_IDS = 900, 12, 1000


class RandomData:
    """Stands in for the dataset where the training state reads it: its shape and its
    (trivial) data position."""

    def __init__(self):
        self.metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=-100, blank_identifier_id=0, vocab_size=VOCAB,
                                              seq_len=SEQ_LEN, num_puzzle_identifiers=NUM_IDS, total_groups=NUM_IDS,
                                              mean_puzzle_examples=1.0, total_puzzles=NUM_IDS)
        self.identifiers = ["<blank>", *(f"random{i}" for i in range(1, NUM_IDS))]

    def state_dict(self) -> dict:
        return {}


def random_batch(batch: int, num_demos: int, device: torch.device) -> dict[str, torch.Tensor]:
    data = {"inputs": torch.randint(0, VOCAB, (batch, SEQ_LEN)), "labels": torch.randint(0, VOCAB, (batch, SEQ_LEN)),
            "puzzle_identifiers": torch.randint(1, NUM_IDS, (batch,), dtype=torch.int32)}
    if num_demos:  # in-context models read demonstration pairs
        data.update(demo_inputs=torch.randint(0, VOCAB, (batch, num_demos, SEQ_LEN)),
                    demo_labels=torch.randint(0, VOCAB, (batch, num_demos, SEQ_LEN)),
                    demo_mask=torch.ones(batch, num_demos, dtype=torch.bool))
    return {k: v.to(device) for k, v in data.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    chosen_arch = any(o.startswith("arch=") for o in args.overrides)
    config = compose_config(DEFAULTS + ([] if chosen_arch else TRM_DEFAULTS) + args.overrides)
    device = torch.device("cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    state = build_train_state(config, env, RandomData(), identifiers_sha256="random")
    state.model.train()
    batch = random_batch(config.global_batch_size, state.model.num_demos, device)

    def step():
        train_step(state, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - started) / args.steps
    a, n = config.arch, config.global_batch_size
    print(f"pretrain.py's train_step (precision {config.precision}, ema {config.ema}, grad_clip_norm "
          f"{config.grad_clip_norm}, compile {config.compile}) on one random batch; not timed: data loading, "
          f"logging reductions, DDP, evaluation, checkpoints")
    print(f"arch={a.name} ({type(state.model).__name__}), seq {SEQ_LEN}, batch {n}, {device.type} "
          f"({torch.get_num_threads()} threads), {sum(p.numel() for p in state.model.parameters()):,} params")
    print(f"  {seconds:.2f} s/step, {n / seconds:.2f} examples/s, {n * SEQ_LEN / seconds:,.0f} grid tokens/s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
          f"(mean of {args.steps} steps after {args.warmup} warm-up)")


if __name__ == "__main__":
    main()
