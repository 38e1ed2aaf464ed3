"""Trainer options: LR schedules, precision, callbacks (early stopping, best-k retention),
Optuna and SLURM launcher configs."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from train_helpers import CONF_DIR, build_tiny_dataset, compose_config, tiny_overrides

from runconfig.groups import register_configs
from training import loop
from training.schedule import lr_factor
from utils import checkpoint as ckpt
from utils.distributed import DistEnv

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


def test_cosine_restarts_schedule_by_hand():
    config = compose_config(
        [
            "lr_schedule=cosine_restarts",
            "restarts.T_0=2",
            "restarts.T_mult=2",
            "restarts.eta_min_ratio=0.1",
            "optimizer.lr=1e-3",
            "lr_warmup_steps=0",
            "epochs=14",
        ]
    )
    total = 140  # 10 steps per epoch; cycles of 2, 4, 8 epochs start at epochs 0, 2, 6
    floor = 0.1
    expected = {
        0: 1.0,
        10: floor + (1 - floor) * 0.5,
        20: 1.0,
        40: floor + (1 - floor) * 0.5,
        60: 1.0,
        100: floor + (1 - floor) * 0.5,
    }
    for step, value in expected.items():
        assert lr_factor(config, step, total) == pytest.approx(value), step
    assert lr_factor(config, 19, total) < 0.12  # the bottom of the first cycle


def test_warmup_then_cosine_is_trms_schedule():
    config = compose_config(["lr_warmup_steps=10", "lr_min_ratio=0.1"])
    assert lr_factor(config, 5, 110) == pytest.approx(0.5)
    assert lr_factor(config, 60, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(config, 110, 110) == pytest.approx(0.1)


def _fake_checkpoints(root, scores):
    for step, score in enumerate(scores, start=1):
        path = root / f"step_{step:08d}"
        path.mkdir(parents=True)
        (path / ckpt.SCORE_FILE).write_text(json.dumps({"score": score}))


def test_best_k_retention_keeps_exactly_k_plus_last(tmp_path):
    _fake_checkpoints(tmp_path, [0.9, 0.3, 0.5, 0.2, 0.8, 0.7])
    kept = ckpt.prune_checkpoints(str(tmp_path), keep=1, keep_best=2, mode="min")
    assert [p.rsplit("_", 1)[1] for p in kept] == ["00000002", "00000004", "00000006"]
    assert len(ckpt.list_checkpoints(str(tmp_path))) == 3


def test_best_k_retention_max_mode_and_last_among_best(tmp_path):
    _fake_checkpoints(tmp_path, [0.1, 0.9, 0.5, 0.95])
    kept = ckpt.prune_checkpoints(str(tmp_path), keep=1, keep_best=2, mode="max")
    assert [p.rsplit("_", 1)[1] for p in kept] == ["00000002", "00000004"]  # the newest is also a best


def test_early_stopping_triggers_on_a_flat_validation_loss(tiny_data, tmp_path):
    # lr 0: nothing learns, the validation loss is exactly flat -> stop after 1 + patience evals.
    summary = loop.train(
        compose_config(
            tiny_overrides(
                tiny_data,
                tmp_path / "ck",
                "epochs=30",
                "eval_interval=1",
                "optimizer.lr=0",
                "puzzle_emb_lr=0",
                "callbacks.early_stopping_patience=3",
                "callbacks.keep_best=1",
                "max_checkpoints=1",
            )
        ),
        CPU,
    )
    steps_per_epoch = 1  # 15 train examples, batch 8: one full batch per epoch
    assert summary["step"] == 4 * steps_per_epoch
    kept = ckpt.list_checkpoints(str(tmp_path / "ck"))
    assert [step for step, _ in kept] == [1, 4]  # the best (first, never beaten) and the last


def test_unknown_monitor_is_an_error_naming_it(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="callbacks.monitor='all/nope'"):
        loop.train(
            compose_config(
                tiny_overrides(
                    tiny_data,
                    tmp_path / "ck",
                    "epochs=1",
                    "eval_interval=1",
                    "callbacks.monitor=all/nope",
                    "callbacks.keep_best=1",
                )
            ),
            CPU,
        )


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32(tiny_data, tmp_path, precision):
    def run(name, *extra):
        loop.train(
            compose_config(
                tiny_overrides(
                    tiny_data,
                    tmp_path / name,
                    "epochs=20",
                    "evaluate=false",
                    "grad_clip_norm=1.0",
                    "optimizer.lr=3e-3",
                    *extra,
                )
            ),
            CPU,
        )
        return ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / name))[-1][1])

    full, mixed = run("fp32"), run(precision, f"precision={precision}")
    assert (mixed["scaler"] is not None) == (precision == "fp16")
    key = "inner.lm_head.weight"
    moved = (full["model"][key] - fp32_initial_weights(tiny_data)[key]).norm()
    gap = (mixed["model"][key] - full["model"][key]).norm()
    # autocast really ran (the weights differ from fp32's), and trained the same way: the
    # two runs end far closer to each other than to where they started.
    assert 0 < gap < 0.5 * moved, (float(gap), float(moved))


def fp32_initial_weights(data):
    from dataset.puzzle_dataset import PuzzleDataset
    from models import build_model
    from models.base import DataShape

    config = compose_config(tiny_overrides(data, "unused"))
    meta = PuzzleDataset([str(data)], "train", 8).metadata
    torch.manual_seed(config.seed)
    return build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8)).state_dict()


@pytest.mark.parametrize(
    "override,key",
    [
        ("precision=fp8", "precision"),
        ("lr_schedule=step", "lr_schedule"),
        ("callbacks.mode=up", "callbacks.mode"),
        ("grad_clip_norm=0", "grad_clip_norm"),
    ],
)
def test_bad_trainer_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        compose_config([override])


def test_optuna_sweep_runs_two_trials_and_reports_best(tiny_data, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    args = [
        a
        for a in tiny_overrides(tiny_data, tmp_path / "unused", "epochs=2", "eval_interval=1")
        if not a.startswith(("checkpoint_path", "optimizer.lr"))
    ]
    res = subprocess.run(
        [
            sys.executable,
            "pretrain.py",
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.seed=0",
            "optimizer.lr=interval(1e-4,1e-2)",
            *args,
            f"hydra.sweep.dir={sweep}",
            "checkpoint_path=${hydra:runtime.output_dir}/ck",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optimizer.lr" in results
    assert all(ckpt.list_checkpoints(str(sweep / job / "ck")) for job in ("0", "1"))


def test_submitit_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2"],
            return_hydra_config=True,
        )
    assert "SlurmLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.nodes == 2


def test_a_multirun_over_a_preset_that_names_its_run_gives_each_job_its_own_folder(tiny_data, tmp_path):
    """experiment=cpu_small names its run (cpu_small-seed0) and resumes it: every job of a sweep
    over it used to train in that one folder (job 0 "resumed" the earlier run and did nothing,
    job 1 was refused as a config change). Each job's run name gains its swept values."""
    preset = [
        "experiment=cpu_small",
        "compile=false",
        f"data.paths=[{tiny_data}]",
        "data.name=tiny",
        "global_batch_size=8",
        "max_steps=2",
        "evaluate=false",
        "progress_bar=false",
        "wandb.mode=disabled",
    ]

    def pretrain_py(*args):  # in tmp_path: checkpoints/ (and Hydra's folders) land there
        return subprocess.run(
            [sys.executable, str(ROOT / "pretrain.py"), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "WANDB_MODE": "disabled"},
            timeout=600,
        )

    runs = tmp_path / "checkpoints" / "arcforge"
    earlier = pretrain_py(*preset, "optimizer.lr=1e-3")
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    earlier_files = {p: p.stat().st_mtime_ns for p in (runs / "cpu_small-seed0").rglob("*")}

    sweep = pretrain_py("-m", *preset, "optimizer.lr=1e-3,3e-3")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    jobs = {"cpu_small-seed0-optimizer.lr=0.001": 1e-3, "cpu_small-seed0-optimizer.lr=0.003": 3e-3}  # as Hydra writes
    assert sorted(p.name for p in runs.iterdir()) == sorted(["cpu_small-seed0", *jobs])
    for name, lr in jobs.items():
        assert [step for step, _ in ckpt.list_checkpoints(str(runs / name))] == [2], name  # trained, not resumed
        assert OmegaConf.load(runs / name / "config.yaml").optimizer.lr == lr
    assert {p: p.stat().st_mtime_ns for p in (runs / "cpu_small-seed0").rglob("*")} == earlier_files


def test_lr_schedule_steps_sets_the_cosines_length_and_needs_the_cosine():
    config = compose_config(["data.paths=[unused]", "lr_warmup_steps=0", "lr_min_ratio=0", "lr_schedule_steps=100"])
    assert [round(lr_factor(config, s, 10**6), 6) for s in (50, 100, 150)] == [0.5, 0.0, 0.0]  # then flat
    with pytest.raises(ValueError, match=r"lr_schedule_steps=100 \(with lr_schedule=cosine only"):
        compose_config(["data.paths=[unused]", "lr_schedule=cosine_restarts", "lr_schedule_steps=100"])
