"""The diffusion pipeline: backbone training -> size-head training -> evaluation.

    python run_full_pipeline.py diffusion_cpu                         # conf/experiment/diffusion_cpu.yaml
    python run_full_pipeline.py diffusion_cpu epochs=5 --eval-limit 20  # Hydra overrides after CONFIG
    python run_full_pipeline.py my_config.json --skip-training        # an old-pipeline JSON config
    python run_full_pipeline.py --config my_config.json --eval-limit 0  # the same, all test tasks
    python run_full_pipeline.py diffusion_cpu --size-head-override epochs=3   # a key for the size-head stage only

CONFIG and the flags become the pipeline's typed config (pipelines/diffusion.py, whose
docstring lists the steps; the JSON keys are in docs/diffusion.md). Each flag is one of the
pipeline's keys (``DiffusionOptions``, which holds its default and description): ``--eval-limit N``
is ``pipeline.eval_limit`` (0: every test task); ``--size-head-override`` appends to
``pipeline.size_head_overrides``. A JSON config runs the original's experiment
(``experiment=diffusion_original``, its keys over it; from raw tasks when it names no built
dataset) and prints once the ``python -m pipelines.diffusion`` command it maps to. A flag this
command does not have is refused by name. The output directory:
``--output-dir``, else the JSON's ``output.output_dir``, else ``checkpoint_path``, else
``checkpoints/<project_name>/<run_name>`` (``run_name`` defaulting to the experiment's name).
Exit status: 0, 1 when a step failed, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from pipelines.diffusion import DiffusionOptions, DiffusionPipelineConfig, configure, error_line, run
from pipelines.diffusion_legacy import Plan, make_plan
from runconfig.seed_grammar import announce_mapping
from utils.errors import report_error
from utils.logging import console_logging
from utils.schema import key_doc


class Parser(argparse.ArgumentParser):
    """Refuses with one ``error:`` line (exit 2) rather than usage and a message."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message}\n")


# Pipeline keys set by the JSON config or the preset only, not by a flag.
FLAGLESS = {"tasks", "task_subsets", "test_subset", "task_num_aug", "tasks_cache"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "args",
        nargs="*",
        metavar="CONFIG [OVERRIDES]",
        help="a Hydra experiment name (conf/experiment/NAME.yaml) or a JSON config file, then Hydra overrides "
        "(key=value) for every step; python -m pipelines.diffusion --help lists the keys",
    )
    parser.add_argument("--config", help="CONFIG as a flag (the original's other spelling)")
    add_option_flags(parser)
    args, unknown = parser.parse_known_intermixed_args(argv)
    flags = [a.split("=")[0] for a in unknown if a.startswith("-")]
    if flags or unknown:
        known = ", ".join(sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--")))
        what = flags[0] if flags else unknown[0]
        parser.error(f"run_full_pipeline.py: {what} is not a flag of its command line (its flags: {known})")
    positional = list(args.args)
    if args.config is None:
        if not positional:
            parser.error("run_full_pipeline.py: name the CONFIG (a JSON file or an experiment), or --config FILE")
        args.config = positional.pop(0)
    elif positional and "=" not in positional[0]:
        parser.error(f"run_full_pipeline.py: two configs, --config {args.config} and {positional[0]}: keep one")
    args.overrides = positional
    return args


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per pipeline key: type, default and description from DiffusionOptions. A flag left
    out is absent from the parsed arguments (CONFIG's value, else the default, stands)."""
    hints = typing.get_type_hints(DiffusionOptions)
    for option in dataclasses.fields(DiffusionOptions):
        if option.name in FLAGLESS:
            continue
        kind = hints[option.name]
        if type(None) in typing.get_args(kind):
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        factory = option.default_factory
        default = factory() if callable(factory) else option.default
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
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(DiffusionOptions) if hasattr(args, f.name)}
    with console_logging():
        try:
            plan = make_plan(args.config, args.overrides)
            settings = {**plan.settings, **flags}
            settings["size_head_overrides"] = [
                *plan.settings.get("size_head_overrides", []),
                *flags.get("size_head_overrides", []),
            ]
            name = os.path.splitext(os.path.basename(args.config))[0]
            config = configure(plan.overrides, settings, plan.source, name=name)
        except Exception as e:  # noqa: BLE001 - config errors (Hydra's, ours, a missing dataset) end the run here
            return report_error(error_line(e))
        if args.config.endswith(".json"):
            announce_mapping(
                "run_full_pipeline.py", argv, "python -m pipelines.diffusion", mapped_command(plan, settings, config)
            )
        return 1 if run(config) else 0


def mapped_command(plan: Plan, settings: dict[str, typing.Any], config: DiffusionPipelineConfig) -> list[str]:
    """``python -m pipelines.diffusion``'s arguments for what the JSON and the flags set."""

    def hydra(value: typing.Any) -> str:
        if value is None or isinstance(value, bool):
            return json.dumps(value)
        if isinstance(value, list):
            return "[" + ",".join(hydra(v) for v in value) + "]"
        return json.dumps(value) if isinstance(value, str) else str(value)

    keys = [k for k in settings if k != "size_head_overrides"]
    options = [f"pipeline.{k}={hydra(getattr(config.options, k))}" for k in keys]
    if settings.get("size_head_overrides"):
        options.append(f"pipeline.size_head_overrides={hydra(config.options.size_head_overrides)}")
    return [*plan.overrides, *options]


if __name__ == "__main__":
    sys.exit(main())
