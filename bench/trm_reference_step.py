"""Time TinyRecursiveModels' own training step (its pretrain.py ``train_batch``) on CPU.

    python bench/trm_reference_step.py --reference /tmp/trm [--steps 5 --warmup 2] [KEY=VALUE ...]

Run by bench/compare_reference.py with the reference's Python (a venv holding torch,
pydantic, einops, omegaconf, hydra-core, coolname, argdantic, numpy); it needs nothing from
ARCForge and edits none of the reference's files. Everything below is patched at run time,
in this process only:

- ``adam_atan2``: the CUDA package does not build on CPU; a module of that name exposing
  ``AdamATan2`` (the kernel's update, written from its formula; tests/test_compare_reference.py
  checks it against the formula in plain floats) is put into ``sys.modules`` before pretrain
  is imported;
- ``wandb`` (imported by pretrain, unused here): an empty stand-in module;
- CUDA: ``Tensor.cuda`` returns the tensor itself and pretrain's ``torch.device("cuda")``
  contexts give the CPU device; ``DISABLE_COMPILE`` (eager) unless ``--compile``.

The config is the reference's config/cfg_pretrain.yaml + config/arch/trm.yaml with the
overrides given (default: the issue-3 CPU config). The state comes from pretrain's
``init_train_state`` and each timed step is pretrain's ``train_batch`` on one random
ARC-shaped batch (seq 900, vocab 12, every label counted, puzzle ids 1..999), re-fed each
step, as bench/train_throughput.py does for ARCForge. The last line printed is
``TRM_STEP {json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import types

import torch

SEQ_LEN, VOCAB, NUM_IDS = 900, 12, 1000
ISSUE3 = [
    "arch.hidden_size=128",
    "arch.num_heads=2",
    "arch.H_cycles=3",
    "arch.L_cycles=4",
    "arch.forward_dtype=bfloat16",
    "global_batch_size=32",
]


class AdamATan2(torch.optim.Optimizer):
    """The ``adam-atan2`` CUDA kernel's update, per element::

        p *= 1 - lr * wd;  m = lerp(m, g, 1 - b1);  v = lerp(v, g * g, 1 - b2)
        p -= (lr / bc1) * atan2(m, sqrt(v) / sqrt(bc2))

    with ``bc1 = 1 - b1**step``, ``bc2 = 1 - b2**step``. fp32 parameters only (the
    reference's are fp32); the moments are in the parameter's dtype, as in the kernel."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.95), weight_decay: float = 0.1):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        # Written from the formula above, one parameter at a time (not ARCForge's foreach code).
        for group in self.param_groups:
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            beta1, beta2 = (float(b) for b in group["betas"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1.0 - lr * wd)
                m.lerp_(p.grad, 1.0 - beta1)
                v.lerp_(p.grad * p.grad, 1.0 - beta2)
                p.sub_(torch.atan2(m, v.sqrt() / math.sqrt(1.0 - beta2**t)) * (lr / (1.0 - beta1**t)))
        return None


def install_patches(compile_model: bool) -> None:
    """What the reference needs to run on a CPU-only torch, before its pretrain is imported."""
    sys.modules["adam_atan2"] = types.SimpleNamespace(AdamATan2=AdamATan2)  # type: ignore[assignment]
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    if not compile_model:
        os.environ["DISABLE_COMPILE"] = "1"


class _CpuTorch(types.ModuleType):
    """``torch`` as pretrain.py sees it: ``torch.device("cuda...")`` is the CPU device."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def device(*args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            return torch.device("cpu")
        return torch.device(*args, **kwargs)


def compose(reference: str, overrides: list[str]):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(reference, "config", "cfg_pretrain.yaml"))
    cfg.pop("defaults", None)
    cfg.pop("hydra", None)
    cfg.arch = OmegaConf.load(os.path.join(reference, "config", "arch", "trm.yaml"))
    cfg.merge_with(OmegaConf.from_dotlist(overrides))
    cfg.data_paths = ["random"]
    return OmegaConf.to_container(cfg, resolve=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="a TinyRecursiveModels checkout")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="keep pretrain's torch.compile")
    parser.add_argument("overrides", nargs="*", help=f"config overrides (default: {' '.join(ISSUE3)})")
    args = parser.parse_args()

    reference = os.path.abspath(args.reference)
    sys.path.insert(0, reference)
    os.chdir(reference)
    install_patches(args.compile)
    from puzzle_dataset import PuzzleDatasetMetadata

    import pretrain  # the reference's

    pretrain.torch = _CpuTorch("torch")
    config = pretrain.PretrainConfig(**compose(reference, ISSUE3 + args.overrides))
    n = config.global_batch_size
    metadata = PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=VOCAB,
        seq_len=SEQ_LEN,
        num_puzzle_identifiers=NUM_IDS,
        total_groups=NUM_IDS,
        mean_puzzle_examples=1.0,
        total_puzzles=NUM_IDS,
        sets=["all"],
    )
    state = pretrain.init_train_state(config, metadata, rank=0, world_size=1)
    state.model.train()
    torch.manual_seed(0)
    batch = {
        "inputs": torch.randint(0, VOCAB, (n, SEQ_LEN), dtype=torch.int32),
        "labels": torch.randint(0, VOCAB, (n, SEQ_LEN), dtype=torch.int32),
        "puzzle_identifiers": torch.randint(1, NUM_IDS, (n,), dtype=torch.int32),
    }

    def step():
        pretrain.train_batch(config, state, batch, global_batch_size=n, rank=0, world_size=1)

    for _ in range(args.warmup):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - started) / args.steps
    a = config.arch.__pydantic_extra__
    print(
        "TRM_STEP "
        + json.dumps(
            {
                "s_per_step": seconds,
                "examples_per_s": n / seconds,
                "steps": args.steps,
                "warmup": args.warmup,
                "batch": n,
                "params": sum(p.numel() for p in state.model.parameters()),
                "threads": torch.get_num_threads(),
                "compile": args.compile,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "arch": {
                    k: a[k]
                    for k in (
                        "hidden_size",
                        "num_heads",
                        "H_cycles",
                        "L_cycles",
                        "L_layers",
                        "expansion",
                        "puzzle_emb_len",
                        "forward_dtype",
                    )
                },
            }
        )
    )


if __name__ == "__main__":
    main()
