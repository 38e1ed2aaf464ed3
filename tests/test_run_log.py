"""The run folder a cluster user reads: plain log lines without a TTY, train.log,
metrics.jsonl (train and test), curves.png and config.yaml; a resume keeps each step once."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from train_helpers import build_tiny_dataset, compose_config, error_lines, run_script, tiny_overrides

from training import loop
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
    loop.train(compose_config(tiny_overrides(tiny_data, run, "epochs=4", "eval_interval=2", "log_interval=2")), CPU)
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
    common = tiny_overrides(
        tiny_data,
        run,
        "epochs=50",
        "evaluate=false",
        "log_interval=1",
        "resume=auto",
        "checkpoint_interval_steps=2",
        "max_checkpoints=0",
    )
    loop.train(compose_config(common + ["max_steps=5"]), CPU)
    for step, path in ckpt.list_checkpoints(str(run)):
        if step > 2:  # as if killed after logging step 5 but before any checkpoint past step 2
            shutil.rmtree(path)
    loop.train(compose_config(common + ["max_steps=6"]), CPU)
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5, 6]


def test_loss_lines_reach_a_redirected_log(tiny_data, tmp_path):
    """Under nohup or SLURM stdout is a file: each log_interval still prints one plain line."""
    overrides = tiny_overrides(
        tiny_data,
        tmp_path / "ck",
        "epochs=2",
        "evaluate=false",
        "log_interval=1",
        "progress_bar=false",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )
    with open(tmp_path / "nohup.out", "w") as out:
        result = subprocess.run(
            [sys.executable, "pretrain.py", *overrides],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
            env={**os.environ, "WANDB_MODE": "disabled"},
        )
    text = (tmp_path / "nohup.out").read_text()
    assert result.returncode == 0, text[-2000:]
    assert "step 1/" in text and "step 2/" in text and "| lr " in text and "| loss " in text


# --- a log line's figures cover its window; accuracy only where examples halted -----------


def test_training_figures_are_window_means_and_absent_where_none_halted():
    from training.step import add_metrics, reduce_metrics

    cpu = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def step(loss, count, correct, lr):
        return {
            "lm_loss": torch.tensor(loss),
            "count": torch.tensor(count),
            "accuracy": torch.tensor(correct),
            "exact_accuracy": torch.tensor(correct / 2),
            "lr": torch.tensor(lr),
        }

    window = add_metrics(None, step(8.0, 0.0, 0.0, 1e-3))
    none_halted = reduce_metrics(window, cpu, global_batch_size=4, steps=1)
    assert none_halted["train/count"] == 0 and none_halted["train/lm_loss"] == 2.0
    assert "train/accuracy" not in none_halted and "train/exact_accuracy" not in none_halted  # nothing measured

    window = add_metrics(window, step(4.0, 3.0, 2.4, 2e-3))  # 3 halted at the second step, 2.4 cells right in all
    figures = reduce_metrics(window, cpu, global_batch_size=4, steps=2)
    assert figures["train/lm_loss"] == pytest.approx(12.0 / 8)  # per example over both steps' batches
    assert figures["train/count"] == 3
    assert figures["train/accuracy"] == pytest.approx(0.8) and figures["train/exact_accuracy"] == pytest.approx(0.4)
    assert figures["train/lr"] == pytest.approx(2e-3)  # the last step's, not a sum


def test_a_log_line_without_halted_examples_shows_no_accuracy(tiny_data, tmp_path, caplog):
    # halt_max_steps 4 and no exploration: nothing halts before step 4, so the step-2 line measured nothing.
    overrides = tiny_overrides(
        tiny_data,
        tmp_path / "ck",
        "epochs=1000",
        "evaluate=false",
        "max_steps=4",
        "log_interval=2",
        "arch.halt_max_steps=4",
        "arch.halt_exploration_prob=0",
    )
    with caplog.at_level("INFO", logger="training.run_log"):
        loop.train(compose_config(overrides), DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    rows = [r for r in records(tmp_path / "ck") if "train/lm_loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert "train/accuracy" not in rows[0] and rows[0]["train/count"] == 0
    assert rows[1]["train/count"] == 8 and 0 <= rows[1]["train/accuracy"] <= 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 2/")]
    assert lines and "accuracy - | exact -" in lines[0]


def test_a_torn_last_metrics_line_is_dropped_and_a_bad_middle_line_is_an_error(tmp_path):
    from utils.io import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/lm_loss": 2.0}\n{"step": 2, "train/lm_lo')  # what a full disk leaves
    assert read_jsonl(str(path)) == [{"step": 1, "train/lm_loss": 2.0}]
    path.write_text('{"step": 1}\n{"step": 2, "tr\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(str(path))
    assert read_jsonl(str(tmp_path / "absent.jsonl")) == []


def test_a_metrics_line_torn_by_a_file_size_limit_is_dropped_and_the_resume_continues(tiny_data, tmp_path, caplog):
    """The torn line made the real way: a resumed run under ``ulimit -f`` a little past the
    size of metrics.jsonl dies appending its next record; the run after it resumes and keeps
    each step once (a strict reader made every later resume crash with JSONDecodeError)."""
    run = tmp_path / "run"
    common = tiny_overrides(
        tiny_data,
        run,
        "epochs=50",
        "evaluate=false",
        "log_interval=1",
        "resume=auto",
        "checkpoint_interval_steps=5",
        "max_checkpoints=0",
    )
    loop.train(compose_config(common + ["max_steps=10"]), CPU)
    metrics = run / "metrics.jsonl"
    whole = metrics.stat().st_size
    limited = run_script(
        "pretrain.py",
        [*common, "max_steps=12", f"hydra.run.dir={tmp_path / 'hydra'}", "hydra.output_subdir=null"],
        file_size_limit=whole + 40,
    )
    # The run that meets the limit stops as on a full checkpoint write: one line, exit 3.
    assert limited.returncode == 3 and "Traceback" not in limited.stderr, limited.stderr[-3000:]
    (line,) = error_lines(limited)
    assert "metrics.jsonl (the record of step 11)" in line and "File too large" in line, line
    assert "the newest intact checkpoint is" in line and "step_00000010" in line, line
    torn = metrics.read_text()
    assert len(torn) == whole + 40 and not torn.endswith("\n"), torn[-300:]  # step 11's record, cut short
    with caplog.at_level("WARNING"):
        summary = loop.train(compose_config(common + ["max_steps=12"]), CPU)
    assert summary["step"] == 12 and "dropped a torn last line" in caplog.text
    assert [r["step"] for r in records(run)] == list(range(1, 13))


def tensorboard_scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_holds_what_metrics_jsonl_holds_and_a_resume_keeps_each_step_once(tiny_data, tmp_path):
    run = tmp_path / "run"
    common = ["epochs=100", "eval_interval=3", "log_interval=1", "tensorboard=true", "checkpoint_interval_steps=2"]
    loop.train(compose_config(tiny_overrides(tiny_data, run, *common, "max_steps=3")), CPU)
    shutil.rmtree(run / "step_00000003")  # killed after step 3's events: the resume starts at step 2 again
    loop.train(compose_config(tiny_overrides(tiny_data, run, *common, "max_steps=5", "resume=auto")), CPU)
    for tag in ("train/lm_loss", "all/lm_loss"):
        logged = [(r["step"], r[tag]) for r in records(run) if tag in r]
        scalars = tensorboard_scalars(run / "tensorboard", tag)
        assert [s for s, _ in scalars] == [s for s, _ in logged] and len(set(s for s, _ in scalars)) == len(scalars)
        assert [v for _, v in scalars] == pytest.approx([v for _, v in logged], rel=1e-6)
    assert [s for s, _ in tensorboard_scalars(run / "tensorboard", "train/lm_loss")] == [1, 2, 3, 4, 5]


def test_tensorboard_without_the_package_is_one_line(monkeypatch):
    import importlib.util

    from utils.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(
        ConfigError, match=r"tensorboard=true needs the tensorboard package: pip install 'arcforge\[tensorboard\]'"
    ):
        compose_config(["data.paths=[unused]", "tensorboard=true"])
