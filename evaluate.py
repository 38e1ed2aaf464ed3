"""Evaluate a checkpoint: vote over every augmented view of each test input, report pass@k
(ARC Prize convention, plus Kaggle and strict, labelled), write submission.json,
metrics.json and report.png.

    python evaluate.py checkpoint=checkpoints/arcforge/RUN          # the run's newest checkpoint
    python evaluate.py checkpoint=checkpoints/arcforge/RUN/step_00001000
    python evaluate.py checkpoint=RUN/step_00001000 data=arc2 eval.limit=20
    python evaluate.py checkpoint=trm_step_518071 arch=trm data=arc1    # a TinyRecursiveModels file
    torchrun --nproc-per-node 4 evaluate.py checkpoint=...

An ARCForge checkpoint folder brings its saved config; the command line overrides it (Hydra
overrides of conf/config.yaml, as for pretrain.py; ``checkpoint=`` is ``eval.checkpoint``;
choosing another option of a group, e.g. ``data=arc2``, replaces that group). A single file
is read as a TinyRecursiveModels/HRM state dict; then the arch and data come from the
command line. Outputs go to ``eval.output_dir``, default
``<checkpoint>/evaluate/<dataset folder name>/``. The evaluation itself lives in
evaluators/checkpoint.py.
"""

from __future__ import annotations

import sys

from evaluators.checkpoint import Checkpoint, checkpoint_config, evaluate_checkpoint, load_checkpoint
from utils.config import ConfigError, TrainConfig, config_help, parse_overrides, wants_help
from utils.distributed import cleanup_distributed, init_distributed
from utils.logging import console_logging


def load_run(argv: list[str]) -> tuple[TrainConfig, Checkpoint]:
    """(config, checkpoint) from the command line: the checkpoint named by ``checkpoint=`` (or
    ``eval.checkpoint=``), its saved config with the command line's overrides on top."""
    overrides = parse_overrides(argv)
    path = next((str(o.value()) for o in overrides if o.key_or_group in ("checkpoint", "eval.checkpoint")), None)
    if not path:
        raise ConfigError("checkpoint=PATH is required (a checkpoint folder, or a TinyRecursiveModels file)")
    lines = [f"eval.{o.input_line}" if o.key_or_group == "checkpoint" else o.input_line for o in overrides]
    checkpoint = load_checkpoint(path)
    return checkpoint_config(checkpoint, lines, {o.key_or_group for o in overrides}), checkpoint


def main(argv: list[str] | None = None) -> int:
    """``python evaluate.py ARGS`` (and the tests' ``main([...])``): 0 when evaluated, 2 with one
    ``error:`` line for a configuration problem."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(config_help(__doc__))
        return 0
    with console_logging():
        try:
            config, checkpoint = load_run(argv)
        except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
            print(f"error: {e}", file=sys.stderr)
            return 2
        env = init_distributed(config.device)
        try:
            result = evaluate_checkpoint(config, checkpoint, env)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            cleanup_distributed(env)
    for line in result.summary:  # the final table, rank 0's
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
