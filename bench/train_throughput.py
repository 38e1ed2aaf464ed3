"""Training throughput (examples/s, tokens/s) and peak memory of pretrain.py's training step.

    python bench/train_throughput.py                           # the issue-3 CPU config below, random batch
    python bench/train_throughput.py compile=true              # with torch.compile
    python bench/train_throughput.py precision=bf16 ema=true   # any pretrain override applies
    python bench/train_throughput.py arch=diffusion_tiny loss=diffusion   # any family
    python bench/train_throughput.py arch=trm global_batch_size=768 device=cuda   # paper config on a GPU
    python bench/train_throughput.py --data data/arc1-small --steps 20   # real batches of a built dataset

One timed step is ``training.step.train_step``, the function pretrain.py's loop calls:
autocast and the fp16 GradScaler (``precision``), forward + loss + backward, unscale and
gradient clipping (``grad_clip_norm``), the scheduled lr of every optimizer, the dense
optimizer and sign-SGD on the puzzle table, the EMA (``ema``). The state is built by
``training.state.build_train_state``, as in pretrain.py. CUDA is synchronised after each
step. Never timed: the metric all-reduce and gradient norms of logging steps, DDP (one
process), evaluation and checkpoints.

Random mode (default): one fixed random ARC-shaped batch (seq 900, every label counted) is
moved to the device once and re-fed each step, so no dataset is needed; data loading and the
host-to-device copy are not timed.

``--data PATH``: real training batches of a built dataset folder, read by pretrain.py's
loader (``dataset.puzzle_dataset.PuzzleDataset(paths, "train", global_batch_size, seed=seed)``,
demonstrations attached for in-context models), epoch after epoch. A step's time is the
host-to-device copy plus ``train_step``; the loader's own time (reading the batch) is
reported apart. A size-bucketed dataset (``--canvas-buckets``) yields each batch from one
canvas set, so the sequence length (S*S of that set's canvas) changes between steps: tokens
count batch size x that batch's sequence length (grid tokens; the puzzle-embedding positions
are not counted), and a table gives each length's figures and the mix of lengths timed.

Warm-up (both modes): a step is not timed when it is one of the first ``--warmup`` steps, or
the first step at a sequence length not seen before (a new shape allocates, autotunes and,
under ``compile=true``, compiles on its own). ``--steps`` steps are timed after that, so with
buckets every length that occurs is warmed once before any of its steps count; a length met
only once is never timed (the table lists the lengths timed, the header how many warmed up).

Default config, the "issue-3" config of docs/benchmarks.md: TRM, ``arch.hidden_size=128
arch.num_heads=2 arch.H_cycles=3 arch.L_cycles=4 global_batch_size=32`` (L_layers 2,
puzzle_emb_len 16, forward_dtype bf16, device cpu). These are ordinary overrides: pass any of
them to change one; ``arch=trm`` (or any ``arch=``) drops the arch defaults, giving the paper's
hidden 512, 8 heads.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.common import PuzzleDatasetMetadata  # noqa: E402
from runconfig.compose import compose_config  # noqa: E402
from training.state import TrainState, build_train_state  # noqa: E402
from training.step import train_step  # noqa: E402
from utils.config.schema import TrainConfig  # noqa: E402
from utils.distributed import DistEnv  # noqa: E402

DEFAULTS = ["global_batch_size=32", "device=cpu"]
TRM_DEFAULTS = [
    "arch=trm",
    "arch.hidden_size=128",
    "arch.num_heads=2",
    "arch.H_cycles=3",
    "arch.L_cycles=4",
    "arch.forward_dtype=bfloat16",
]  # unless another arch= is chosen
SEQ_LEN, VOCAB, NUM_IDS = 900, 12, 1000

Batch = dict[str, torch.Tensor]


class RandomData:
    """Stands in for the dataset where the training state reads it: its shape and its
    (trivial) data position. ``canvas_sides`` (set name -> side) describes a size-bucketed
    set, so the state accepts (or refuses, for a model that cannot) batches of those canvases."""

    def __init__(self, seq_len: int = SEQ_LEN, canvas_sides: dict[str, int] | None = None):
        extra = {"canvas_sides": dict(canvas_sides)} if canvas_sides else {}
        self.metadata = PuzzleDatasetMetadata(
            pad_id=0,
            ignore_label_id=-100,
            blank_identifier_id=0,
            vocab_size=VOCAB,
            seq_len=seq_len,
            num_puzzle_identifiers=NUM_IDS,
            total_groups=NUM_IDS,
            mean_puzzle_examples=1.0,
            total_puzzles=NUM_IDS,
            sets=list(canvas_sides or ["all"]),
            **extra,
        )
        self.identifiers = ["<blank>", *(f"random{i}" for i in range(1, NUM_IDS))]

    def state_dict(self) -> dict:
        return {}


def random_batch(batch: int, num_demos: int, device: torch.device, seq_len: int = SEQ_LEN) -> Batch:
    data = {
        "inputs": torch.randint(0, VOCAB, (batch, seq_len)),
        "labels": torch.randint(0, VOCAB, (batch, seq_len)),
        "puzzle_identifiers": torch.randint(1, NUM_IDS, (batch,), dtype=torch.int32),
    }
    if num_demos:  # in-context models read demonstration pairs
        data.update(
            demo_inputs=torch.randint(0, VOCAB, (batch, num_demos, seq_len)),
            demo_labels=torch.randint(0, VOCAB, (batch, num_demos, seq_len)),
            demo_mask=torch.ones(batch, num_demos, dtype=torch.bool),
        )
    return {k: v.to(device) for k, v in data.items()}


def build_config(overrides: list[str]) -> TrainConfig:
    """The bench's config: its defaults (the issue-3 TRM unless an ``arch=`` is given), then
    ``overrides``, as pretrain.py composes them."""
    chosen_arch = any(o.startswith("arch=") for o in overrides)
    return compose_config(DEFAULTS + ([] if chosen_arch else TRM_DEFAULTS) + list(overrides))


def pick_device(config: TrainConfig) -> torch.device:
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def build_state(config: TrainConfig, data, device: torch.device) -> TrainState:
    """pretrain.py's training state on one process, in training mode."""
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    state = build_train_state(config, env, data, identifiers_sha256="bench")
    state.model.train()
    return state


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """What ``time_steps`` measured: seconds of each timed step by sequence length, the
    loader's seconds per step (all steps), the steps run untimed."""

    batch_size: int
    step_s: dict[int, list[float]] = field(default_factory=dict)
    load_s: list[float] = field(default_factory=list)
    warmup_steps: int = 0
    lengths_seen: list[int] = field(default_factory=list)
    peak_cuda_bytes: int | None = None
    stopped_by_budget: bool = False

    @property
    def timed_steps(self) -> int:
        return sum(len(v) for v in self.step_s.values())

    def per_length(self) -> list[tuple[int, int, float]]:
        """(sequence length, timed steps, mean seconds per step), by length."""
        return [(s, len(v), sum(v) / len(v)) for s, v in sorted(self.step_s.items()) if v]

    def mix(self) -> str:
        """The lengths timed, as 'LENGTHxSTEPS ...'."""
        return " ".join(f"{s}x{n}" for s, n, _ in self.per_length())

    def realized(self) -> tuple[float, float, float]:
        """Over the steps timed: (seconds per step, examples/s, grid tokens/s)."""
        seconds = sum(sum(v) for v in self.step_s.values())
        steps = self.timed_steps
        tokens = sum(s * len(v) for s, v in self.step_s.items()) * self.batch_size
        return seconds / steps, steps * self.batch_size / seconds, tokens / seconds

    def weighted(self, weights: dict[int, float]) -> tuple[float, float, float]:
        """As ``realized``, for a mix in which a fraction ``weights[S]`` of the steps have
        length S (each length's mean step time, weighted; every weighted length must have
        been timed)."""
        means = {s: t for s, _, t in self.per_length()}
        missing = sorted(s for s, w in weights.items() if w > 0 and s not in means)
        if missing:
            raise ValueError(f"no timed step at sequence length(s) {missing}")
        total = sum(weights.values())
        seconds = sum(w * means[s] for s, w in weights.items()) / total
        tokens = sum(w * s for s, w in weights.items()) / total * self.batch_size
        return seconds, self.batch_size / seconds, tokens / seconds


def time_steps(
    state: TrainState, batches: Iterable[Batch], device: torch.device, steps: int, warmup: int, budget_s: float | None = None
) -> Timing:
    """Run ``train_step`` on ``batches`` until ``steps`` steps were timed (or the batches
    end, or ``budget_s`` seconds passed: ``stopped_by_budget``). Untimed: the first
    ``warmup`` steps and the first step at each new sequence length. A step's time is the
    copy of its batch to ``device`` (nothing for a batch already there) plus ``train_step``
    and a CUDA synchronise; fetching the batch is ``load_s``."""
    timing = Timing(batch_size=state.config.global_batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    iterator: Iterator[Batch] = iter(batches)
    seen: set[int] = set()
    while timing.timed_steps < steps:
        if budget_s is not None and time.perf_counter() - started > budget_s:
            timing.stopped_by_budget = True
            break
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        t1 = time.perf_counter()
        seq_len = int(batch["inputs"].shape[1])
        batch = {k: v.to(device) for k, v in batch.items()}
        train_step(state, batch)
        sync(device)
        t2 = time.perf_counter()
        timing.load_s.append(t1 - t0)
        if len(timing.load_s) <= warmup or seq_len not in seen:
            timing.warmup_steps += 1
            if seq_len not in seen:
                timing.lengths_seen.append(seq_len)
        else:
            timing.step_s.setdefault(seq_len, []).append(t2 - t1)
        seen.add(seq_len)
    if device.type == "cuda":
        timing.peak_cuda_bytes = torch.cuda.max_memory_allocated(device)
    return timing


def dataset_batches(dataset, demos=None) -> Iterator[Batch]:
    """pretrain.py's training batches (CPU tensors, demonstrations attached), epoch after epoch."""
    while True:
        yielded = 0
        for _set, batch, _n in dataset:
            yielded += 1
            yield demos.attach(batch) if demos is not None else batch
        if not yielded:
            raise RuntimeError("the training split yielded no batch")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def memory_text(timing: Timing) -> str:
    text = f"peak RSS {peak_rss_gib():.2f} GiB"
    if timing.peak_cuda_bytes is not None:
        text += f", peak CUDA memory {timing.peak_cuda_bytes / 2**30:.2f} GiB (max_memory_allocated)"
    return text


def length_table(timing: Timing) -> list[str]:
    """Markdown: one row per sequence length timed, then all of them together."""
    n = timing.batch_size
    rows = ["| seq len | timed steps | ms/step | examples/s | grid tokens/s |", "| ---: | ---: | ---: | ---: | ---: |"]
    for s, steps, mean in timing.per_length():
        rows.append(f"| {s} | {steps} | {1000 * mean:.1f} | {n / mean:.2f} | {n * s / mean:,.0f} |")
    seconds, examples, tokens = timing.realized()
    rows.append(f"| all ({timing.mix()}) | {timing.timed_steps} | {1000 * seconds:.1f} | {examples:.2f} | {tokens:,.0f} |")
    return rows


def run_random(args: argparse.Namespace, config: TrainConfig, device: torch.device) -> None:
    state = build_state(config, RandomData(), device)
    batch = random_batch(config.global_batch_size, state.model.num_demos, device)
    timing = time_steps(state, itertools.repeat(batch), device, args.steps, args.warmup)
    seconds, examples, tokens = timing.realized()
    a, n = config.arch, config.global_batch_size
    print(
        f"pretrain.py's train_step (precision {config.precision}, ema {config.ema}, grad_clip_norm "
        f"{config.grad_clip_norm}, compile {config.compile}) on one random batch; not timed: data loading, "
        f"logging reductions, DDP, evaluation, checkpoints"
    )
    print(
        f"arch={a.name} ({type(state.model).__name__}), seq {SEQ_LEN}, batch {n}, {device.type} "
        f"({torch.get_num_threads()} threads), {sum(p.numel() for p in state.model.parameters()):,} params"
    )
    print(
        f"  {seconds:.2f} s/step, {examples:.2f} examples/s, {tokens:,.0f} grid tokens/s, "
        f"{memory_text(timing)} (mean of {timing.timed_steps} steps after {timing.warmup_steps} warm-up)"
    )


def run_data(args: argparse.Namespace, config: TrainConfig, device: torch.device) -> None:
    from dataset.demonstrations import Demonstrations
    from dataset.puzzle_dataset import PuzzleDataset

    paths = [args.data]
    dataset = PuzzleDataset(paths, "train", config.global_batch_size, seed=config.seed)
    state = build_state(config, dataset, device)
    num_demos = state.model.num_demos
    demos = Demonstrations(paths, num_demos, config.seed) if num_demos else None
    timing = time_steps(state, dataset_batches(dataset, demos), device, args.steps, args.warmup)
    if not timing.timed_steps:
        raise SystemExit(f"no step was timed ({timing.warmup_steps} warm-up steps): raise --steps")
    meta = dataset.metadata
    sides = meta.canvas_sides or {}
    sets = ", ".join(f"{name}: seq {sides[name] ** 2 if name in sides else meta.seq_len}" for name in meta.sets)
    seconds, examples, tokens = timing.realized()
    a, n = config.arch, config.global_batch_size
    lengths = sorted(timing.lengths_seen)
    seq = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]} (one length per batch)"
    load_ms = 1000 * sum(timing.load_s) / len(timing.load_s)
    print(
        f"pretrain.py's train_step (precision {config.precision}, ema {config.ema}, grad_clip_norm "
        f"{config.grad_clip_norm}, compile {config.compile}) on real batches of {args.data} (train split; {sets}); "
        f"a step's time: host-to-device copy + train_step (the loader apart); not timed: logging reductions, DDP, "
        f"evaluation, checkpoints"
    )
    print(
        f"arch={a.name} ({type(state.model).__name__}), seq {seq}, batch {n}, {device.type} "
        f"({torch.get_num_threads()} threads), {sum(p.numel() for p in state.model.parameters()):,} params"
    )
    print(
        f"  {seconds:.2f} s/step, {examples:.2f} examples/s, {tokens:,.0f} grid tokens/s, {1000 * seconds:.1f} ms/step, "
        f"loader {load_ms:.1f} ms/step, {memory_text(timing)} ({timing.timed_steps} steps timed after "
        f"{timing.warmup_steps} warm-up: the first {args.warmup} and the first at each new length); "
        f"seq mix {timing.mix()}"
    )
    print()
    print("\n".join(length_table(timing)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Overrides are pretrain.py's (KEY=VALUE); see the module docstring."
    )
    parser.add_argument("--steps", type=int, default=5, help="steps timed (after the warm-up)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps first; the first step at each new sequence length is untimed as well",
    )
    parser.add_argument("--data", metavar="PATH", help="time real batches of this built dataset folder's train split")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    config = build_config(args.overrides)
    device = pick_device(config)
    if args.data:
        run_data(args, config, device)
    else:
        run_random(args, config, device)


if __name__ == "__main__":
    main()
