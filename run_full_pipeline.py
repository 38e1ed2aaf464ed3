"""The diffusion pipeline: backbone training -> size-head training -> evaluation.

    python run_full_pipeline.py diffusion_cpu                         # conf/experiment/diffusion_cpu.yaml
    python run_full_pipeline.py diffusion_cpu epochs=5 --eval-limit 20  # Hydra overrides after CONFIG
    python run_full_pipeline.py my_config.json --skip-training        # an old-pipeline JSON config
    python run_full_pipeline.py diffusion_cpu --size-head-override epochs=3   # a key for the size-head stage only

CONFIG and the flags become the pipeline's typed config (pipelines/diffusion.py, whose
docstring lists the steps; the JSON keys are in docs/diffusion.md). The output directory:
``--output-dir``, else the JSON's ``output.output_dir``, else ``checkpoint_path``, else
``checkpoints/<project_name>/<run_name>`` (``run_name`` defaulting to the experiment's name).
Exit status: 0, 1 when a step failed, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipelines.diffusion import BEST_MODEL, BEST_SIZE_HEAD, DiffusionOptions, configure, error_line, run
from pipelines.diffusion_legacy import make_plan
from utils.errors import report_error
from utils.logging import console_logging


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
    parser.add_argument("--skip-training", action="store_true", help=f"use the existing {BEST_MODEL}")
    parser.add_argument("--skip-size-head", action="store_true", help=f"use the existing {BEST_SIZE_HEAD}")
    parser.add_argument("--skip-evaluation", action="store_true")
    parser.add_argument("--eval-limit", type=int, default=5, help="evaluate the first N test tasks (default 5)")
    parser.add_argument("--output-dir", help="default: the JSON's output.output_dir, else the run's checkpoint folder")
    parser.add_argument(
        "--size-head-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for the size-head run only (repeatable)",
    )
    args = parser.parse_intermixed_args(argv)
    if args.eval_limit < 1:
        parser.error(f"--eval-limit must be >= 1, got {args.eval_limit}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with console_logging():
        try:
            plan = make_plan(args.config, args.overrides, args.size_head_override)
            options = DiffusionOptions(
                output_dir=args.output_dir or plan.output_dir,
                eval_limit=args.eval_limit,
                skip_training=args.skip_training,
                skip_size_head=args.skip_size_head,
                skip_evaluation=args.skip_evaluation,
                size_head_overrides=plan.size_head_overrides,
                expect_canvas=plan.expect_canvas,
            )
            config = configure(plan.overrides, options, plan.source, name=os.path.splitext(os.path.basename(args.config))[0])
        except Exception as e:  # noqa: BLE001 - config errors (Hydra's, ours, a missing dataset) end the run here
            return report_error(error_line(e))
        return 1 if run(config) else 0


if __name__ == "__main__":
    sys.exit(main())
