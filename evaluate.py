"""Evaluate a checkpoint: vote over every augmented view of each test input, report pass@k
(ARC Prize convention, plus Kaggle and strict, labelled), write submission.json,
metrics.json and report.png.

    python evaluate.py checkpoint=checkpoints/arcforge/RUN          # the run's newest checkpoint
    python evaluate.py checkpoint=checkpoints/arcforge/RUN/step_00001000
    python evaluate.py checkpoint=RUN/step_00001000 data=arc2 eval.limit=20
    python evaluate.py checkpoint=trm_step_518071 arch=trm data=arc1    # a TinyRecursiveModels file
    torchrun --nproc-per-node 4 evaluate.py checkpoint=...
    python evaluate.py checkpoint=RUN/step_00001000 export=safetensors [export_dir=DIR]

An ARCForge checkpoint folder brings its saved config; the command line overrides it (Hydra
overrides of conf/config.yaml, as for pretrain.py; ``checkpoint=`` is ``eval.checkpoint``;
choosing another option of a group, e.g. ``data=arc2``, replaces that group). A single file
is read as a TinyRecursiveModels/HRM state dict; then the arch and data come from the
command line. Outputs go to ``eval.output_dir``, default
``<checkpoint>/evaluate/<dataset folder name>/``. The evaluation itself lives in
pipelines/evaluate_checkpoint.py.

``export=safetensors`` evaluates nothing: it writes the checkpoint's evaluation weights (EMA
applied) as ``model.safetensors`` with the resolved config (``config.json``), the puzzle
identifiers (``checkpoint.json``) and a manifest, as one folder written atomically
(``export_dir``, default ``<run folder>/export/<step folder>``). ``checkpoint=`` (here, ttt.py)
and ``init_from=`` (pretrain.py) take that folder or its ``model.safetensors``. Checkpoints
are loaded without running code (``torch.load(weights_only=True)``, or safetensors).
"""

from __future__ import annotations

import sys

from pipelines.evaluate_checkpoint import (
    Checkpoint,
    checkpoint_config,
    evaluate_checkpoint,
    export_safetensors,
    load_checkpoint,
)
from runconfig.compose import parse_overrides, wants_help
from runconfig.help import config_help
from utils.checkpoint import EXPORT_CONFIG, EXPORT_INFO, EXPORT_WEIGHTS, MANIFEST, CheckpointWriteError
from utils.config.schema import TrainConfig
from utils.distributed import cleanup_distributed, init_distributed
from utils.errors import ConfigError, report_error
from utils.logging import console_logging

EXPORT_KEYS = ("export", "export_dir")
EXPORT_FORMATS = ("safetensors",)


def split_export(argv: list[str]) -> tuple[list[str], str | None, str | None]:
    """(the other arguments, ``export=`` format, ``export_dir=``): the export keys are this
    command's own, not run config keys. ConfigError on an unknown format."""
    overrides = parse_overrides(argv)
    given = {o.key_or_group: str(o.value()) for o in overrides if o.key_or_group in EXPORT_KEYS}
    rest = [arg for arg, o in zip(argv, overrides) if o.key_or_group not in EXPORT_KEYS]
    export, export_dir = given.get("export"), given.get("export_dir")
    if export is not None and export not in EXPORT_FORMATS:
        raise ConfigError(f"export={export}: choose one of {', '.join(EXPORT_FORMATS)}")
    if export_dir is not None and export is None:
        raise ConfigError("export_dir= goes with export=safetensors")
    return rest, export, export_dir


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
            argv, export, export_dir = split_export(argv)
            config, checkpoint = load_run(argv)
        except (ValueError, FileNotFoundError) as e:  # ConfigError (and a refused checkpoint) is a ValueError
            return report_error(e)
        if export is not None:
            try:
                out = export_safetensors(config, checkpoint, export_dir)
            except (ValueError, CheckpointWriteError) as e:
                return report_error(e)
            print(f"wrote {out}/: {EXPORT_WEIGHTS}, {EXPORT_CONFIG}, {EXPORT_INFO}, {MANIFEST} (from {checkpoint.path})")
            return 0
        try:
            env = init_distributed(config.device)
        except ValueError as e:  # ConfigError: no such device here
            return report_error(e)
        try:
            config.data.check_exists()  # a moved or missing dataset: one line naming the key (export needs none)
            result = evaluate_checkpoint(config, checkpoint, env)
        except (ValueError, FileNotFoundError) as e:
            return report_error(e)
        finally:
            cleanup_distributed(env)
    for line in result.summary:  # the final table, rank 0's
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
