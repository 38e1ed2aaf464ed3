"""The ARC-EFE agent's original command line, run by ARCForge's trainer (docs/seeds.md).

    python trainloop_complete_with_fixes.py --epochs 20 --agent_lr 1e-4 --qwen_lr 1e-4 --device cuda
    python trainloop_complete_with_fixes.py --epochs 20 --max_batches 100 --device cuda
    python trainloop_complete_with_fixes.py --epochs 20 --device cuda --resume data.paths=[data/my-build]

The flags become overrides of ``python pretrain.py experiment=efe_original`` (the original's
hyperparameters, conf/experiment/efe_original.yaml); the command they map to is printed once,
then pretrain.py runs it, exit statuses included. ARCForge ``key=value`` overrides may follow
the flags. A flag the original did not have is refused by name (exit status 2).
"""

from __future__ import annotations

import os
import runpy
import sys

from runconfig.seed_grammar import SeedFlag, announce_mapping, parse_seed_flags
from utils.errors import ConfigError, exit_with_error

SYSTEM = "trainloop_complete_with_fixes.py"
PRESET = "experiment=efe_original"
DEFAULT_EPOCHS = 20  # the preset's epochs, which --max_batches multiplies when --epochs is not given


def device_overrides(value: str) -> list[str]:
    """``--device``: the device; on the CPU also fp32, since the original's CUDA autocast and
    GradScaler did nothing there."""
    return [f"device={value}", *(["precision=fp32"] if value == "cpu" else [])]


def device(value: str) -> str:
    """cuda | cpu | auto."""
    if value not in ("cuda", "cpu", "auto"):
        raise ValueError(value)
    return value


# The original's flags (--max_batches's max_steps is added by ``translate``: it needs the epochs).
SEED_FLAGS: dict[str, SeedFlag] = {
    "epochs": SeedFlag("epochs", int, note="an epoch visits every task once (the original: 3232 pairs)"),
    "agent_lr": SeedFlag("optimizer.lr", float),
    "qwen_lr": SeedFlag("arch.lm_lr", float),
    "device": SeedFlag("device", device, to_overrides=device_overrides, note="cpu also sets precision=fp32"),
    "max_batches": SeedFlag(
        "",
        int,
        to_overrides=lambda n: [f"loss.loss_scale_epoch_steps={n}"],
        note="max_steps = epochs x N and loss.loss_scale_epoch_steps = N: the original cut each epoch to N "
        "batches (of 1); ARCForge's epochs are not cut, so its evaluations follow whole epochs and the end",
    ),
    "seed": SeedFlag("seed", int),
    "resume": SeedFlag(
        "resume",
        switch=True,
        to_overrides=lambda _: ["resume=auto"],
        note="resume=auto: the newest checkpoint of efe_original-seed<S>",
    ),
}


def translate(argv: list[str]) -> list[str]:
    """pretrain.py's arguments for the original command line ``argv``: the preset, the flags'
    overrides, then the remaining ``key=value`` overrides. ConfigError for a bad flag."""
    overrides, rest = parse_seed_flags(argv, SEED_FLAGS, SYSTEM)
    last = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides}
    if "loss.loss_scale_epoch_steps" in last:  # --max_batches N: the run stops after epochs x N steps
        overrides.append(f"max_steps={int(last.get('epochs', DEFAULT_EPOCHS)) * int(last['loss.loss_scale_epoch_steps'])}")
    return [PRESET, *overrides, *rest]


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        for name, flag in SEED_FLAGS.items():
            print(f"  --{name:12s} {flag.key or '-'}{'  # ' + flag.note if flag.note else ''}")
        sys.exit(0)
    try:
        args = translate(argv)
    except ConfigError as e:
        exit_with_error(e)
    announce_mapping(SYSTEM, argv, "python pretrain.py", args)
    typed = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    for name, flag in SEED_FLAGS.items():
        if name in typed and flag.note:  # where the meaning differs from the original's
            print(f"  --{name}: {flag.note}", file=sys.stderr)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")  # pretrain.py as if typed: Hydra, signals, exit statuses


if __name__ == "__main__":
    main(sys.argv[1:])
