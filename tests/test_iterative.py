"""run_iterative_training.py: sampling weights, a 2-episode tiny run, resume."""

import json
import os

import numpy as np
import pytest
import torch
from train_helpers import compose_config, flip_tasks

from pipelines import iterative as it
from utils.distributed import DistEnv

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny-model training: see conftest.py


def compose_iterative(overrides: list[str]) -> it.IterativeRunConfig:
    """What run_iterative_training.py runs (its command line composes the same way)."""
    return compose_config(overrides, "iterative")


def test_sampling_weights_by_hand():
    ids = ["a", "b", "c", "new"]
    acc = {"a": 1.0, "b": 0.5, "c": 0.0}
    loss = {"a": 0.5, "b": 1.0, "c": 2.5}
    np.testing.assert_allclose(it.sampling_weights("uniform", ids, acc, loss), [0.25] * 4)
    w = it.sampling_weights("accuracy_weighted", ids, acc, loss)
    raw = np.array([0.0, 0.5, 1.0, 0.5]) + 1e-3  # 1 - accuracy; the new task gets the mean
    np.testing.assert_allclose(w, raw / raw.sum())
    assert w[2] > w[1] > w[0] > 0  # the unsolved task is sampled most, the solved one still can be
    w = it.sampling_weights("loss_weighted", ids, acc, loss)
    raw = np.array([0.5, 1.0, 2.5, 4.0 / 3]) + 1e-3
    np.testing.assert_allclose(w, raw / raw.sum())
    with pytest.raises(ValueError, match="sampling_strategy"):
        it.sampling_weights("mean", ids, acc, loss)


def test_bad_loop_values_name_the_key():
    with pytest.raises(ValueError, match="iterative.sampling_strategy"):
        compose_iterative(["iterative.sampling_strategy=scalar_mean"])
    with pytest.raises(ValueError, match="iterative.val_frac"):
        compose_iterative(["iterative.val_frac=1.5"])


def test_pass2_per_task_counts_inputs():
    tasks = {"t": {"train": [], "test": [{"input": [[1]], "output": [[2]]}, {"input": [[3]], "output": [[4]]}]}}
    sub = {"t": [{"attempt_1": [[0]], "attempt_2": [[2]]}, {"attempt_1": [[5]], "attempt_2": [[5]]}]}
    assert it.pass2_per_task(sub, tasks) == {"t": 0.5}


def test_two_episodes_write_every_artifact_and_resume(tmp_path, caplog, monkeypatch):
    """Under wandb's default mode (offline): the trainer's run of each episode beside the
    pipeline's own run (a trainer that finished the pipeline's run crashed episode 0)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    src = flip_tasks(tmp_path / "src", n_train=4, n_eval=1, side=2)
    out = tmp_path / "out"
    overrides = [
        f"iterative.source={src}",
        f"iterative.eval_source={src}",
        "iterative.n_episodes=2",
        "iterative.n_batch=2",
        "iterative.val_frac=0.25",
        "iterative.num_aug=1",
        "iterative.max_grid_size=3",
        "iterative.sampling_strategy=accuracy_weighted",
        f"iterative.output_dir={out}",
        "global_batch_size=8",
        "epochs=4",
        "progress_bar=false",
        "wandb.mode=offline",
        "log_interval=1",
    ]
    summary = it.run(compose_iterative(overrides), CPU)
    for n in (0, 1):
        for name in (
            f"dataset_episode_{n}.json",
            f"metrics_episode_{n}.json",
            f"model_episode_{n}",
            f"data_gen_episode_{n}",
        ):
            assert (out / name).exists(), name
    samples = json.loads((out / "new_samples_episode_0.json").read_text())
    assert len(samples["tasks"]) + len(samples["failures"]) >= 2 and samples["tasks"]
    grown = json.loads((out / "dataset_episode_1.json").read_text())["train"]
    assert set(samples["tasks"]) <= set(grown) and len(grown) == 3 + len(samples["tasks"])
    metrics = json.loads((out / "metrics_episode_0.json").read_text())
    assert {"eval/mean_accuracy", "evalset/mean_accuracy", "train/mean_accuracy"} <= set(metrics["metrics"])
    best = out / "best_model"
    assert best.exists() and os.path.realpath(best).endswith(f"model_episode_{summary['best_episode']}")

    # Resume: both episodes are done, nothing retrains; the outcome is replayed.
    mtime = (out / "metrics_episode_1.json").stat().st_mtime_ns
    caplog.set_level("INFO")
    again = it.run(compose_iterative(overrides), CPU)
    assert (out / "metrics_episode_1.json").stat().st_mtime_ns == mtime
    assert "episode 1: done before, skipped" in caplog.text
    assert again["best_episode"] == summary["best_episode"]
