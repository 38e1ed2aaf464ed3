"""Train a model on an ARC dataset.

    python pretrain.py arch=trm data=arc1                        # one process (CPU or one GPU)
    torchrun --nproc-per-node 4 pretrain.py arch=trm data=arc1   # DDP: nccl on GPUs, gloo on CPU
    python pretrain.py -m optimizer.lr=1e-4,3e-4                 # a Hydra sweep, one folder per job

The Hydra entry point of ``training.loop.train`` (the loop and its parts live in training/):
it composes the config, starts the process group, names the run (under -m each job gets a
folder of its own) and turns how a run ended into the exit status: 0; 75 after a preemption
(checkpoint written: run me again); 3 when a fault stopped training (full disk, persistent
NaNs; the error line names the checkpoint to resume from); 2 for a config or data problem.
Configuration: conf/ (docs/training.md lists every key).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from runconfig.compose import check_command_line, load_config, wants_help
from runconfig.groups import register_configs
from runconfig.help import config_help
from runconfig.seed_grammar import announce_mapping, translate_trm_names
from training.loop import shared_run_name, train
from training.preemption import exit_preempted, stop_signals
from training.state import checkpoint_root
from training.step import NonFiniteLossError
from utils import checkpoint as ckpt
from utils.distributed import cleanup_distributed, init_distributed
from utils.errors import ConfigError, exit_with_error

register_configs()
log = logging.getLogger("pretrain")
# A run stopped by a fault it cannot train through (a full disk, persistent NaNs): one
# ``error:`` line naming the checkpoint to resume from; not requeued (75 is preemption's).
STOPPED_EXIT = 3


# Keys that name the run folder themselves: a job's folder name never repeats them.
FOLDER_KEYS = ("run_name", "checkpoint_path", "project_name")


def sweep_overrides_only(argv: list[str]) -> list[str]:
    """``argv``; under -m plus the Hydra override that leaves every key the command line does
    not sweep (and the folder keys) out of each job's ``override_dirname``, which then holds
    the job's swept values only (a sweeper's own parameters included)."""
    if not {"-m", "--multirun"} & set(argv) or any(
        a.startswith(("hydra.job.config", "-")) and a not in ("-m", "--multirun") for a in argv
    ):
        return argv
    overrides = OverridesParser.create().parse_overrides([a for a in argv if a not in ("-m", "--multirun")])
    fixed = {o.key_or_group for o in overrides if not o.is_sweep_override() and not o.is_hydra_override()}
    keys = ",".join(f"'{key}'" for key in sorted(fixed | set(FOLDER_KEYS)))
    return [*argv, f"hydra.job.config.override_dirname.exclude_keys=[{keys}]"]


def job_run_name(name: str) -> str:
    """Under -m each job trains in a folder of its own: the run name gains the job's swept
    values (``cpu_small-seed0-optimizer.lr=0.003``); a plain run, or a -m run without a sweep
    (one job, e.g. a SLURM submission), keeps its name, so a rerun finds the same folder."""
    hydra_config = HydraConfig.get()
    swept = hydra_config.job.override_dirname
    if hydra_config.mode != RunMode.MULTIRUN or not swept:
        return name
    return f"{name}-{swept.replace(os.sep, '_')}"  # a swept path's slashes would nest folders


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the best value of ``callbacks.monitor``: the objective of an Optuna sweep
    (``-m hydra/sweeper=optuna``; set ``hydra.sweeper.direction`` to match callbacks.mode)."""
    try:
        config = load_config(cfg)
        env = init_distributed(config.device)
    except ConfigError as e:
        exit_with_error(e)
    with stop_signals():  # SIGTERM / SIGUSR1 from here to the exit: a checkpoint, then status 75
        try:
            config.run_name = job_run_name(shared_run_name(config, env))
            if env.is_main:  # the resolved config goes to the run folder's config.yaml, not before an error line
                log.info("run folder %s", checkpoint_root(config))
            with logging_redirect_tqdm():  # log lines print above the progress bar, not into it
                summary = train(config, env)
            if env.is_main:
                log.info(
                    "final: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
                )
        except ConfigError as e:  # found before training started: nothing to lose
            exit_with_error(e)
        except (NonFiniteLossError, ckpt.CheckpointWriteError) as e:  # the message names the checkpoint to resume
            print(f"error: {e}", file=sys.stderr)
            sys.exit(STOPPED_EXIT)
        finally:
            cleanup_distributed(env)
    if summary.get("preempted"):
        exit_preempted(env, requeue=config.requeue_on_preempt)
    return summary["best_monitor"]


if __name__ == "__main__":
    if wants_help(sys.argv[1:]):  # the keys and options from the schemas, not Hydra's generic screen
        print(config_help(__doc__))
        sys.exit(0)
    typed, sys.argv[1:] = sys.argv[1:], translate_trm_names(sys.argv[1:])
    if sys.argv[1:] != typed:
        announce_mapping("TinyRecursiveModels", typed, "python pretrain.py", sys.argv[1:])
    try:
        check_command_line(sys.argv[1:])  # Hydra's own composition errors are a page of traceback
    except ConfigError as e:
        exit_with_error(e)
    sys.argv[1:] = sweep_overrides_only(sys.argv[1:])
    main()
