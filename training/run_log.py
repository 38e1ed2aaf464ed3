"""What a run reports, readable under nohup or SLURM as well as in a terminal: one plain
log line per ``log_interval`` steps, every logged dict in ``<run>/metrics.jsonl``, learning
curves in ``<run>/curves.png`` at each evaluation, TensorBoard events (``tensorboard=true``)
and wandb (offline unless asked; a resumed run continues its wandb run). Rank 0 writes;
other ranks only count."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from training.state import TrainState
from utils.checkpoint import METRICS_FILE, write_failure
from utils.config.schema import TrainConfig
from utils.distributed import DistEnv
from utils.io import read_jsonl, write_text_atomic
from utils.logging import init_wandb

log = logging.getLogger(__name__)

CURVES_FILE = "curves.png"
# (panel title, metric keys drawn in it)
CURVES = (
    ("loss", ("train/lm_loss", "all/lm_loss")),
    ("accuracy", ("train/accuracy", "train/exact_accuracy", "all/accuracy", "all/exact_accuracy")),
    ("pass@k (test split, voted, per task)", ("ARC/pass@1", "ARC/pass@2", "ARC/pass@10")),
)


def _halted_figure(metrics: dict[str, float], key: str) -> str:
    """A figure measured on the examples that halted since the last line; '-' when none did."""
    return f"{metrics[key]:.4f}" if key in metrics else "-"


TENSORBOARD_DIR = "tensorboard"  # in the run folder: `tensorboard --logdir <run folder>/tensorboard`


def tensorboard_writer(folder: str, step: int) -> Any:
    """A SummaryWriter into ``folder`` that drops the events past ``step`` (a resumed run
    trains those steps again). The package is optional: TrainConfig.validate checks it is there."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(folder, purge_step=step + 1 if step else None)


class RunLog:
    """A context for the training loop: on entry (rank 0) the run folder gets the resolved
    ``config.yaml`` and a ``train.log`` that every log line of the run goes to, wandb starts
    (or continues the run whose id the state carries); on exit both close."""

    def __init__(self, root: str, config: TrainConfig, env: DistEnv, state: TrainState):
        self.root, self.config, self.env, self.state = root, config, env, state
        self.records: list[dict[str, Any]] = []
        self.wandb = None
        self.tensorboard: Any = None  # a torch SummaryWriter when config.tensorboard
        self.handler: logging.Handler | None = None
        self._clock = (time.perf_counter(), state.step)

    def __enter__(self) -> RunLog:
        for name in ("pretrain", "training"):  # INFO lines reach train.log even where logging is unconfigured
            logging.getLogger(name).setLevel(logging.INFO)
        if not self.env.is_main:
            return self
        write_text_atomic(os.path.join(self.root, "config.yaml"), OmegaConf.to_yaml(self.config))
        self.handler = logging.FileHandler(os.path.join(self.root, "train.log"))
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self.handler)
        self.records = self._read_records(self.state.step)
        self.wandb = self._init_wandb(sum(p.numel() for p in self.state.model.parameters()))
        if self.config.tensorboard:
            self.tensorboard = tensorboard_writer(os.path.join(self.root, TENSORBOARD_DIR), self.state.step)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()

    def _read_records(self, step: int) -> list[dict[str, Any]]:
        """Earlier records of this run; those past ``step`` (trained after the checkpoint a
        resume starts from) are dropped, since the run trains those steps again."""
        path = os.path.join(self.root, METRICS_FILE)
        if not os.path.isfile(path):
            return []
        records = [r for r in read_jsonl(path) if r["step"] <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(path + ".tmp", path)
        return records

    def _init_wandb(self, num_params: int):
        run = init_wandb(
            self.config,
            self.config.run_name,
            self.root,
            dataclasses.asdict(self.config),
            run_id=self.state.wandb_id,
            resumable=True,
        )
        if run is not None:
            self.state.wandb_id = run.id  # saved with the checkpoints: a resume continues this wandb run
            run.log({"num_params": num_params}, step=0)
        return run

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **metrics}
        self.records.append(record)
        try:
            with open(os.path.join(self.root, METRICS_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: the run stops with one line (exit 3), as for a checkpoint
            raise write_failure(
                self.root,
                f"{METRICS_FILE} (the record of step {step})",
                e,
                self.env,
                left="A torn last line is dropped when the run resumes",
            ) from e
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)

    def train(self, step: int, total: int, metrics: dict[str, float]) -> None:
        """One line: step, lr, and since the last line the mean loss, the accuracy over the
        examples that halted ('-' when none did) and examples/s."""
        started, since = self._clock
        now = time.perf_counter()
        per_s = (step - since) * self.config.global_batch_size / max(now - started, 1e-9)
        self._clock = (now, step)
        if not self.env.is_main:
            return
        metrics = {**metrics, "train/examples_per_s": per_s}
        self._write(step, metrics)
        log.info(
            "step %d/%d | lr %.3g | loss %.4f | accuracy %s | exact %s | %.1f examples/s",
            step,
            total,
            metrics["train/lr"],
            metrics.get("train/lm_loss", float("nan")),
            _halted_figure(metrics, "train/accuracy"),
            _halted_figure(metrics, "train/exact_accuracy"),
            per_s,
        )

    def evaluation(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.env.is_main:
            return
        self._write(step, metrics)
        log.info(
            "epoch %d step %d [test split, per augmented example, no voting]: %s",
            epoch,
            step,
            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("all/")),
        )
        if "ARC/pass@1" in metrics:
            log.info(
                "  [test split, %d augmented views voted per input; pass@k per task as ARC Prize, over %d tasks]: %s",
                metrics["ARC/views_per_input"],
                metrics["ARC/tasks_scored"],
                ", ".join(f"pass@{k} {metrics[f'ARC/pass@{k}']:.4f}" for k in (1, 2, 10) if f"ARC/pass@{k}" in metrics),
            )
        self.draw_curves()
        self._clock = (time.perf_counter(), step)  # evaluation time is not training throughput

    def draw_curves(self) -> None:
        """``curves.png``: each panel's metrics against step, from every record of the run."""
        fig = Figure(figsize=(5 * len(CURVES), 3.6), dpi=100)
        FigureCanvasAgg(fig)
        for i, (title, keys) in enumerate(CURVES):
            ax = fig.add_subplot(1, len(CURVES), i + 1)
            for key in keys:
                points = [(r["step"], r[key]) for r in self.records if key in r]
                if points:
                    ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=key)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            if ax.lines:
                ax.legend(fontsize=7)
        fig.suptitle(f"{self.config.run_name}: {self.config.arch.name} on {self.config.data.name}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(self.root, CURVES_FILE)
        fig.savefig(path + ".tmp.png")
        os.replace(path + ".tmp.png", path)
