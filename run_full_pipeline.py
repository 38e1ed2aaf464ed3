"""The diffusion pipeline: backbone training -> size-head training -> evaluation.

    python run_full_pipeline.py diffusion_cpu                         # conf/experiment/diffusion_cpu.yaml
    python run_full_pipeline.py diffusion_cpu epochs=5 --eval-limit 20  # Hydra overrides after CONFIG
    python run_full_pipeline.py my_config.json --skip-training        # an old-pipeline JSON config
    python run_full_pipeline.py diffusion_cpu --size-head-override epochs=3   # a key for the size-head stage only

CONFIG and the flags become the pipeline's typed config (pipelines/diffusion.py, whose
docstring lists the steps; the JSON keys are in docs/diffusion.md). Each flag is one of the
pipeline's keys (``DiffusionOptions``, which holds its default and description): ``--eval-limit N``
is ``pipeline.eval_limit``; ``--size-head-override`` appends to ``pipeline.size_head_overrides``. The output directory:
``--output-dir``, else the JSON's ``output.output_dir``, else ``checkpoint_path``, else
``checkpoints/<project_name>/<run_name>`` (``run_name`` defaulting to the experiment's name).
Exit status: 0, 1 when a step failed, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from pipelines.diffusion import DiffusionOptions, configure, error_line, run
from pipelines.diffusion_legacy import make_plan
from utils.errors import report_error
from utils.logging import console_logging
from utils.schema import key_doc


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="a Hydra experiment name (conf/experiment/NAME.yaml) or a JSON config file")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides (key=value) for every step; python -m pipelines.diffusion --help lists the keys",
    )
    add_option_flags(parser)
    return parser.parse_intermixed_args(argv)


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per pipeline key: type, default and description from DiffusionOptions. A flag left
    out is absent from the parsed arguments (CONFIG's value, else the default, stands)."""
    hints = typing.get_type_hints(DiffusionOptions)
    for option in dataclasses.fields(DiffusionOptions):
        kind = hints[option.name]
        if type(None) in typing.get_args(kind):
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        default = option.default_factory() if option.default is dataclasses.MISSING else option.default
        about = key_doc(option) + (f" (default {default})" if default not in (None, False, []) else "")
        flag = "--" + option.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=about)
        elif typing.get_origin(kind) is list:  # one value a flag, repeatable: --size-head-override KEY=VALUE
            flag = flag.removesuffix("s")
            parser.add_argument(
                flag,
                dest=option.name,
                action="append",
                default=argparse.SUPPRESS,
                metavar="KEY=VALUE",
                help=f"{about} (repeatable)",
            )
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=about)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(DiffusionOptions) if hasattr(args, f.name)}
    with console_logging():
        try:
            plan = make_plan(args.config, args.overrides)
            size_head_overrides = [*plan.options.size_head_overrides, *flags.pop("size_head_overrides", [])]
            options = dataclasses.replace(plan.options, **flags, size_head_overrides=size_head_overrides)
            config = configure(plan.overrides, options, plan.source, name=os.path.splitext(os.path.basename(args.config))[0])
        except Exception as e:  # noqa: BLE001 - config errors (Hydra's, ours, a missing dataset) end the run here
            return report_error(error_line(e))
        return 1 if run(config) else 0


if __name__ == "__main__":
    sys.exit(main())
