"""The run folder a cluster user reads: plain log lines without a TTY, train.log,
metrics.jsonl (train and test), curves.png and config.yaml; a resume keeps each step once."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from train_helpers import build_tiny_dataset, compose_config, tiny_overrides

import pretrain
from utils import checkpoint as ckpt
from utils.distributed import DistEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_holds_log_metrics_curves_and_config(tiny_data, tmp_path):
    run = tmp_path / "run"
    pretrain.train(compose_config(tiny_overrides(tiny_data, run, "epochs=4", "eval_interval=2", "log_interval=2")), CPU)
    logged = records(run)
    train = [r for r in logged if "train/lm_loss" in r]
    test = [r for r in logged if "all/lm_loss" in r]
    assert [r["step"] for r in train] == list(range(2, 2 * len(train) + 1, 2)) and len(train) >= 2
    assert len(test) == 2 and all("ARC/pass@2" in r for r in test) and all(r["train/examples_per_s"] > 0 for r in train)
    log_text = (run / "train.log").read_text()
    assert f"step {train[-1]['step']}/" in log_text and "| loss " in log_text and "examples/s" in log_text
    assert "pass@k per task as ARC Prize" in log_text
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["arch"]["name"] == "trm_tiny" and saved["global_batch_size"] == 8


def test_resume_keeps_each_logged_step_once(tiny_data, tmp_path):
    run = tmp_path / "run"
    common = tiny_overrides(tiny_data, run, "epochs=50", "evaluate=false", "log_interval=1", "resume=auto",
                            "checkpoint_interval_steps=2", "max_checkpoints=0")
    pretrain.train(compose_config(common + ["max_steps=5"]), CPU)
    for step, path in ckpt.list_checkpoints(str(run)):
        if step > 2:  # as if killed after logging step 5 but before any checkpoint past step 2
            ckpt.shutil.rmtree(path)
    pretrain.train(compose_config(common + ["max_steps=6"]), CPU)
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5, 6]


def test_loss_lines_reach_a_redirected_log(tiny_data, tmp_path):
    """Under nohup or SLURM stdout is a file: each log_interval still prints one plain line."""
    overrides = tiny_overrides(tiny_data, tmp_path / "ck", "epochs=2", "evaluate=false", "log_interval=1",
                               "progress_bar=false", f"hydra.run.dir={tmp_path / 'hydra'}")
    with open(tmp_path / "nohup.out", "w") as out:
        result = subprocess.run([sys.executable, "pretrain.py", *overrides], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, timeout=300,
                                env={**os.environ, "WANDB_MODE": "disabled"})
    text = (tmp_path / "nohup.out").read_text()
    assert result.returncode == 0, text[-2000:]
    assert "step 1/" in text and "step 2/" in text and "| lr " in text and "| loss " in text
