"""Composing run configs and tiny datasets for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import write_folder_source

from dataset.build_arc_dataset import main as build_main
from utils.config import CONF_DIR, compose_config  # noqa: F401  (re-exported for the tests)


def flip_tasks(root: Path, n_train: int = 3, n_eval: int = 1, side: int = 3, seed: int = 0, prefix: str = "",
               memorisable: bool = False) -> Path:
    """Tasks of one rule (mirror left-right) on small random grids. ``memorisable``: each
    task's test pair repeats its first demonstration pair, so memorising the training split
    solves the test split."""
    rng = np.random.default_rng(seed)

    def task():
        pairs = []
        for _ in range(4):
            g = rng.integers(0, 10, size=(side, side))
            pairs.append({"input": g.tolist(), "output": g[:, ::-1].tolist()})
        return {"train": pairs[:3], "test": pairs[:1] if memorisable else pairs[3:]}

    return write_folder_source(root, {"training": {f"{prefix}tr{i}": task() for i in range(n_train)},
                                      "evaluation": {f"{prefix}ev{i}": task() for i in range(n_eval)}})


def build_tiny_dataset(tmp: Path, num_aug: int = 0, canvas: int = 4, **task_kwargs) -> Path:
    src = flip_tasks(tmp / "src", **task_kwargs)
    out = tmp / f"ds-aug{num_aug}-{task_kwargs.get('prefix', '')}"
    code = build_main(["--input-file-prefix", str(src), "--output-dir", str(out), "--subsets", "training", "evaluation",
                       "--test-set-name", "evaluation", "--num-aug", str(num_aug), "--max-grid-size", str(canvas)])
    assert code == 0
    return out


def tiny_overrides(data: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["arch=trm_tiny", f"data.paths=[{data}]", "data.name=tiny", "global_batch_size=8", "lr_warmup_steps=5",
            "optimizer.lr=1e-3", f"checkpoint_path={checkpoint}", "progress_bar=false", "log_interval=1",
            "wandb.mode=disabled", *extra]


def read_json(path: Path):
    return json.loads(Path(path).read_text())
